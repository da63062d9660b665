"""A multipart upload read as it streams: the archive part to a temp file, small fields in memory."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from multipart import MultipartSegment, ParserError, PushMultipartParser

from modelport.errors import RequestInvalid, RequestMalformed
from modelport.store.archive import ArchiveTooLarge

FIELD_LIMIT = 1024 * 1024  # bytes of any field that is not the archive
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


class Upload(msgspec.Struct):
    fields: dict[str, str]
    archive: Path | None
    archive_bytes: int = 0


async def read_upload(
    content_type: str, chunks: AsyncIterator[bytes], tmp_dir: Path, max_archive_bytes: int,
    file_field: str = "archive",
) -> Upload:
    """Parse multipart/form-data as it arrives; the caller deletes `archive` when done with it."""
    found = _BOUNDARY.search(content_type or "")
    if not content_type.lower().startswith("multipart/form-data") or not found:
        raise RequestMalformed("Send the build as multipart/form-data with an `archive` part.")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    archive = os.fdopen(fd, "wb")
    upload = Upload({}, None)
    segment: MultipartSegment | None = None
    value = bytearray()
    try:
        with PushMultipartParser(found.group(1).encode(), max_segment_count=64) as parser:
            async for chunk in chunks:
                for event in parser.parse(chunk):
                    segment, value = _event(event, segment, value, upload, archive, name,
                                            file_field, max_archive_bytes)
            for event in parser.parse(b""):
                segment, value = _event(event, segment, value, upload, archive, name,
                                        file_field, max_archive_bytes)
            if not parser.closed:
                raise RequestMalformed("The multipart body ended early.")
    except ParserError as exc:
        archive.close()
        os.unlink(name)
        raise RequestMalformed(f"Invalid multipart/form-data: {exc}") from None
    except BaseException:
        archive.close()
        os.unlink(name)
        raise
    archive.close()
    if upload.archive is None:
        os.unlink(name)
        raise RequestInvalid("The `archive` part is missing.", field=file_field)
    return upload


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
                raise RequestInvalid(f"The field `{segment.name}` is over 1 MiB.",
                                     field=segment.name)
            value.extend(event)
        return segment, value
    # the end of the current part
    if segment.name == file_field:
        upload.archive = Path(name)
    else:
        try:
            upload.fields[segment.name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestInvalid(f"The field `{segment.name}` is not UTF-8.",
                                 field=segment.name) from None
    return None, bytearray()
