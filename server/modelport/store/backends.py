"""Which artifact store a server uses: the local one in its data dir, or the S3 bucket that
MODELPORT_STORE_URL names (store/s3.py, imported only then: obstore loads a native library)."""

from __future__ import annotations

from pathlib import Path

from modelport.store.cas import LocalStore
from modelport.store.contract import ContentStore

__all__ = ["check_url", "open_store"]


def check_url(url: str) -> str:
    """`url` when it names a store this server can use; ValueError saying why not otherwise."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    from modelport.store.s3 import parse_url

    parse_url(url)
    return url


def open_store(root: Path, url: str | None = None) -> ContentStore:
    """The local store at `root`; with an s3:// `url`, that bucket with its read-through cache
    in `root/cache` (blocking: run it in a thread)."""
    if not url:
        return LocalStore(root)
    from modelport.store.s3 import S3Store

    return S3Store(check_url(url), root / "cache")
