"""A multipart upload read as it streams: the archive to a temp file, small fields in memory."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from multipart import MultipartSegment, ParserError, PushMultipartParser

from modelport.errors import RequestInvalid, RequestMalformed
from modelport.scratch import scratch_file
from modelport.store.archive import ArchiveTooLarge

FIELD_LIMIT = 1024 * 1024  # bytes of any field that is not the archive
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


class Upload(msgspec.Struct):
    fields: dict[str, str]
    archive: Path | None
    archive_bytes: int = 0
    held: int = -1  # an fd holding the archive's temp file (its flock keeps a sweep off it)

    def discard(self) -> None:
        """Delete the archive's temp file and let go of it."""
        if self.archive is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.archive)
        if self.held >= 0:
            os.close(self.held)
            self.held = -1


async def read_upload(
    content_type: str,
    chunks: AsyncIterator[bytes],
    tmp_dir: Path,
    max_archive_bytes: int,
    file_field: str = "archive",
) -> Upload:
    """Parse multipart/form-data as it arrives; the caller calls `discard()` when done with it."""
    found = _BOUNDARY.search(content_type or "")
    if not content_type.lower().startswith("multipart/form-data") or not found:
        raise RequestMalformed("Send the build as multipart/form-data with an `archive` part.")
    fd, path = scratch_file(tmp_dir, "upload-")
    archive = os.fdopen(os.dup(fd), "wb")  # `fd` keeps the lock until discard()
    name = str(path)
    upload = Upload({}, None, held=fd)
    segment: MultipartSegment | None = None
    value = bytearray()
    try:
        with PushMultipartParser(found.group(1).encode(), max_segment_count=64) as parser:
            async for chunk in chunks:
                for event in parser.parse(chunk):
                    segment, value = _event(
                        event, segment, value, upload, archive, name, file_field, max_archive_bytes
                    )
            for event in parser.parse(b""):
                segment, value = _event(
                    event, segment, value, upload, archive, name, file_field, max_archive_bytes
                )
            if not parser.closed:
                raise RequestMalformed("The multipart body ended early.")
        archive.close()  # a full disk may answer only now
    except ParserError as exc:
        _give_up(archive, upload, path)
        raise RequestMalformed(f"Invalid multipart/form-data: {exc}") from None
    except BaseException:
        _give_up(archive, upload, path)
        raise
    if upload.archive is None:
        _give_up(archive, upload, path)
        raise RequestInvalid("The `archive` part is missing.", field=file_field)
    return upload


def _give_up(archive, upload: Upload, path: Path) -> None:
    with contextlib.suppress(OSError):  # closing flushes: on a full disk, that fails again
        archive.close()
    upload.archive = path
    upload.discard()


def _event(event, segment, value, upload: Upload, archive, name, file_field, max_bytes):
    if isinstance(event, MultipartSegment):
        return event, bytearray()
    if segment is None:
        raise RequestMalformed("A multipart part has no header.")
    if event:  # a chunk of the current part's data
        if segment.name == file_field:
            upload.archive_bytes += len(event)
            if upload.archive_bytes > max_bytes:
                raise ArchiveTooLarge(f"The archive is over the limit of {max_bytes} bytes.")
            archive.write(event)
        else:
            if len(value) + len(event) > FIELD_LIMIT:
                raise RequestInvalid(
                    f"The field `{segment.name}` is over 1 MiB.", field=segment.name
                )
            value.extend(event)
        return segment, value
    # the end of the current part
    if segment.name == file_field:
        upload.archive = Path(name)
    else:
        try:
            upload.fields[segment.name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestInvalid(
                f"The field `{segment.name}` is not UTF-8.", field=segment.name
            ) from None
    return None, bytearray()
