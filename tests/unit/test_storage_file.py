"""earshot.storage over file:// and plain paths (no servers needed)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from earshot import storage
from earshot.errors import StorageError
from earshot.storage import ObjectRef, join_uri, parse_uri

# --------------------------------------------------------------------------- URIs


def test_parse_s3_uri_keeps_key_literal() -> None:
    ref = parse_uri("s3://bucket/a dir/ü%20x.wav")
    assert ref == ObjectRef("s3", "bucket", "a dir/ü%20x.wav")
    assert parse_uri(ref.uri) == ref
    assert parse_uri("s3://bucket") == ObjectRef("s3", "bucket", "")
    assert parse_uri("s3://bucket/pre/") == ObjectRef("s3", "bucket", "pre/")


def test_parse_file_uri_and_plain_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a dir" / "ü.wav"
    ref = parse_uri(path.as_uri())
    assert ref == ObjectRef("file", None, str(path))
    assert parse_uri(str(path)) == ref
    assert parse_uri(path) == ref
    assert parse_uri(ref.uri) == ref
    assert parse_uri(f"file://localhost{path}").key == str(path)
    monkeypatch.chdir(tmp_path)
    assert parse_uri("rel/x.txt").key == str(tmp_path / "rel" / "x.txt")
    # A trailing slash marks a directory prefix and must survive the round trip.
    prefix = parse_uri(f"{tmp_path}/out/")
    assert prefix.key == f"{tmp_path}/out/"
    assert parse_uri(prefix.uri) == prefix


@pytest.mark.parametrize(
    "bad", ["", "s3://", "s3:///key", "http://host/x", "file://otherhost/x", "file:rel"]
)
def test_parse_uri_rejects_malformed_uris(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_uri(bad)


def test_join_uri_joins_parts_and_refuses_dot_segments(tmp_path: Path) -> None:
    assert join_uri("s3://b", "x", "y.json") == "s3://b/x/y.json"
    assert join_uri("s3://b/out/", "/job 1/", "r.srt") == "s3://b/out/job 1/r.srt"
    assert join_uri("s3://b/out", "a/b") == "s3://b/out/a/b"
    assert join_uri("s3://b/out/") == "s3://b/out/"
    assert join_uri(str(tmp_path), "ü x.txt") == (tmp_path / "ü x.txt").as_uri()
    assert parse_uri(join_uri(tmp_path.as_uri(), "a", "b")).path == tmp_path / "a" / "b"
    for bad in ("..", "a/../b", "./x"):
        with pytest.raises(ValueError):
            join_uri("s3://b/out", bad)


# --------------------------------------------------------------------------- read/write


def test_round_trip_creates_parents(tmp_path: Path) -> None:
    uri = (tmp_path / "deep" / "er" / "x.bin").as_uri()
    assert storage.put_bytes(uri, b"hello") == uri
    assert storage.read_bytes(uri) == b"hello"
    assert storage.exists(uri)
    storage.put_bytes(uri, b"replaced!")
    assert storage.read_bytes(str(tmp_path / "deep/er/x.bin")) == b"replaced!"


def test_names_with_spaces_and_unicode_round_trip(tmp_path: Path) -> None:
    uri = join_uri(tmp_path.as_uri(), "dir with space", "Ünïcødé 音声 #1.txt")
    storage.put_bytes(uri, "π".encode())
    assert (tmp_path / "dir with space" / "Ünïcødé 音声 #1.txt").read_bytes() == "π".encode()
    [info] = storage.list_objects(tmp_path.as_uri() + "/")
    assert info.uri == uri
    assert storage.read_bytes(info.uri) == "π".encode()


def test_atomic_write_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out" / "result.json"
    storage.put_bytes(str(target), b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="No space left"):
        storage.put_bytes(str(target), b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_written_files_get_normal_permissions(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    storage.put_bytes(str(tmp_path / "stored"), b"x")
    assert (tmp_path / "stored").stat().st_mode == plain.stat().st_mode


def test_writes_are_invisible_until_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "big.bin"
    seen: list[bool] = []
    real_fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        seen.append(target.exists())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    storage.put_bytes(str(target), b"x" * 100_000)
    assert seen == [False]
    assert target.stat().st_size == 100_000


def test_put_file_and_download_to_stream(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    payload = os.urandom(300_000)
    source.write_bytes(payload)
    dest_uri = (tmp_path / "store" / "copy.bin").as_uri()
    storage.put_file(dest_uri, source)
    local = tmp_path / "dl" / "x.bin"
    assert storage.download_to(dest_uri, local, chunk_size=4096) == len(payload)
    assert local.read_bytes() == payload
    with pytest.raises(StorageError) as info:
        storage.put_file(dest_uri, tmp_path / "missing.bin")
    assert info.value.code == "not_found"


def test_open_read_streams_in_bounded_chunks_and_closes(tmp_path: Path) -> None:
    payload = os.urandom(50_000)
    storage.put_bytes(str(tmp_path / "x"), payload)
    digest = hashlib.sha256()
    with storage.open_read(str(tmp_path / "x")) as stream:
        while chunk := stream.read(1000):
            assert len(chunk) <= 1000
            digest.update(chunk)
    assert stream.closed
    assert digest.digest() == hashlib.sha256(payload).digest()


def test_read_bytes_past_its_limit_is_too_large(tmp_path: Path) -> None:
    uri = str(tmp_path / "x")
    storage.put_bytes(uri, b"12345")
    assert storage.read_bytes(uri, max_bytes=5) == b"12345"
    with pytest.raises(StorageError) as info:
        storage.read_bytes(uri, max_bytes=4)
    assert info.value.code == "too_large"


def test_missing_files_are_not_found_and_directories_are_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.wav")
    for call in (
        lambda: storage.read_bytes(missing),
        lambda: storage.head(missing),
        lambda: storage.download_to(missing, tmp_path / "dl"),
    ):
        with pytest.raises(StorageError, match=r"nope\.wav") as info:
            call()
        assert info.value.code == "not_found"
    assert not storage.exists(missing)
    assert not (tmp_path / "dl").exists()
    with pytest.raises(StorageError) as info:
        storage.read_bytes(str(tmp_path))
    assert info.value.code == "storage_error"
    assert not storage.exists(str(tmp_path))
    with pytest.raises(StorageError):
        storage.put_bytes(f"{tmp_path}/dir/", b"x")


# --------------------------------------------------------------------------- metadata/listing


def test_head_reports_size_and_a_new_etag_after_a_write(tmp_path: Path) -> None:
    uri = str(tmp_path / "x")
    storage.put_bytes(uri, b"abc")
    info = storage.head(uri)
    assert info.uri == (tmp_path / "x").as_uri()
    assert info.size == 3
    assert info.version_id is None
    assert info.last_modified is not None and info.last_modified.tzinfo is not None
    storage.put_bytes(uri, b"abcd")
    assert storage.head(uri).etag != info.etag


def _tree(root: Path) -> None:
    for rel in ("a/1.txt", "a/2.txt", "a/sub/3.txt", "ab/4.txt", "b.txt"):
        storage.put_bytes(str(root / rel), rel.encode())


def test_list_objects_prefix_semantics(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "a" / ".x.earshot-tmp").write_bytes(b"half")  # an in-flight write

    def names(prefix: str, recursive: bool = True) -> list[str]:
        infos = storage.list_objects(prefix, recursive)
        return sorted(parse_uri(i.uri).path.relative_to(tmp_path).as_posix() for i in infos)

    assert names(f"{tmp_path}/a/") == ["a/1.txt", "a/2.txt", "a/sub/3.txt"]
    assert names(f"{tmp_path}/a") == ["a/1.txt", "a/2.txt", "a/sub/3.txt", "ab/4.txt"]
    assert names(f"{tmp_path}/a/", recursive=False) == ["a/1.txt", "a/2.txt"]
    assert names(tmp_path.as_uri() + "/", recursive=False) == ["b.txt"]
    assert names(f"{tmp_path}/a/sub/3") == ["a/sub/3.txt"]
    assert names(f"{tmp_path}/missing/") == []
    sizes = {i.size for i in storage.list_objects(f"{tmp_path}/a/")}
    assert sizes == {7, 11}


def test_delete_is_idempotent_and_delete_prefix_empties_but_keeps_the_root(tmp_path: Path) -> None:
    _tree(tmp_path)
    storage.delete(str(tmp_path / "b.txt"))
    storage.delete(str(tmp_path / "b.txt"))  # missing is fine, as on S3
    assert not (tmp_path / "b.txt").exists()
    assert storage.delete_prefix(f"{tmp_path}/a/") == 3
    assert (tmp_path / "a").is_dir()  # the prefix directory itself stays
    assert list((tmp_path / "a").iterdir()) == []  # emptied sub-directories go
    assert storage.delete_prefix(f"{tmp_path}/a") == 1  # string prefix: catches ab/
    assert not (tmp_path / "ab").exists()
    with pytest.raises(ValueError):
        storage.delete_prefix("file:///")
    with pytest.raises(ValueError):
        storage.delete_prefix("s3://bucket")


def test_presign_file_returns_uri(tmp_path: Path) -> None:
    path = tmp_path / "a b.wav"
    storage.put_bytes(str(path), b"x")
    assert storage.presign(str(path)) == path.as_uri()


# --------------------------------------------------------------------------- S3 error mapping


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "msg"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


def test_s3_errors_map_to_codes_and_retryability() -> None:
    ref = parse_uri("s3://bkt/k")
    err = storage._s3_error(_client_error("NoSuchBucket", 404), ref, "read")
    assert (err.code, err.retryable) == ("not_found", False)
    assert "bucket 'bkt' does not exist" in err.message
    assert storage._s3_error(_client_error("NoSuchKey", 404), ref, "read").code == "not_found"
    denied = storage._s3_error(_client_error("AccessDenied", 403), ref, "read")
    assert denied.code == "storage_error" and "access denied" in denied.message
    assert storage._s3_error(_client_error("SlowDown", 503), ref, "read").retryable
    down = storage._s3_error(EndpointConnectionError(endpoint_url="http://x"), ref, "read")
    assert down.code == "storage_error" and down.retryable
