"""The content-addressed store's contract, on real files (LocalStore) and in a real S3 bucket
(S3Store on radosgw): roundtrip, dedupe, corruption, verify, gc, leases; then what is the local
store's own (its files, crash safety)."""

import array
import asyncio
import hashlib
import io
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import obstore
import pytest
from modelport.store.cas import LocalStore
from modelport.store.contract import ContentStore
from modelport.store.objects import CorruptObject, ObjectMissing, PutResult
from modelport.store.s3 import S3Store

from tests.conftest import bucket_client

SMALL = b"def predict(args):\n    return {'ok': True}\n" * 10
# Over 1 MiB, objects stream: a first MiB that does not compress is stored as raw zstd blocks,
# one that does goes through multi-threaded zstd.
RAW = random.Random(7).randbytes(3 << 20) + b"weights " * (1 << 18)
ZST = b"weights " * (1 << 18) + random.Random(8).randbytes(3 << 20)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def tamper(path: Path, fn) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    path.write_bytes(fn(data))


def flip(data: bytearray) -> bytearray:
    data[len(data) // 2 + 8] ^= 0x10  # past the 16-byte header, inside the zstd frame
    return data


def truncate(data: bytearray) -> bytearray:
    return data[: len(data) // 2]


def cut_header(data: bytearray) -> bytearray:
    return data[:10]


def wrong_size(data: bytearray) -> bytearray:  # the header's uncompressed size, plus one
    data[8:16] = (int.from_bytes(data[8:16], "little") + 1).to_bytes(8, "little")
    return data


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


@pytest.fixture
def local(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ContentStore:
    """Each backend in turn; an S3 store gets its own prefix of the session's bucket."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3")
    return S3Store(s3.url(s3.prefix()), tmp_path / "store")


def where(store: ContentStore, digest: str) -> str:
    """How errors and verify name the object."""
    if isinstance(store, S3Store):
        return store.url_of(digest[7:])
    assert isinstance(store, LocalStore)
    return str(store.path(digest))


def stored(store: ContentStore, digest: str) -> bytes:
    """The object as the backend holds it (compressed), read behind the store's back."""
    if isinstance(store, S3Store):
        return bytes(obstore.get(s3_client(store), f"objects/{digest[7:9]}/{digest[9:]}").bytes())
    assert isinstance(store, LocalStore)
    return store.path(digest).read_bytes()


def damage_object(store: ContentStore, digest: str, fn) -> None:
    """Corrupt the object where the backend holds it (and drop a node's cached copy)."""
    if isinstance(store, S3Store):
        key = f"objects/{digest[7:9]}/{digest[9:]}"
        obstore.put(s3_client(store), key, bytes(fn(bytearray(stored(store, digest)))))
        store.cache.discard(digest[7:])
    else:
        assert isinstance(store, LocalStore)
        tamper(store.path(digest), fn)


def s3_client(store: S3Store):
    assert store.location.endpoint is not None
    return bucket_client(store.location.endpoint, store.location.prefix)


@pytest.mark.parametrize("data", [SMALL, RAW, ZST, b""], ids=["small", "raw", "zstd", "empty"])
def test_roundtrip(store, tmp_path, data):
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    r = store.put_file(src)
    assert r == PutResult(sha(data), len(data), len(stored(store, r.digest)), r.stored_bytes)
    assert r.new_bytes == r.stored_bytes > 0
    assert store.has(r.digest) and store.size(r.digest) == len(data)
    assert store.read_bytes(r.digest) == data
    with store.open(r.digest) as f:  # small reads, as an HTTP response body would do
        assert b"".join(iter(lambda: f.read(1000), b"")) == data
    dst = tmp_path / "out" / "model.bin"
    dst.parent.mkdir()
    assert store.copy_to(r.digest, dst, mode=0o640) == len(data)
    assert dst.read_bytes() == data and stat.S_IMODE(dst.stat().st_mode) == 0o640
    assert os.listdir(dst.parent) == ["model.bin"]


def test_put_apis_agree(store):
    class Chunks:  # a file-like object with read() only
        def __init__(self, data):
            self.f = io.BytesIO(data)

        def read(self, n):
            return self.f.read(min(n, 12345))

    results = [store.put_bytes(RAW), store.put_stream(io.BytesIO(RAW))]
    results.append(store.put_stream(Chunks(RAW)))
    assert {r.digest for r in results} == {sha(RAW)}
    with store.writer() as w:
        for i in range(0, len(RAW), 65536):
            assert w.write(memoryview(RAW)[i : i + 65536]) == 65536
        assert w.commit().digest == sha(RAW)
    assert store.stats().objects == 1
    floats = array.array("f", range(1000))
    with store.writer() as w:
        assert w.write(floats) == 4000  # bytes, whatever the buffer's item size
        assert w.commit().digest == sha(floats.tobytes())


def test_compression_is_chosen_by_content(store):
    assert store.put_bytes(SMALL).stored_bytes < len(SMALL) / 2
    assert store.put_bytes(ZST).stored_bytes < len(ZST) * 0.8
    assert 0 < store.put_bytes(RAW).stored_bytes - len(RAW) < 200  # headers only


def test_dedupe_adds_nothing(store):
    first, second = store.put_bytes(RAW), store.put_bytes(RAW)
    assert first.new_bytes > 0 and second.new_bytes == 0
    assert second.stored_bytes == first.stored_bytes and second.digest == first.digest
    assert store.stats().objects == 1 and store.stats().bytes == first.stored_bytes
    assert files_under(store.tmp) == []


def test_objects_are_valid_zstd(store):
    for data in (SMALL, RAW, ZST):
        digest = store.put_bytes(data).digest
        if shutil.which("zstd"):  # the CLI reads objects as plain .zst files
            out = subprocess.run(["zstd", "-dc"], input=stored(store, digest), capture_output=True)
            assert out.stdout == data


def test_local_objects_are_read_only_files_named_by_digest(local):
    for data in (SMALL, RAW, ZST):
        path = local.path(local.put_bytes(data).digest)
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        assert path.parent.name + path.name == local.put_bytes(data).digest[7:]


def test_both_digest_forms(store):
    digest = store.put_bytes(SMALL).digest
    bare = digest.removeprefix("sha256:")
    for form in (digest, bare, bare.upper(), "sha256:" + bare.upper()):
        assert store.has(form) and store.size(form) == len(SMALL)
        assert store.read_bytes(form) == SMALL
    for bad in ("sha256:abc", "md5:" + bare, bare + "0", "", "sha256:" + "g" * 64):
        with pytest.raises(ValueError):
            store.has(bad)
    assert store.gc([bare], grace_s=0).removed == 0


def test_missing_object(store, tmp_path):
    digest = sha(b"never stored")
    assert not store.has(digest)
    copy = lambda d: store.copy_to(d, tmp_path / "x")  # noqa: E731
    for call in (store.open, store.size, store.read_bytes, copy):
        with pytest.raises(ObjectMissing, match=digest):
            call(digest)
    assert not (tmp_path / "x").exists()


def test_a_reader_of_exactly_its_size_gets_the_verdict(store):
    """A copy of exactly `size` bytes (as tarfile copies an export's member) never asks for EOF:
    a byte changed in place is still refused, with the last bytes."""
    r = store.put_bytes(RAW)
    damage_object(store, r.digest, flip)
    size = store.size(r.digest)
    with pytest.raises(CorruptObject, match=r.digest), store.open(r.digest) as f:
        left = size
        while left:
            left -= len(f.read(min(left, 16 << 10)))


@pytest.mark.parametrize("data", [SMALL, RAW, ZST], ids=["small", "raw", "zstd"])
@pytest.mark.parametrize("damage", [flip, truncate, cut_header, wrong_size])
def test_corruption_detected(store, tmp_path, data, damage):
    r = store.put_bytes(data)
    path = where(store, r.digest)
    damage_object(store, r.digest, damage)

    with pytest.raises(CorruptObject) as err, store.open(r.digest) as f:
        f.read()
    assert r.digest in str(err.value) and str(path) in str(err.value)

    dst = tmp_path / "served.bin"
    dst.write_bytes(b"the previous good file")
    with pytest.raises(CorruptObject):
        store.copy_to(r.digest, dst)
    assert dst.read_bytes() == b"the previous good file"  # nothing corrupt was served
    assert sorted(os.listdir(tmp_path)) == ["served.bin", "store"]  # and no temp left beside it

    [problem] = store.verify()
    assert (problem.digest, problem.path, problem.quarantined_to) == (r.digest, path, None)
    assert problem.reason and store.has(r.digest)


def test_verify_quarantines_and_a_new_put_heals(store):
    good, bad = store.put_bytes(SMALL), store.put_bytes(RAW)
    damage_object(store, bad.digest, flip)
    [problem] = store.verify(quarantine=True)
    assert problem.digest == bad.digest and problem.path == where(store, bad.digest)
    assert problem.quarantined_to and bad.digest[7:] in problem.quarantined_to
    assert not store.has(bad.digest) and store.has(good.digest)
    assert store.verify() == []
    assert store.put_bytes(RAW).new_bytes > 0 and store.read_bytes(bad.digest) == RAW


def test_gc_keeps_live_young_and_leased(local):
    live, young, leased, dead = (local.put_bytes(b"%d" % i * 1000) for i in range(4))
    with local.lease() as lease:
        put_under_lease = local.put_bytes(b"built while leased")
        for r in (live, leased, dead, put_under_lease):
            age(local.path(r.digest), 7200)
        lease_b = local.lease([leased.digest])
        result = local.gc({live.digest}, grace_s=3600)
        assert (result.removed, result.freed_bytes) == (1, dead.stored_bytes)
        assert put_under_lease.digest[7:] in lease.digests
    assert not local.has(dead.digest)
    assert all(local.has(r.digest) for r in (live, young, leased, put_under_lease))

    assert local.gc({live.digest}, grace_s=3600).removed == 1  # the first lease is released
    assert not local.has(put_under_lease.digest) and local.has(leased.digest)
    lease_b.release()
    result = local.gc([], grace_s=0)
    assert result.removed == 3 and local.stats().objects == 0


def test_dedupe_refreshes_age(local):
    r = local.put_bytes(SMALL)
    age(local.path(r.digest), 7200)
    local.put_bytes(SMALL)  # a build that just "added" this object must not lose it to gc
    assert local.gc([], grace_s=3600).removed == 0


def test_aborted_writer_leaves_nothing(store):
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(RAW)
        raise RuntimeError("upload interrupted")
    with store.writer() as w:
        w.write(SMALL)  # no commit: discarded
    w2 = store.writer()
    w2.write(SMALL)
    w2.abort()
    with pytest.raises(ValueError):
        w2.write(b"more")
    assert store.stats().objects == 0 and files_under(store.tmp) == []


def test_stale_temp_cleaned_live_temp_kept(local):
    dead = local.tmp / "put-dead"
    dead.write_bytes(b"partial")
    age(dead, 3600)
    live = local.writer()
    live.write(b"still uploading")
    age(live._tmp, 3600)
    assert local.gc([], grace_s=0).temp_removed == 1
    assert not dead.exists() and live._tmp.exists()
    LocalStore(local.root, tmp_grace_s=0)  # opening the store cleans too, never a live writer
    assert live.commit().digest == sha(b"still uploading")


def test_async_wrappers(store, tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(RAW)

    async def main():
        r = await store.aput_file(src)
        w = store.writer()
        for i in range(0, len(SMALL), 100):
            await w.awrite(SMALL[i : i + 100])
        small = await w.acommit()
        assert await store.aread_bytes(small.digest) == SMALL
        assert await store.acopy_to(r.digest, tmp_path / "copy.bin") == len(RAW)
        assert await store.averify() == []
        assert (await store.astats()).objects == 2
        assert (await store.agc([r.digest], grace_s=0)).removed == 1

    asyncio.run(main())
    assert (tmp_path / "copy.bin").read_bytes() == RAW


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from modelport.store.cas import LocalStore

    class SlowUpload:  # endless random bytes, slower once it has started
        n = 0
        def read(self, size):
            self.n += 1
            if self.n == 8:
                print("writing", flush=True)
            if self.n > 8:
                time.sleep(0.02)
            return os.urandom(size)

    LocalStore(sys.argv[1]).put_stream(SlowUpload())
    """
)


def test_kill_9_mid_write_leaves_no_object(local):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(local.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "writing\n"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    assert files_under(local.objects) == []
    [partial] = files_under(local.tmp)
    assert partial.stat().st_size > 1 << 20  # megabytes in, not yet an object
    reopened = LocalStore(local.root)  # young temp: kept, but invisible
    assert reopened.verify() == [] and reopened.stats().objects == 0
    assert reopened.put_bytes(SMALL).new_bytes > 0
    LocalStore(local.root, tmp_grace_s=0)  # its writer is dead (lock gone): cleaned
    assert files_under(local.tmp) == []


def test_digests_list_what_is_stored(store):
    assert isinstance(store, ContentStore) and list(store.digests()) == []
    put = sorted(store.put_bytes(data).digest[7:] for data in (SMALL, RAW, ZST))
    assert list(store.digests()) == put
    store.gc([], grace_s=0)
    assert list(store.digests()) == []
