"""One object-store interface over ``s3://`` (AWS, MinIO, moto) and ``file://``.

Every function takes a URI string and, for ``s3://``, the caller's ``settings=`` (the endpoint
and region; credentials come from boto3's chain). Local files need no settings; an S3 URI
without them is a ConfigError, never a silent fall back to the process's settings. Accepted forms:

- ``s3://bucket/key`` -- the key is taken literally (no percent-decoding), as the AWS CLI does;
- ``file:///abs/path`` -- percent-decoded, as produced by ``Path.as_uri()``;
- a plain local path (relative paths are made absolute against the working directory).

Prefix semantics follow S3 everywhere: a prefix is a string prefix of the key (or absolute
path), so ``list_objects("file:///data/a")`` matches ``/data/a/x`` and ``/data/ab``.

Each scheme is one backend class behind the same small interface (:class:`FileBackend`,
:class:`S3Backend`, like httpx's transports); the module functions parse the URI and call
the backend. Low-level errors are mapped to :class:`earshot.errors.StorageError` in one
place per backend: ``code`` ``"not_found"`` (no such object, version or bucket -- see
:class:`NotFound`), ``"version_mismatch"`` (a pinned read found another version),
``"too_large"`` (``read_bytes`` limit) or ``"storage_error"``; ``retryable`` is set when the
failure looks transient (network, throttling, 5xx).

:class:`ObjectInfo` is Earshot's one description of an object version (the API, the CLI, the
ingest bridge and the reconciler all use it); its :attr:`ObjectInfo.version` is the rule
"version id, else etag" and S3's ``"null"`` version id is normalised to None here.
"""

from __future__ import annotations

import io
import mimetypes
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol
from urllib.parse import unquote, urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from earshot.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

    from earshot.config import Settings

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AccessDenied",
    "Backend",
    "FileBackend",
    "NotFound",
    "ObjectInfo",
    "ObjectRef",
    "S3Backend",
    "clear_client_cache",
    "delete",
    "delete_prefix",
    "download_to",
    "exists",
    "head",
    "join_uri",
    "list_objects",
    "mirror_prefix",
    "normalise_version_id",
    "open_read",
    "parse_uri",
    "presign",
    "put_bytes",
    "put_file",
    "read_bytes",
    "s3_client",
]

Scheme = Literal["s3", "file"]

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
# Multipart kicks in above this size; 8 MiB parts keep a 4 GiB upload well under S3's
# 10 000-part limit.
_TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=8 * 1024 * 1024,
    multipart_chunksize=8 * 1024 * 1024,
    max_concurrency=4,
)
# Temp files of atomic file:// writes carry this suffix so listings can hide them.
_TMP_SUFFIX = ".earshot-tmp"


def _read_umask() -> int:
    # There is no read-only umask call; set-and-restore once at import, before worker threads.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; results must get the mode a plain open() would give them.
_FILE_MODE = 0o666 & ~_read_umask()
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchVersion"})
_DENIED_CODES = ("403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch")
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
    }
)


# --------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class ObjectRef:
    """A parsed location. For ``file`` the bucket is None and the key is an absolute path."""

    scheme: Scheme
    bucket: str | None
    key: str

    @property
    def uri(self) -> str:
        """Canonical URI; ``parse_uri(ref.uri) == ref``."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.key}"
        uri = Path(self.key).as_uri()
        # as_uri() drops the trailing slash that marks a directory prefix.
        return uri + "/" if self.key.endswith("/") and not uri.endswith("/") else uri

    @property
    def path(self) -> Path:
        if self.scheme != "file":
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.key)

    def __str__(self) -> str:
        return self.uri


def parse_uri(uri: str | os.PathLike[str]) -> ObjectRef:
    """Parse ``s3://bucket/key``, ``file:///abs/path`` or a plain local path."""
    text = os.fspath(uri)
    if not text:
        raise ValueError("empty storage URI")
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{text!r}: s3 URI has no bucket")
        return ObjectRef("s3", bucket, key)
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text!r}: file URIs on remote hosts are not supported")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: file URI must hold an absolute path")
        return ObjectRef("file", None, _abs_path(path))
    if "://" in text:
        raise ValueError(f"{text!r}: unsupported scheme (use s3://, file:// or a local path)")
    return ObjectRef("file", None, _abs_path(text))


def _abs_path(path: str) -> str:
    absolute = os.path.abspath(path)
    # Keep the trailing slash: it is what makes "dir/" a prefix of its children only.
    if path.endswith("/") and absolute != "/":
        absolute += "/"
    return absolute


def join_uri(base: str, *parts: str) -> str:
    """Append path parts to a URI with single slashes; returns the canonical URI.

    ``..`` and ``.`` segments are refused: parts often come from user-supplied file names and
    must not climb out of the base prefix (on S3 they would silently become literal keys).
    """
    ref = parse_uri(base)
    segments: list[str] = []
    for part in parts:
        for segment in part.split("/"):
            if segment in (".", ".."):
                raise ValueError(f"refusing path segment {segment!r} in {part!r}")
            if segment:
                segments.append(segment)
    key = ref.key.rstrip("/")
    if segments:
        key = "/".join([key, *segments]) if key else "/".join(segments)
    elif ref.key.endswith("/"):
        key += "/"
    if ref.scheme == "file" and not key:
        key = "/"
    return ObjectRef(ref.scheme, ref.bucket, key).uri


def normalise_version_id(version_id: object) -> str | None:
    """S3 reports ``"null"`` for objects written while versioning was off: no version id."""
    if version_id in (None, "", "null"):
        return None
    return str(version_id)


@dataclass(frozen=True)
class ObjectInfo:
    """One version of one object: what a job is created for and what a worker must read.

    ``etag`` is S3's ETag without quotes; for local files it is a cheap ``mtime-size`` tag,
    not a content hash. ``version_id`` is only set for versioned S3 buckets (and not by
    ``list_objects``). ``content_type`` is only known from ``head`` on S3.
    """

    uri: str
    size: int | None
    etag: str | None
    version_id: str | None
    last_modified: datetime | None = None
    content_type: str | None = None

    @property
    def version(self) -> str:
        """What makes an upload distinct: the version id, else the etag, else ""."""
        return self.version_id or self.etag or ""

    @property
    def ref(self) -> ObjectRef:
        return parse_uri(self.uri)


class NotFound(StorageError):
    """No such object, version or bucket; ``bucket_missing`` tells the last one apart."""

    code = "not_found"

    def __init__(self, message: str, *, bucket_missing: bool = False) -> None:
        super().__init__(message)
        self.bucket_missing = bucket_missing


class AccessDenied(StorageError):
    code = "storage_error"


# --------------------------------------------------------------------------- S3 client


@lru_cache(maxsize=8)
def _client_for(endpoint_url: str | None, region: str) -> S3Client:
    config = Config(
        region_name=region,
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        signature_version="s3v4",
        # MinIO and moto serve one host name: virtual-host style would put the bucket in DNS.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    # A private session per client: boto3's default session is not thread-safe to create
    # clients from, and workers run threads.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def s3_client(settings: Settings) -> S3Client:
    """The cached S3 client for the caller's settings (endpoint and region).

    Credentials come from boto3's standard chain (AWS_* env vars, profiles, IRSA, ...).
    """
    return _client_for(settings.s3_endpoint_url or None, settings.s3_region)


def clear_client_cache() -> None:
    """Forget cached clients, e.g. after credentials in the environment changed."""
    _client_for.cache_clear()


def _s3_error(exc: Exception, ref: ObjectRef, action: str) -> StorageError:
    """The one mapping of boto3/botocore errors to Earshot's."""
    where = ref.uri
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = error.get("Message") or code or "unknown error"
        if code == "NoSuchBucket":
            return NotFound(
                f"cannot {action} {where}: bucket {ref.bucket!r} does not exist", bucket_missing=True
            )
        if code in _NOT_FOUND_CODES:
            what = "no such version" if code == "NoSuchVersion" else "no such object"
            return NotFound(f"cannot {action} {where}: {what}")
        if code in ("412", "PreconditionFailed"):
            return StorageError(
                f"cannot {action} {where}: the object changed (ETag no longer matches)",
                code="version_mismatch",
            )
        if code in _DENIED_CODES:
            return AccessDenied(f"cannot {action} {where}: access denied ({detail})")
        err = StorageError(f"cannot {action} {where}: {code or status}: {detail}")
        err.retryable = code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500)
        return err
    if isinstance(exc, S3UploadFailedError):
        # upload_file flattens the ClientError into a message string.
        text = str(exc)
        if "NoSuchBucket" in text:
            return NotFound(
                f"cannot {action} {where}: bucket {ref.bucket!r} does not exist", bucket_missing=True
            )
        err = StorageError(f"cannot {action} {where}: {text}")
        # connection failures arrive here too; only a refusal is final
        err.retryable = not any(c in text for c in _DENIED_CODES)
        return err
    err = StorageError(f"cannot {action} {where}: {exc}")
    err.retryable = isinstance(
        exc,
        EndpointConnectionError
        | BotoConnectionError
        | ReadTimeoutError
        | IncompleteReadError
        | ResponseStreamingError,
    )
    return err


_S3_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError)


def _file_error(exc: OSError, ref: ObjectRef, action: str) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"cannot {action} {ref.uri}: no such file")
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"cannot {action} {ref.uri}: is a directory")
    if isinstance(exc, PermissionError):
        return StorageError(f"cannot {action} {ref.uri}: permission denied")
    return StorageError(f"cannot {action} {ref.uri}: {exc.strerror or exc}")


# --------------------------------------------------------------------------- shared helpers


class _BodyReader(io.RawIOBase):
    """Raw stream over a botocore StreamingBody, so BufferedReader can make it a BinaryIO.

    Errors in the middle of the body become StorageError instead of botocore/urllib3 types.
    """

    def __init__(self, body: StreamingBody, ref: ObjectRef) -> None:
        super().__init__()
        self._body = body
        self._ref = ref

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, OSError) as exc:
            raise _s3_error(exc, self._ref, "read") from exc
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _copy(src: BinaryIO, dst: BinaryIO, chunk_size: int) -> int:
    total = 0
    while chunk := src.read(chunk_size):
        dst.write(chunk)
        total += len(chunk)
    return total


def _atomic_write(target: Path, write: Callable[[BinaryIO], int]) -> int:
    """Write through a temp file in the target's directory and rename it into place,
    so readers never see a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), _FILE_MODE)
            written: int = write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written


def _content_type(key: str, content_type: str | None) -> str:
    if content_type:
        return content_type
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """What one scheme must do. ``version_id``/``if_match`` pin a read to one version."""

    def open_read(self, ref: ObjectRef, *, version_id: str | None, if_match: str | None) -> BinaryIO: ...
    def put_bytes(self, ref: ObjectRef, data: bytes, content_type: str | None) -> None: ...
    def put_file(self, ref: ObjectRef, source: Path, content_type: str | None) -> None: ...
    def head(self, ref: ObjectRef, *, version_id: str | None = None) -> ObjectInfo: ...
    def exists(self, ref: ObjectRef) -> bool: ...
    def list(self, ref: ObjectRef, recursive: bool, page_size: int) -> Iterator[ObjectInfo]: ...
    def delete(self, ref: ObjectRef) -> None: ...
    def delete_prefix(self, ref: ObjectRef) -> int: ...
    def presign(self, ref: ObjectRef, expires_s: int) -> str: ...


class FileBackend:
    """``file://`` paths. Writes are atomic (temp file + rename)."""

    def open_read(self, ref: ObjectRef, *, version_id: str | None, if_match: str | None) -> BinaryIO:
        try:
            stream = open(ref.key, "rb")
        except OSError as exc:
            raise _file_error(exc, ref, "read") from exc
        if if_match is not None:
            current = _file_info(ref.path, os.fstat(stream.fileno())).etag
            if current != if_match:
                stream.close()
                raise StorageError(
                    f"cannot read {ref.uri}: the file changed (tag {current}, expected {if_match})",
                    code="version_mismatch",
                )
        return stream

    def put_bytes(self, ref: ObjectRef, data: bytes, content_type: str | None) -> None:
        self._check_target(ref)
        try:
            _atomic_write(ref.path, lambda out: out.write(data))
        except OSError as exc:
            raise _file_error(exc, ref, "write") from exc

    def put_file(self, ref: ObjectRef, source: Path, content_type: str | None) -> None:
        self._check_target(ref)
        try:
            with open(source, "rb") as src:
                _atomic_write(ref.path, lambda out: _copy(src, out, DEFAULT_CHUNK_SIZE))
        except OSError as exc:
            raise _file_error(exc, ref, "write") from exc

    @staticmethod
    def _check_target(ref: ObjectRef) -> None:
        if ref.key.endswith("/"):
            raise StorageError(f"cannot write {ref.uri}: URI names a directory")

    def head(self, ref: ObjectRef, *, version_id: str | None = None) -> ObjectInfo:
        try:
            st = ref.path.stat()
        except OSError as exc:
            raise _file_error(exc, ref, "stat") from exc
        if not ref.path.is_file():
            raise StorageError(f"cannot stat {ref.uri}: not a regular file")
        return _file_info(ref.path, st)

    def exists(self, ref: ObjectRef) -> bool:
        return ref.path.is_file()

    def list(self, ref: ObjectRef, recursive: bool, page_size: int) -> Iterator[ObjectInfo]:
        return _list_files(ref.key, recursive)

    def delete(self, ref: ObjectRef) -> None:
        try:
            ref.path.unlink(missing_ok=True)
        except OSError as exc:
            raise _file_error(exc, ref, "delete") from exc

    def delete_prefix(self, ref: ObjectRef) -> int:
        count = 0
        dirs: set[str] = set()
        for info in list(_list_files(ref.key, recursive=True)):
            path = parse_uri(info.uri).path
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise _file_error(exc, ref, "delete") from exc
            count += 1
            dirs.add(str(path.parent))
        # Drop directories the delete emptied, deepest first; the listing root itself stays
        # (it may be a mount point or configured output directory).
        root = (ref.key if ref.key.endswith("/") else os.path.dirname(ref.key)).rstrip("/")
        for directory in sorted(dirs, key=len, reverse=True):
            current = directory
            while len(current) > len(root) and current.startswith(root + "/"):
                try:
                    os.rmdir(current)
                except OSError:
                    break  # not empty (or already gone): its parents are not empty either
                current = os.path.dirname(current)
        return count

    def presign(self, ref: ObjectRef, expires_s: int) -> str:
        return ref.uri


def _file_info(path: Path, st: os.stat_result | None = None) -> ObjectInfo:
    st = st or path.stat()
    return ObjectInfo(
        uri=ObjectRef("file", None, str(path)).uri,
        size=st.st_size,
        etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
        version_id=None,
        last_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
    )


def _list_files(prefix: str, recursive: bool) -> Iterator[ObjectInfo]:
    root = prefix if prefix.endswith("/") else os.path.dirname(prefix)
    if not os.path.isdir(root):
        return
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorting in place also steers os.walk, giving a stable, roughly key-ordered listing.
        dirnames.sort()
        if not recursive:
            dirnames.clear()
        for name in sorted(filenames):
            if name.endswith(_TMP_SUFFIX):
                continue
            full = os.path.join(dirpath, name)
            if not full.startswith(prefix):
                continue
            if not recursive and "/" in full[len(prefix) :]:
                continue
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue  # deleted while we walked
            yield _file_info(Path(full), st)


class S3Backend:
    """``s3://`` on AWS, MinIO or moto, through one boto3 client."""

    def __init__(self, client: S3Client) -> None:
        self.client = client

    def open_read(self, ref: ObjectRef, *, version_id: str | None, if_match: str | None) -> BinaryIO:
        kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
        if version_id:
            kwargs["VersionId"] = version_id
        elif if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            response = self.client.get_object(**kwargs)
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ref, "read") from exc
        return io.BufferedReader(_BodyReader(response["Body"], ref), buffer_size=1024 * 1024)

    def put_bytes(self, ref: ObjectRef, data: bytes, content_type: str | None) -> None:
        try:
            self.client.put_object(
                Bucket=ref.bucket or "", Key=ref.key, Body=data,
                ContentType=_content_type(ref.key, content_type),
            )
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ref, "write") from exc

    def put_file(self, ref: ObjectRef, source: Path, content_type: str | None) -> None:
        try:
            self.client.upload_file(
                str(source), ref.bucket or "", ref.key,
                ExtraArgs={"ContentType": _content_type(ref.key, content_type)},
                Config=_TRANSFER_CONFIG,
            )
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ref, "write") from exc

    def head(self, ref: ObjectRef, *, version_id: str | None = None) -> ObjectInfo:
        kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            response = self.client.head_object(**kwargs)
        except ClientError as exc:
            error = _s3_error(exc, ref, "stat")
            if isinstance(error, NotFound) and not self._bucket_exists(ref.bucket or ""):
                # HEAD responses have no body, so S3 cannot say which of the two is missing.
                error = NotFound(
                    f"cannot stat {ref.uri}: bucket {ref.bucket!r} does not exist", bucket_missing=True
                )
            raise error from exc
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ref, "stat") from exc
        return ObjectInfo(
            uri=ref.uri,
            size=response["ContentLength"],
            etag=_strip_etag(response.get("ETag")),
            version_id=normalise_version_id(response.get("VersionId")),
            last_modified=response.get("LastModified"),
            content_type=response.get("ContentType"),
        )

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if isinstance(_s3_error(exc, ObjectRef("s3", bucket, ""), "stat"), NotFound):
                return False
            raise _s3_error(exc, ObjectRef("s3", bucket, ""), "stat") from exc
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ObjectRef("s3", bucket, ""), "stat") from exc
        return True

    def exists(self, ref: ObjectRef) -> bool:
        try:
            self.head(ref)
        except NotFound:
            return False
        return True

    def list(self, ref: ObjectRef, recursive: bool, page_size: int) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Prefix": ref.key}
        if not recursive:
            kwargs["Delimiter"] = "/"
        pages = paginator.paginate(**kwargs, PaginationConfig={"PageSize": page_size})
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        uri=f"s3://{ref.bucket}/{item['Key']}",
                        size=item["Size"],
                        etag=_strip_etag(item.get("ETag")),
                        version_id=None,
                        last_modified=item.get("LastModified"),
                    )
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ref, "list") from exc

    def delete(self, ref: ObjectRef) -> None:
        try:
            self.client.delete_object(Bucket=ref.bucket or "", Key=ref.key)
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ref, "delete") from exc

    def delete_prefix(self, ref: ObjectRef) -> int:
        count = 0
        batch: list[str] = []

        def flush() -> None:
            nonlocal count
            try:
                response = self.client.delete_objects(
                    Bucket=ref.bucket or "",
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            except _S3_ERRORS as exc:
                raise _s3_error(exc, ref, "delete") from exc
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {len(errors)} objects under {ref.uri}, e.g. "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
                )
            count += len(batch)
            batch.clear()

        for info in self.list(ref, True, 1000):
            batch.append(parse_uri(info.uri).key)
            if len(batch) == 1000:  # DeleteObjects takes at most 1000 keys
                flush()
        if batch:
            flush()
        return count

    def presign(self, ref: ObjectRef, expires_s: int) -> str:
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": ref.bucket, "Key": ref.key}, ExpiresIn=expires_s
            )
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ref, "presign") from exc


_FILES = FileBackend()


def backend_for(ref: ObjectRef, settings: Settings | None = None) -> Backend:
    """Local files need nothing; S3 needs the caller's settings (its endpoint and region)."""
    if ref.scheme == "file":
        return _FILES
    if settings is None:
        raise ConfigError(
            f"{ref.uri}: S3 access needs the caller's settings (endpoint and region)",
            code="storage_needs_settings",
        )
    return S3Backend(s3_client(settings))


# --------------------------------------------------------------------------- module API


@contextmanager
def open_read(
    uri: str,
    *,
    buffer_size: int = 1024 * 1024,
    version: ObjectInfo | None = None,
    settings: Settings | None = None,
) -> Iterator[BinaryIO]:
    """Open an object for streaming reads; nothing is loaded whole into memory.

    ``version`` pins the read to that version (its version id, else If-Match on its etag):
    another version raises StorageError ``version_mismatch`` (or NotFound if it is gone).
    """
    ref = parse_uri(uri)
    version_id = version.version_id if version is not None else None
    if_match = version.etag if version is not None and not version_id else None
    stream = backend_for(ref, settings).open_read(ref, version_id=version_id, if_match=if_match)
    try:
        yield stream
    finally:
        stream.close()


def read_bytes(uri: str, max_bytes: int | None = None, *, settings: Settings | None = None) -> bytes:
    """Read a small object whole; beyond ``max_bytes`` raise StorageError(code="too_large")."""
    with open_read(uri, settings=settings) as stream:
        if max_bytes is None:
            return stream.read()
        # One byte more than allowed tells "exactly max" from "too big" without reading on.
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise StorageError(f"{uri} is larger than {max_bytes} bytes", code="too_large")
    return data


def download_to(
    uri: str,
    path: str | os.PathLike[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    version: ObjectInfo | None = None,
    settings: Settings | None = None,
) -> int:
    """Stream an object (``version``: exactly that version) into a local file, atomically."""
    target = Path(path)
    with open_read(uri, version=version, settings=settings) as stream:
        return _atomic_write(target, lambda out: _copy(stream, out, chunk_size))


def put_bytes(
    uri: str, data: bytes, content_type: str | None = None, *, settings: Settings | None = None
) -> str:
    """Store ``data`` at ``uri``; returns the canonical URI.

    Without ``content_type`` S3 objects get one guessed from the key's extension.
    """
    ref = parse_uri(uri)
    backend_for(ref, settings).put_bytes(ref, data, content_type)
    return ref.uri


def put_file(
    uri: str,
    path: str | os.PathLike[str],
    content_type: str | None = None,
    *,
    settings: Settings | None = None,
) -> str:
    """Upload a local file (multipart above 8 MiB on S3); returns the canonical URI."""
    ref = parse_uri(uri)
    source = Path(path)
    if not source.is_file():
        raise NotFound(f"cannot upload {source}: no such local file")
    backend_for(ref, settings).put_file(ref, source, content_type)
    return ref.uri


def exists(uri: str, *, settings: Settings | None = None) -> bool:
    """True if an object (not a prefix/directory) exists at ``uri``."""
    ref = parse_uri(uri)
    return backend_for(ref, settings).exists(ref)


def head(uri: str, *, version_id: str | None = None, settings: Settings | None = None) -> ObjectInfo:
    """The object's current version (or the given one); NotFound if it is not there."""
    ref = parse_uri(uri)
    return backend_for(ref, settings).head(ref, version_id=version_id)


def list_objects(
    prefix_uri: str, recursive: bool = True, *, page_size: int = 1000, settings: Settings | None = None
) -> Iterator[ObjectInfo]:
    """Objects whose key starts with the prefix, in key order, fetched page by page.

    ``recursive=False`` stops at the next ``/`` (sub-"directories" are not yielded).
    A missing S3 bucket raises StorageError(not_found); a missing local directory is empty.
    """
    ref = parse_uri(prefix_uri)
    yield from backend_for(ref, settings).list(ref, recursive, page_size)


def delete(uri: str, *, settings: Settings | None = None) -> None:
    """Delete one object; deleting a missing object is not an error (as on S3)."""
    ref = parse_uri(uri)
    backend_for(ref, settings).delete(ref)


def delete_prefix(prefix_uri: str, *, settings: Settings | None = None) -> int:
    """Delete every object under a prefix; returns how many were deleted.

    An empty S3 key or the file-system root is refused, so a bad setting cannot wipe a
    whole bucket or disk.
    """
    ref = parse_uri(prefix_uri)
    if (ref.scheme == "s3" and not ref.key) or (ref.scheme == "file" and ref.key == "/"):
        raise ValueError(f"refusing to delete everything under {ref.uri}")
    return backend_for(ref, settings).delete_prefix(ref)


def presign(uri: str, expires_s: int = 3600, *, settings: Settings | None = None) -> str:
    """A URL anyone can GET for ``expires_s`` seconds; for local files, the file URI."""
    ref = parse_uri(uri)
    return backend_for(ref, settings).presign(ref, expires_s)


def mirror_prefix(
    prefix_uri: str, cache_root: str | os.PathLike[str], *, settings: Settings | None = None
) -> tuple[Path, int]:
    """A local directory holding everything under ``prefix_uri``, and how many files it has.

    A local path is used in place (count 0, nothing copied). An S3 prefix is mirrored into
    ``cache_root/<bucket>/<prefix>``; files whose size already matches are not fetched again,
    so a restarted worker or training job starts quickly.
    """
    ref = parse_uri(prefix_uri)
    if ref.scheme == "file":
        return ref.path, 0
    prefix = ref.key.rstrip("/") + "/"
    target = Path(cache_root) / (ref.bucket or "") / prefix
    found = 0
    for info in list_objects(f"s3://{ref.bucket}/{prefix}", settings=settings):
        rel = parse_uri(info.uri).key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue
        found += 1
        local = target / rel
        if local.exists() and local.stat().st_size == info.size:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        download_to(info.uri, local, settings=settings)
    return target, found
