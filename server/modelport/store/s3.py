"""The artifact store in an S3 bucket (`MODELPORT_STORE_URL=s3://bucket/prefix?…`), through obstore.

Objects keep the local store's names and format: `<prefix>/objects/<2 hex>/<62 hex>`, each an
object as store/objects.py writes it (a size header, zstd frames), verified on every read. A put
streams into a temp file on local disk (never the whole object in memory), then:

- the object is already in the bucket (one HEAD): nothing is sent, its touch marker is refreshed;
- up to SINGLE_PUT bytes stored: one PUT with `If-None-Match: *` (conditional create): of two
  servers putting one object at once, one creates it and the other is told it exists;
- larger: a multipart upload from the temp file (PART-sized parts, PARTS_IN_FLIGHT at once). S3
  completes a multipart upload atomically, so two servers uploading one large object at once both
  succeed and the object is whole at every moment (one name, one content). Neither a condition on
  the completion nor copy-if-not-exists (UploadPartCopy) works on radosgw 16, so this case alone
  is not conditional.

Each node keeps a read-through cache of whole stored objects (ObjectCache: bounded in bytes, the
least recently used evicted first): reads are served from it, a put leaves its object in it.

gc: an object's age is that of the newer of the object and its touch marker
`<prefix>/touched/<hex>` (S3 cannot refresh an object's modification time in place). Leases hold
objects as in the local store, in this process; across servers the grace period is the
protection. The URL's options: `endpoint` (an S3 server other than AWS; `http://` allowed),
`region`, `path_style` (default true with an endpoint), `cache_mb` (default 5120).
Credentials come from the usual AWS_* variables.
"""

from __future__ import annotations

import fcntl
import io
import os
import tempfile
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import msgspec
import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError
from obstore.store import S3Store as S3Client

from modelport.store import maintenance
from modelport.store.contract import ContentStore, GcResult, Problem, StoreStats
from modelport.store.objects import (
    CHUNK,
    HEADER,
    LEVEL,
    CorruptObject,
    ObjectMissing,
    ObjectReader,
    PutResult,
    StoreUnreachable,
    Writer,
    parse_digest,
    read_header,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from obstore import GetResult, ObjectMeta
    from obstore.store import S3Config

__all__ = ["ObjectCache", "S3Location", "S3Store", "parse_url"]

SINGLE_PUT = 8 << 20  # stored bytes up to which a put is one conditional PUT (read into memory)
PART = 8 << 20  # a multipart upload's part; PART * PARTS_IN_FLIGHT bytes in memory at most
PARTS_IN_FLIGHT = 4
CACHE_MB = 5120
_OPTIONS = {"endpoint", "region", "path_style", "cache_mb"}
# obstore raises Python's own FileNotFoundError / FileExistsError as well as its classes
_ABSENT = (NotFoundError, FileNotFoundError)
_EXISTS = (AlreadyExistsError, FileExistsError)
_FAILED = (BaseError, OSError)  # the rest: the server is down, refuses, or answers nonsense
T = TypeVar("T")


class S3Location(msgspec.Struct, frozen=True):
    bucket: str
    prefix: str  # without leading or trailing "/"; "" for the bucket's root
    endpoint: str | None
    region: str | None
    path_style: bool
    cache_bytes: int


def parse_url(url: str) -> S3Location:
    """`s3://bucket/prefix?endpoint=…&region=…&path_style=true&cache_mb=…`; ValueError saying
    what is wrong otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if unknown := sorted(set(query) - _OPTIONS):
        raise ValueError(
            f"{url!r}: unknown option {unknown[0]!r} (known: {', '.join(sorted(_OPTIONS))})"
        )

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    endpoint = one("endpoint") or None
    if endpoint is not None and urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: endpoint must be an http:// or https:// URL")
    path_style = endpoint is not None
    if (flag := one("path_style")) is not None:
        if flag.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{url!r}: path_style must be true or false")
        path_style = flag.lower() in ("true", "1")
    cache_mb = one("cache_mb") or str(CACHE_MB)
    if not cache_mb.isdigit():
        raise ValueError(f"{url!r}: cache_mb must be a whole number of MiB")
    return S3Location(
        parts.netloc,
        parts.path.strip("/"),
        endpoint,
        one("region") or None,
        path_style,
        int(cache_mb) << 20,
    )


class ObjectCache:
    """Whole stored objects of a remote store on this node's disk, at most `max_bytes` of them;
    the least recently used go first. Files at `<root>/<2 hex>/<62 hex>`, temps in `<root>/tmp`.
    Thread-safe; a file evicted while open stays readable until closed."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.tmp, self.max_bytes = root, root / "tmp", max_bytes
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._used: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self.bytes = 0
        found = []
        for hexd, path in maintenance.iter_objects(root):  # a restart keeps the order of use
            st = path.stat()
            found.append((st.st_mtime, hexd, st.st_size))
        with self._lock:
            for _, hexd, size in sorted(found):
                self._used[hexd] = size
                self.bytes += size
            self._evict()

    def path(self, hexd: str) -> Path:
        return self.root / hexd[:2] / hexd[2:]

    def open(self, hexd: str) -> BinaryIO | None:
        """The cached copy, opened (and now the most recently used), or None."""
        with self._lock:
            if hexd not in self._used:
                return None
            self._used.move_to_end(hexd)
        try:
            f = open(self.path(hexd), "rb")  # noqa: SIM115 — the caller's to close
        except FileNotFoundError:
            self.discard(hexd)
            return None
        os.utime(f.fileno())  # the order of use, for the next start
        return f

    def add(self, hexd: str, tmp: Path) -> None:
        """Take the complete temp file `tmp` (the object as stored) as `hexd`'s copy; one larger
        than the whole cache is removed instead."""
        size = tmp.stat().st_size
        if size > self.max_bytes:
            tmp.unlink()
            return
        final = self.path(hexd)
        final.parent.mkdir(exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        with self._lock:
            self.bytes += size - self._used.pop(hexd, 0)
            self._used[hexd] = size
            self._evict()

    def discard(self, hexd: str) -> None:
        with self._lock:
            self.bytes -= self._used.pop(hexd, 0)
            self.path(hexd).unlink(missing_ok=True)

    def _evict(self) -> None:  # under the lock
        while self.bytes > self.max_bytes and self._used:
            hexd, size = self._used.popitem(last=False)
            self.bytes -= size
            self.path(hexd).unlink(missing_ok=True)


class _Body(io.RawIOBase):
    """A GET's body as a raw binary stream: one piece of about CHUNK bytes in memory at a time."""

    def __init__(
        self, result: GetResult, where: str, fail: Callable[[Exception], Exception]
    ) -> None:
        self.name, self._fail = where, fail
        self._pieces = iter(result.stream(min_chunk_size=CHUNK))
        self._piece = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer) -> int:
        while not self._piece:
            try:
                self._piece = memoryview(next(self._pieces)).cast("B")
            except StopIteration:
                return 0
            except _FAILED as exc:
                raise self._fail(exc) from None
        out = memoryview(buf).cast("B")
        n = min(len(out), len(self._piece))
        out[:n] = self._piece[:n]
        self._piece = self._piece[n:]
        return n


def _key(hexd: str) -> str:
    return f"objects/{hexd[:2]}/{hexd[2:]}"


def _hex_of(key: str) -> str | None:
    """The digest an object key names (None for anything else under objects/)."""
    parts = key.split("/")
    if len(parts) == 3 and len(parts[1]) == 2 and len(parts[2]) == 62:
        try:
            return parse_digest(parts[1] + parts[2])
        except ValueError:
            return None
    return None


class S3Store(ContentStore):
    """Objects in an S3 bucket under a prefix, with a read-through cache in `cache_dir`."""

    def __init__(
        self,
        url: str,
        cache_dir: str | os.PathLike[str],
        *,
        level: int = LEVEL,
        threads: int | None = None,
        tmp_grace_s: float = maintenance.TMP_GRACE_S,
    ) -> None:
        super().__init__()
        self.location = loc = parse_url(url)
        self.where = f"s3://{loc.bucket}/{loc.prefix}".rstrip("/")
        config: S3Config = {"virtual_hosted_style_request": not loc.path_style}
        if loc.endpoint:
            config["endpoint"] = loc.endpoint
        if loc.region:
            config["region"] = loc.region
        self._client = S3Client(
            loc.bucket,
            prefix=loc.prefix or None,
            config=config,  # credentials: obstore reads the AWS_* variables
            client_options={
                "allow_http": bool(loc.endpoint and loc.endpoint.startswith("http://")),
                "connect_timeout": "5s",
                "timeout": "300s",  # one request: a part of PART bytes, or a read's piece
            },
            # a store that is down fails a call within seconds, not after minutes of retries
            retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=10)},
        )
        self.cache = ObjectCache(Path(cache_dir), loc.cache_bytes)
        self.tmp, self.level, self.tmp_grace_s = self.cache.tmp, level, tmp_grace_s
        self.threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        self.clean_temp(tmp_grace_s)  # temp files of writers killed mid-put

    # -- calls to S3 -------------------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> StoreUnreachable:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreUnreachable(self.where, detail[:300])

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One obstore call; "not found" and "already exists" pass (_ABSENT, _EXISTS), any other
        failure is StoreUnreachable."""
        try:
            return fn(self._client, *args, **kwargs)
        except (*_ABSENT, *_EXISTS):
            raise
        except _FAILED as exc:
            raise self._unreachable(exc) from None

    def _head(self, key: str) -> ObjectMeta | None:
        try:
            return self._call(obstore.head, key)
        except _ABSENT:
            return None

    def _listing(self, prefix: str) -> Iterator[ObjectMeta]:
        stream = self._call(obstore.list, prefix, chunk_size=1000)
        while True:
            try:
                batch = next(stream)
            except StopIteration:
                return
            except _FAILED as exc:
                raise self._unreachable(exc) from None
            yield from batch

    def _get(self, hexd: str) -> tuple[_Body, int]:
        try:
            result = self._call(obstore.get, _key(hexd))
        except _ABSENT:
            raise ObjectMissing(hexd) from None
        return _Body(result, self.url_of(hexd), self._unreachable), int(result.meta["size"])

    def url_of(self, hexd: str) -> str:
        return f"{self.where}/{_key(hexd)}"

    # -- names ---------------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return self._head(_key(parse_digest(digest))) is not None

    def size(self, digest: str) -> int:
        hexd = parse_digest(digest)
        cached = self.cache.open(hexd)
        if cached is not None:
            with cached:
                return read_header(cached, hexd, self.url_of(hexd))
        try:
            head = self._call(obstore.get_range, _key(hexd), start=0, length=HEADER.size)
        except _ABSENT:
            raise ObjectMissing(hexd) from None
        return read_header(io.BytesIO(bytes(head)), hexd, self.url_of(hexd))

    def digests(self) -> Iterator[str]:
        for meta in self._listing("objects/"):
            if (hexd := _hex_of(meta["path"])) is not None:
                yield hexd

    # -- put -----------------------------------------------------------------------------------
    def writer(self) -> Writer:
        return Writer(self.tmp, self._install, level=self.level, threads=self.threads)

    def _install(self, tmp: Path, hexd: str, size: int, stored: int) -> PutResult:
        """Send a complete temp file to the bucket unless the object is there; keep it cached."""
        with self.leases.installing(hexd):
            pass  # joined every lease before the upload: this process's gc leaves it alone
        key, digest = _key(hexd), f"sha256:{hexd}"
        try:
            if (found := self._head(key)) is not None:
                return self._deduplicated(hexd, tmp, size, int(found["size"]))
            if stored <= SINGLE_PUT:
                try:
                    self._call(obstore.put, key, tmp.read_bytes(), mode="create")
                except _EXISTS:  # another server put it meanwhile
                    return self._deduplicated(hexd, tmp, size, stored)
            else:
                self._call(
                    obstore.put,
                    key,
                    tmp,
                    use_multipart=True,
                    chunk_size=PART,
                    max_concurrency=PARTS_IN_FLIGHT,
                )
            self.cache.add(hexd, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return PutResult(digest, size, stored, stored)

    def _deduplicated(self, hexd: str, tmp: Path, size: int, existing: int) -> PutResult:
        """A put of an object already stored: it is young again for gc (its touch marker)."""
        self._call(obstore.put, f"touched/{hexd}", b"")
        if self._head(_key(hexd)) is None:  # collected by another server meanwhile: send it
            self._call(obstore.put, _key(hexd), tmp, use_multipart=existing > SINGLE_PUT)
        self.cache.add(hexd, tmp)  # the same content: a copy here saves a GET
        return PutResult(f"sha256:{hexd}", size, existing, 0)

    # -- read ----------------------------------------------------------------------------------
    def open(self, digest: str) -> ObjectReader:
        hexd = parse_digest(digest)
        raw = self.cache.open(hexd) or self._fetch(hexd)
        return ObjectReader(
            hexd, raw, where=self.url_of(hexd), on_corrupt=lambda: self.cache.discard(hexd)
        )

    def _fetch(self, hexd: str) -> BinaryIO:
        """The object read into the cache, then opened there (streamed when larger than the
        cache)."""
        body, size = self._get(hexd)
        if size > self.cache.max_bytes:
            return io.BufferedReader(body, CHUNK)
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="get-")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # tells clean_temp this reader is alive
        try:
            with open(fd, "wb") as out, body:
                buf = bytearray(CHUNK)
                while n := body.readinto(buf):
                    out.write(memoryview(buf)[:n])
            self.cache.add(hexd, Path(name))
        finally:
            Path(name).unlink(missing_ok=True)
        cached = self.cache.open(hexd)
        if cached is None:  # evicted at once by other reads: stream it instead
            return io.BufferedReader(self._get(hexd)[0], CHUNK)
        return cached

    # -- maintenance ---------------------------------------------------------------------------
    def verify(self, quarantine: bool = False) -> list[Problem]:
        """Re-hash every object as the bucket holds it (not the cache); with `quarantine`, move a
        corrupt one to `<prefix>/quarantine/<hex>.<ns>`."""
        problems = []
        for hexd in self.digests():
            try:
                body, _ = self._get(hexd)
                with ObjectReader(
                    hexd, io.BufferedReader(body, CHUNK), where=self.url_of(hexd)
                ) as f:
                    while f.read(CHUNK):
                        pass
            except ObjectMissing:  # collected meanwhile
                continue
            except CorruptObject as e:
                self.cache.discard(hexd)
                moved = None
                if quarantine:
                    aside = f"quarantine/{hexd}.{time.time_ns()}"
                    self._call(obstore.copy, _key(hexd), aside)
                    self._call(obstore.delete, _key(hexd))
                    moved = f"{self.where}/{aside}"
                problems.append(Problem(e.digest, str(e.path), e.reason, moved))
        return problems

    def gc(self, live: Iterable[str], grace_s: float = 3600) -> GcResult:
        keep = {parse_digest(d) for d in live}
        touched = {
            m["path"].removeprefix("touched/"): m["last_modified"].timestamp()
            for m in self._listing("touched/")
        }
        removed = freed = 0
        for meta in self._listing("objects/"):
            hexd = _hex_of(meta["path"])
            if hexd is None or hexd in keep:
                continue
            now = time.time()
            if now - max(meta["last_modified"].timestamp(), touched.get(hexd, 0.0)) < grace_s:
                continue
            with self.leases.removing(hexd) as free:
                if not free:
                    continue
                marker = self._head(f"touched/{hexd}")  # a put on another server since listing?
                if marker is not None and now - marker["last_modified"].timestamp() < grace_s:
                    continue
                self._call(obstore.delete, [meta["path"], f"touched/{hexd}"])
                self.cache.discard(hexd)
            removed += 1
            freed += int(meta["size"])
        stale = [
            f"touched/{hexd}"
            for hexd, when in touched.items()
            if hexd not in keep and time.time() - when >= grace_s and not self.has(hexd)
        ]
        if stale:  # markers whose object is gone
            self._call(obstore.delete, stale)
        return GcResult(removed, freed, self.clean_temp(self.tmp_grace_s))

    def stats(self) -> StoreStats:
        count = size = 0
        for meta in self._listing("objects/"):
            if _hex_of(meta["path"]) is not None:
                count += 1
                size += int(meta["size"])
        return StoreStats(count, size)

    def clean_temp(self, max_age_s: float) -> int:
        return maintenance.clean_temp(self.tmp, max_age_s)
