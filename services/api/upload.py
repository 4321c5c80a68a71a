"""Streamed multipart uploads with a hard size limit.

The body is parsed as it arrives (python-multipart), the file part goes to a temporary file
while its bytes are counted, and only a complete upload under the limit is copied to the object
store (``<output_url>/uploads/<tenant>/<uuid>/<filename>``; multipart upload on S3). A declared
Content-Length over the limit is refused before a byte is read; a chunked body is cut off as
soon as it passes the limit. Either way the answer is 413 and nothing is stored.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from earshot import storage
from services.api.problems import ApiProblem

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

    from earshot.config import Settings

# room for the multipart framing and the small text fields around the file
FORM_OVERHEAD_BYTES = 256 * 1024
MAX_FIELD_BYTES = 16 * 1024
MAX_FIELDS = 64
FILE_FIELD = "file"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MEDIA_TYPE = re.compile(rb"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}$")


def safe_filename(name: str | None) -> str:
    """A file name that is one harmless path segment ("upload" when nothing usable is left)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _SAFE.sub("_", base).strip("._")[:120]
    return base or "upload"


def too_large(limit: int) -> ApiProblem:
    return ApiProblem(413, f"the upload is larger than the limit of {limit} bytes", code="too_large")


@dataclass
class ReceivedUpload:
    path: Path
    filename: str
    size: int
    content_type: str | None
    fields: dict[str, list[str]] = field(default_factory=dict)
    sha256: str = ""  # of the file's bytes: part of an upload's Idempotency-Key fingerprint


class _Collector:
    def __init__(self, directory: Path, max_file_bytes: int) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, list[str]] = {}
        self.upload: ReceivedUpload | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._data = bytearray()
        self._out: BinaryIO | None = None
        self._field_count = 0
        self._digest = hashlib.sha256()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._data = bytearray()
        self._out = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        raw_name = options.get(b"name")
        if raw_name is None:
            raise ApiProblem(422, "a multipart part has no name", code="bad_multipart")
        self._name = raw_name.decode("utf-8", "replace")
        self._field_count += 1
        if self._field_count > MAX_FIELDS:
            raise ApiProblem(422, "too many form fields", code="bad_multipart")
        if b"filename" in options or self._name == FILE_FIELD:
            if self._name != FILE_FIELD or self.upload is not None:
                raise ApiProblem(422, f"send exactly one file, in the {FILE_FIELD!r} field", code="bad_multipart")
            filename = safe_filename(options.get(b"filename", b"").decode("utf-8", "replace"))
            ctype = self._headers.get(b"content-type")
            if ctype is not None and not _MEDIA_TYPE.match(ctype):
                ctype = None
            path = self.directory / "body"
            self.upload = ReceivedUpload(
                path=path, filename=filename, size=0,
                content_type=ctype.decode("latin-1") if ctype else None,
            )
            self._out = open(path, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._out is not None:
            assert self.upload is not None
            self.upload.size += len(chunk)
            if self.upload.size > self.max_file_bytes:
                raise too_large(self.max_file_bytes)
            self._out.write(chunk)
            self._digest.update(chunk)
        else:
            self._data.extend(chunk)
            if len(self._data) > MAX_FIELD_BYTES:
                raise ApiProblem(422, f"form field {self._name!r} is too long", code="bad_multipart")

    def on_part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        elif self._name is not None:
            try:
                value = self._data.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiProblem(422, f"form field {self._name!r} is not UTF-8", code="bad_multipart") from None
            self.fields.setdefault(self._name, []).append(value)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


async def receive_multipart(
    content_type: str, content_length: str | None, stream: AsyncIterator[bytes], *, max_bytes: int
) -> tuple[ReceivedUpload, Path]:
    """Parse the body into a temporary directory; the caller removes it (second value)."""
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiProblem(415, "expected multipart/form-data with a boundary", code="unsupported_media_type")
    body_limit = max_bytes + FORM_OVERHEAD_BYTES
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiProblem(400, "bad Content-Length", code="bad_request") from None
        if declared > body_limit:
            raise too_large(max_bytes)
    tmp = Path(tempfile.mkdtemp(prefix="earshot-upload-"))
    collector = _Collector(tmp, max_bytes)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        received = 0
        async for chunk in stream:
            received += len(chunk)
            if received > body_limit:
                raise too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        collector.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise ApiProblem(422, f"malformed multipart body: {exc}", code="bad_multipart") from None
    except BaseException:
        collector.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    collector.close()
    if collector.upload is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ApiProblem(422, f"the form has no {FILE_FIELD!r} file", code="bad_multipart")
    collector.upload.fields = collector.fields
    collector.upload.sha256 = collector._digest.hexdigest()
    return collector.upload, tmp


async def store_upload(upload: ReceivedUpload, settings: Settings, tenant_id: str) -> str:
    """Copy a received file to ``<settings.output_url>/uploads/<tenant>/<uuid>/<filename>``; returns its URI.

    The API wrote it, for this tenant, so it needs no allow-list entry.
    """
    target = storage.join_uri(settings.output_url, "uploads", tenant_id, str(uuid.uuid4()), upload.filename)
    return await run_in_threadpool(
        partial(storage.put_file, target, os.fspath(upload.path), upload.content_type, settings=settings)
    )
