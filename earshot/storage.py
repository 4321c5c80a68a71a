"""One object-store interface over ``s3://`` (AWS, MinIO, moto) and ``file://``.

Every function takes a URI string. Accepted forms:

- ``s3://bucket/key`` -- the key is taken literally (no percent-decoding), as the AWS CLI does;
- ``file:///abs/path`` -- percent-decoded, as produced by ``Path.as_uri()``;
- a plain local path (relative paths are made absolute against the working directory).

Prefix semantics follow S3 everywhere: a prefix is a string prefix of the key (or absolute
path), so ``list_objects("file:///data/a")`` matches ``/data/a/x`` and ``/data/ab``.

Errors are raised as :class:`earshot.errors.StorageError` with ``code`` ``"not_found"`` (no
such object or bucket), ``"too_large"`` (``read_bytes`` limit) or ``"storage_error"``;
``retryable`` is set when the failure looks transient (network, throttling, 5xx).
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
from typing import TYPE_CHECKING, Any, BinaryIO, Literal
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

from earshot.config import get_settings
from earshot.errors import StorageError

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ObjectInfo",
    "ObjectRef",
    "clear_client_cache",
    "delete",
    "delete_prefix",
    "download_to",
    "exists",
    "head",
    "join_uri",
    "list_objects",
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


@dataclass
class ObjectInfo:
    """Metadata of one object.

    ``etag`` is S3's ETag without quotes; for local files it is a cheap ``mtime-size`` tag,
    not a content hash. ``version_id`` is only set for versioned S3 buckets (and not by
    ``list_objects``). ``content_type`` is only known from ``head`` on S3.
    """

    uri: str
    size: int
    etag: str | None
    version_id: str | None
    last_modified: datetime | None
    content_type: str | None = None


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


def s3_client() -> S3Client:
    """The cached S3 client for the current Settings (endpoint and region).

    Credentials come from boto3's standard chain (AWS_* env vars, profiles, IRSA, ...).
    """
    settings = get_settings()
    return _client_for(settings.s3_endpoint_url or None, settings.s3_region)


def clear_client_cache() -> None:
    """Forget cached clients, e.g. after credentials in the environment changed."""
    _client_for.cache_clear()


def _s3_error(exc: Exception, ref: ObjectRef, action: str) -> StorageError:
    where = ref.uri
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = error.get("Message") or code or "unknown error"
        if code == "NoSuchBucket":
            return StorageError(
                f"cannot {action} {where}: bucket {ref.bucket!r} does not exist",
                code="not_found",
            )
        if code in _NOT_FOUND_CODES:
            return StorageError(f"cannot {action} {where}: no such object", code="not_found")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"cannot {action} {where}: access denied ({detail})")
        err = StorageError(f"cannot {action} {where}: {code or status}: {detail}")
        err.retryable = code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500)
        return err
    if isinstance(exc, S3UploadFailedError):
        # upload_file flattens the ClientError into a message string.
        text = str(exc)
        if "NoSuchBucket" in text:
            return StorageError(
                f"cannot {action} {where}: bucket {ref.bucket!r} does not exist",
                code="not_found",
            )
        return StorageError(f"cannot {action} {where}: {text}")
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
        return StorageError(f"cannot {action} {ref.uri}: no such file", code="not_found")
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"cannot {action} {ref.uri}: is a directory")
    if isinstance(exc, PermissionError):
        return StorageError(f"cannot {action} {ref.uri}: permission denied")
    return StorageError(f"cannot {action} {ref.uri}: {exc.strerror or exc}")


# --------------------------------------------------------------------------- reading


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


@contextmanager
def open_read(uri: str, *, buffer_size: int = 1024 * 1024) -> Iterator[BinaryIO]:
    """Open an object for streaming reads; nothing is loaded whole into memory."""
    ref = parse_uri(uri)
    stream: BinaryIO
    if ref.scheme == "file":
        try:
            stream = open(ref.key, "rb")
        except OSError as exc:
            raise _file_error(exc, ref, "read") from exc
    else:
        assert ref.bucket is not None
        try:
            response = s3_client().get_object(Bucket=ref.bucket, Key=ref.key)
        except _S3_ERRORS as exc:
            raise _s3_error(exc, ref, "read") from exc
        stream = io.BufferedReader(_BodyReader(response["Body"], ref), buffer_size=buffer_size)
    try:
        yield stream
    finally:
        stream.close()


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """Read a small object whole; beyond ``max_bytes`` raise StorageError(code="too_large")."""
    with open_read(uri) as stream:
        if max_bytes is None:
            return stream.read()
        # One byte more than allowed tells "exactly max" from "too big" without reading on.
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise StorageError(f"{uri} is larger than {max_bytes} bytes", code="too_large")
    return data


def download_to(
    uri: str, path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> int:
    """Stream an object into a local file (atomically); returns the number of bytes."""
    target = Path(path)
    with open_read(uri) as stream:
        return _atomic_write(target, lambda out: _copy(stream, out, chunk_size))


def _copy(src: BinaryIO, dst: BinaryIO, chunk_size: int) -> int:
    total = 0
    while chunk := src.read(chunk_size):
        dst.write(chunk)
        total += len(chunk)
    return total


# --------------------------------------------------------------------------- writing


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


def put_bytes(uri: str, data: bytes, content_type: str | None = None) -> str:
    """Store ``data`` at ``uri``; returns the canonical URI.

    Without ``content_type`` S3 objects get one guessed from the key's extension.
    """
    ref = parse_uri(uri)
    if ref.scheme == "file":
        _check_file_target(ref)
        try:
            _atomic_write(ref.path, lambda out: out.write(data))
        except OSError as exc:
            raise _file_error(exc, ref, "write") from exc
        return ref.uri
    assert ref.bucket is not None
    try:
        s3_client().put_object(
            Bucket=ref.bucket,
            Key=ref.key,
            Body=data,
            ContentType=_content_type(ref.key, content_type),
        )
    except _S3_ERRORS as exc:
        raise _s3_error(exc, ref, "write") from exc
    return ref.uri


def put_file(uri: str, path: str | os.PathLike[str], content_type: str | None = None) -> str:
    """Upload a local file (multipart above 8 MiB on S3); returns the canonical URI."""
    ref = parse_uri(uri)
    source = Path(path)
    if not source.is_file():
        raise StorageError(f"cannot upload {source}: no such local file", code="not_found")
    if ref.scheme == "file":
        _check_file_target(ref)
        try:
            with open(source, "rb") as src:
                _atomic_write(ref.path, lambda out: _copy(src, out, DEFAULT_CHUNK_SIZE))
        except OSError as exc:
            raise _file_error(exc, ref, "write") from exc
        return ref.uri
    assert ref.bucket is not None
    try:
        s3_client().upload_file(
            str(source),
            ref.bucket,
            ref.key,
            ExtraArgs={"ContentType": _content_type(ref.key, content_type)},
            Config=_TRANSFER_CONFIG,
        )
    except _S3_ERRORS as exc:
        raise _s3_error(exc, ref, "write") from exc
    return ref.uri


def _check_file_target(ref: ObjectRef) -> None:
    if ref.key.endswith("/"):
        raise StorageError(f"cannot write {ref.uri}: URI names a directory")


# --------------------------------------------------------------------------- metadata


def _file_info(path: Path, st: os.stat_result | None = None) -> ObjectInfo:
    st = st or path.stat()
    return ObjectInfo(
        uri=ObjectRef("file", None, str(path)).uri,
        size=st.st_size,
        etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
        version_id=None,
        last_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
    )


def exists(uri: str) -> bool:
    """True if an object (not a prefix/directory) exists at ``uri``."""
    ref = parse_uri(uri)
    if ref.scheme == "file":
        return ref.path.is_file()
    assert ref.bucket is not None
    try:
        s3_client().head_object(Bucket=ref.bucket, Key=ref.key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
            return False
        raise _s3_error(exc, ref, "check") from exc
    except _S3_ERRORS as exc:
        raise _s3_error(exc, ref, "check") from exc
    return True


def head(uri: str) -> ObjectInfo:
    ref = parse_uri(uri)
    if ref.scheme == "file":
        try:
            st = ref.path.stat()
        except OSError as exc:
            raise _file_error(exc, ref, "stat") from exc
        if not ref.path.is_file():
            raise StorageError(f"cannot stat {ref.uri}: not a regular file")
        return _file_info(ref.path, st)
    assert ref.bucket is not None
    client = s3_client()
    try:
        response = client.head_object(Bucket=ref.bucket, Key=ref.key)
    except ClientError as exc:
        error = _s3_error(exc, ref, "stat")
        if error.code == "not_found" and not _bucket_exists(client, ref.bucket):
            # HEAD responses have no body, so S3 cannot say which of the two is missing.
            error = StorageError(
                f"cannot stat {ref.uri}: bucket {ref.bucket!r} does not exist", code="not_found"
            )
        raise error from exc
    except _S3_ERRORS as exc:
        raise _s3_error(exc, ref, "stat") from exc
    return ObjectInfo(
        uri=ref.uri,
        size=response["ContentLength"],
        etag=_strip_etag(response.get("ETag")),
        version_id=response.get("VersionId"),
        last_modified=response.get("LastModified"),
        content_type=response.get("ContentType"),
    )


def _bucket_exists(client: S3Client, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
    except _S3_ERRORS:
        return False
    return True


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def list_objects(
    prefix_uri: str, recursive: bool = True, *, page_size: int = 1000
) -> Iterator[ObjectInfo]:
    """Objects whose key starts with the prefix, in key order, fetched page by page.

    ``recursive=False`` stops at the next ``/`` (sub-"directories" are not yielded).
    A missing S3 bucket raises StorageError(not_found); a missing local directory is empty.
    """
    ref = parse_uri(prefix_uri)
    if ref.scheme == "file":
        yield from _list_files(ref.key, recursive)
        return
    assert ref.bucket is not None
    paginator = s3_client().get_paginator("list_objects_v2")
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


# --------------------------------------------------------------------------- deleting


def delete(uri: str) -> None:
    """Delete one object; deleting a missing object is not an error (as on S3)."""
    ref = parse_uri(uri)
    if ref.scheme == "file":
        try:
            ref.path.unlink(missing_ok=True)
        except OSError as exc:
            raise _file_error(exc, ref, "delete") from exc
        return
    assert ref.bucket is not None
    try:
        s3_client().delete_object(Bucket=ref.bucket, Key=ref.key)
    except _S3_ERRORS as exc:
        raise _s3_error(exc, ref, "delete") from exc


def delete_prefix(prefix_uri: str) -> int:
    """Delete every object under a prefix; returns how many were deleted.

    An empty S3 key or the file-system root is refused, so a bad setting cannot wipe a
    whole bucket or disk.
    """
    ref = parse_uri(prefix_uri)
    if (ref.scheme == "s3" and not ref.key) or (ref.scheme == "file" and ref.key == "/"):
        raise ValueError(f"refusing to delete everything under {ref.uri}")
    if ref.scheme == "file":
        return _delete_files(ref)
    assert ref.bucket is not None
    client = s3_client()
    count = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal count
        try:
            response = client.delete_objects(
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

    for info in list_objects(ref.uri):
        batch.append(parse_uri(info.uri).key)
        if len(batch) == 1000:  # DeleteObjects takes at most 1000 keys
            flush()
    if batch:
        flush()
    return count


def _delete_files(ref: ObjectRef) -> int:
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


def mirror_prefix(prefix_uri: str, cache_root: str | os.PathLike[str]) -> tuple[Path, int]:
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
    for info in list_objects(f"s3://{ref.bucket}/{prefix}"):
        rel = parse_uri(info.uri).key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue
        found += 1
        local = target / rel
        if local.exists() and local.stat().st_size == info.size:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        download_to(info.uri, local)
    return target, found


def presign(uri: str, expires_s: int = 3600) -> str:
    """A URL anyone can GET for ``expires_s`` seconds; for local files, the file URI."""
    ref = parse_uri(uri)
    if ref.scheme == "file":
        return ref.uri
    try:
        return s3_client().generate_presigned_url(
            "get_object", Params={"Bucket": ref.bucket, "Key": ref.key}, ExpiresIn=expires_s
        )
    except _S3_ERRORS as exc:
        raise _s3_error(exc, ref, "presign") from exc
