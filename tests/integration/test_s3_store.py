"""The S3 store's own promises on a real radosgw: its URL, two servers writing one object, the
service going away, a corrupt object in the bucket, the read-through cache, gc's touch markers.
(The contract it shares with the local store is tests/integration/test_cas.py.)"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import obstore
import pytest
from modelport.settings import SettingError, Settings
from modelport.store.objects import CorruptObject, StoreUnreachable
from modelport.store.s3 import PART, SINGLE_PUT, S3Store, parse_url

SMALL = b"weights " * 1000
LARGE = random.Random(3).randbytes(SINGLE_PUT + PART + 12345)  # a multipart upload of 3 parts


def key(digest: str) -> str:
    return f"objects/{digest[7:9]}/{digest[9:]}"


@pytest.fixture
def node(s3, tmp_path):
    """node(name, **options): an S3Store on the test's prefix, as one server would open it (its
    own cache folder)."""
    prefix = s3.prefix()

    def make(name: str = "a", **options: str) -> S3Store:
        return S3Store(s3.url(prefix, **options), tmp_path / name)

    make.prefix = prefix  # type: ignore[attr-defined]
    return make


def test_the_url_and_its_options():
    loc = parse_url("s3://models/team/a?endpoint=http://10.0.0.5:7480&region=eu-west-1")
    assert (loc.bucket, loc.prefix, loc.endpoint, loc.region) == (
        "models",
        "team/a",
        "http://10.0.0.5:7480",
        "eu-west-1",
    )
    assert loc.path_style and loc.cache_bytes == 5120 << 20  # path style with an endpoint
    aws = parse_url("s3://models?cache_mb=10")
    assert (aws.prefix, aws.endpoint, aws.path_style, aws.cache_bytes) == (
        "",
        None,
        False,
        10 << 20,
    )
    assert not parse_url("s3://b/p?endpoint=https://s3.example&path_style=false").path_style


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://bucket/prefix", "not an s3://bucket/prefix URL"),
        ("s3:///prefix", "not an s3://bucket/prefix URL"),
        ("s3://b/p?endpoint=10.0.0.5:7480", "endpoint must be an http"),
        ("s3://b/p?path_style=maybe", "path_style must be true or false"),
        ("s3://b/p?cache_mb=-1", "cache_mb must be a whole number"),
        ("s3://b/p?bucket_acl=public", "unknown option 'bucket_acl'"),
    ],
)
def test_a_bad_url_is_refused_naming_the_setting(url, says, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=says):
        parse_url(url)
    monkeypatch.setenv("MODELPORT_STORE_URL", url)
    with pytest.raises(SettingError, match=f"MODELPORT_STORE_URL: .*{says}"):
        Settings.from_env(data_dir=str(tmp_path))


def test_the_setting_reaches_the_server_settings(monkeypatch, tmp_path):
    url = "s3://models/p?endpoint=http://127.0.0.1:7480"
    monkeypatch.setenv("MODELPORT_STORE_URL", url)
    assert Settings.from_env(data_dir=str(tmp_path)).store_url == url


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["one-put", "multipart"])
def test_two_servers_writing_one_object_at_once(node, s3, data):
    a, b = node("a"), node("b")
    start = threading.Barrier(2)
    results = {}

    def put(name: str, store: S3Store) -> None:
        start.wait()
        results[name] = store.put_bytes(data)

    threads = [threading.Thread(target=put, args=item) for item in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert {r.digest for r in results.values()} == {digest}
    if data is SMALL:  # a conditional create: exactly one server wrote it
        assert sorted(r.new_bytes > 0 for r in results.values()) == [False, True]
    third = node("c")  # a node that has no copy: what the bucket holds is whole and right
    assert third.read_bytes(digest) == data and third.stats().objects == 1
    assert third.verify() == []
    if data is LARGE:  # it went up in parts (an AWS-style multipart ETag)
        assert obstore.head(s3.client(node.prefix), key(digest))["e_tag"].endswith('-3"')


@pytest.mark.slow
def test_the_service_down_is_store_unreachable_and_cached_reads_go_on(node, s3, tmp_path):
    store = node()
    kept = store.put_bytes(SMALL)  # a put leaves its object in this node's cache
    big = tmp_path / "big.bin"
    big.write_bytes(LARGE)
    s3.stop_gateway()
    try:
        assert store.read_bytes(kept.digest) == SMALL  # from the cache: serving goes on
        calls = {
            "put": lambda: store.put_bytes(b"new while down"),
            "put_file": lambda: store.put_file(big),
            "has": lambda: store.has(kept.digest),
            "read": lambda: store.read_bytes("sha256:" + "0" * 64),
            "verify": store.verify,
            "gc": lambda: store.gc([], grace_s=0),
            "stats": store.stats,
        }
        for name, call in calls.items():
            with pytest.raises(StoreUnreachable, match=f"{store.where} cannot be reached") as err:
                call()
            assert err.value.detail, name
        assert os.listdir(store.tmp) == []  # nothing half-made left behind
    finally:
        s3.start_gateway()
    assert store.put_bytes(b"new once back").new_bytes > 0


def test_verify_names_a_corrupt_object_in_the_bucket(node, s3):
    store = node()
    good, bad = store.put_bytes(SMALL), store.put_bytes(LARGE)
    bucket = s3.client(node.prefix)
    damaged = bytearray(obstore.get(bucket, key(bad.digest)).bytes())
    damaged[len(damaged) // 2] ^= 0x10
    obstore.put(bucket, key(bad.digest), bytes(damaged))

    [problem] = store.verify()  # the bucket's object is read, not this node's good copy
    assert problem.digest == bad.digest and problem.path == store.url_of(bad.digest[7:])
    assert problem.path.startswith(f"s3://modelport/{node.prefix}/objects/")
    assert problem.reason and problem.quarantined_to is None
    with pytest.raises(CorruptObject, match=bad.digest):  # verify dropped the cached copy
        store.read_bytes(bad.digest)

    [moved] = store.verify(quarantine=True)
    assert moved.quarantined_to.startswith(f"{store.where}/quarantine/{bad.digest[7:]}.")
    assert not store.has(bad.digest) and store.has(good.digest) and store.verify() == []
    assert store.put_bytes(LARGE).new_bytes > 0 and store.read_bytes(bad.digest) == LARGE


def test_the_cache_is_bounded_least_recently_used_first(node):
    writer = node("writer", cache_mb="0")  # keeps no copy: every read goes to the bucket
    blobs = [random.Random(i).randbytes(400_000) for i in range(3)]  # ~400 kB stored each
    digests = [writer.put_bytes(b).digest for b in blobs]
    assert writer.cache.bytes == 0 and os.listdir(writer.cache.root) == ["tmp"]

    reader = node("reader", cache_mb="1")
    for d in digests[:2]:
        reader.read_bytes(d)
    assert reader.read_bytes(digests[0]) == blobs[0]  # the first is now the most recent
    reader.read_bytes(digests[2])  # over 1 MiB: the least recently used (the second) goes
    assert reader.cache.bytes <= 1 << 20
    cached = {p.parent.name + p.name for p in Path(reader.cache.root).glob("??/*")}
    assert cached == {digests[0][7:], digests[2][7:]}
    assert reader.read_bytes(digests[1]) == blobs[1]  # fetched again (the first goes)

    copy = reader.cache.path(digests[2][7:])  # a cached copy damaged on this node's disk
    os.chmod(copy, 0o644)
    copy.write_bytes(copy.read_bytes()[:-5])
    with pytest.raises(CorruptObject):
        reader.read_bytes(digests[2])
    assert reader.read_bytes(digests[2]) == blobs[2]  # dropped, and read from the bucket again

    again = node("reader", cache_mb="1")  # a restart keeps what is cached, and its order
    assert again.cache.bytes == reader.cache.bytes


def test_a_put_of_a_stored_object_makes_it_young_for_gc(node, s3):
    a, b = node("a"), node("b")
    first = a.put_bytes(SMALL)
    bucket = s3.client(node.prefix)
    with pytest.raises(FileNotFoundError):
        obstore.head(bucket, f"touched/{first.digest[7:]}")
    assert b.put_bytes(SMALL).new_bytes == 0  # another server's put: deduplicated...
    obstore.head(bucket, f"touched/{first.digest[7:]}")  # ...and its age refreshed
    assert a.gc([], grace_s=3600).removed == 0
    done = a.gc([], grace_s=0)
    assert (done.removed, done.freed_bytes) == (1, first.stored_bytes)
    assert [m["path"] for batch in obstore.list(bucket) for m in batch] == []


def test_gc_keeps_live_and_leased_objects(node):
    store = node()
    live, leased, dead = (store.put_bytes(b"%d" % i * 1000) for i in range(3))
    with store.lease([leased.digest]) as lease:
        under_lease = store.put_bytes(b"built while leased")
        assert under_lease.digest[7:] in lease.digests
        assert store.gc({live.digest}, grace_s=0).removed == 1
        assert not store.has(dead.digest)
        assert all(store.has(r.digest) for r in (live, leased, under_lease))
    assert store.gc({live.digest}, grace_s=0).removed == 2
    assert list(store.digests()) == [live.digest[7:]]


@pytest.mark.slow
def test_a_large_object_streams_through_a_file(node, tmp_path):
    src = tmp_path / "weights.bin"
    with open(src, "wb") as f:
        for i in range(6):  # 48 MiB, never one buffer in this test nor in the store
            f.write(random.Random(i).randbytes(8 << 20))
    put = node("a").put_file(src)
    assert put.size == 48 << 20 and put.new_bytes == put.stored_bytes
    dst = tmp_path / "copy.bin"
    assert node("b").copy_to(put.digest, dst) == 48 << 20
    with open(dst, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == put.digest[7:]
