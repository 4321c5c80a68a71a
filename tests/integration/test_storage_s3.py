"""earshot.storage against a real S3 endpoint (moto_server over HTTP)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from earshot import storage
from earshot.config import get_settings
from earshot.errors import StorageError

MiB = 1024 * 1024


def test_s3_client_uses_the_configured_endpoint(s3_bucket: str, moto_server: str) -> None:
    assert get_settings().s3_endpoint_url == moto_server
    assert storage.s3_client(get_settings()).meta.endpoint_url == moto_server


def test_round_trip_and_content_type(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/out/result.json"
    assert storage.put_bytes(uri, b'{"a": 1}', settings=get_settings()) == uri
    assert storage.read_bytes(uri, settings=get_settings()) == b'{"a": 1}'
    assert storage.head(uri, settings=get_settings()).content_type == "application/json"  # guessed from the key
    storage.put_bytes(f"s3://{s3_bucket}/x", b"x", content_type="text/vtt", settings=get_settings())
    assert storage.head(f"s3://{s3_bucket}/x", settings=get_settings()).content_type == "text/vtt"


def test_streaming_read_in_chunks(s3_bucket: str, tmp_path: Path) -> None:
    payload = os.urandom(5 * MiB + 123)
    uri = f"s3://{s3_bucket}/audio/long.flac"
    storage.put_bytes(uri, payload, settings=get_settings())
    digest = hashlib.sha256()
    chunks = 0
    with storage.open_read(uri, settings=get_settings()) as stream:
        while chunk := stream.read(256 * 1024):
            assert len(chunk) <= 256 * 1024
            digest.update(chunk)
            chunks += 1
    assert chunks == 21
    assert digest.digest() == hashlib.sha256(payload).digest()

    target = tmp_path / "dl" / "long.flac"
    assert storage.download_to(uri, target, chunk_size=MiB, settings=get_settings()) == len(payload)
    assert target.read_bytes() == payload
    with pytest.raises(StorageError) as info:
        storage.read_bytes(uri, max_bytes=MiB, settings=get_settings())
    assert info.value.code == "too_large"


def test_multipart_upload_of_big_file(s3_bucket: str, tmp_path: Path) -> None:
    source = tmp_path / "big.wav"
    payload = os.urandom(11 * MiB)
    source.write_bytes(payload)
    uri = f"s3://{s3_bucket}/uploads/big.wav"
    storage.put_file(uri, source, settings=get_settings())
    info = storage.head(uri, settings=get_settings())
    assert info.size == len(payload)
    # A multipart ETag is "<md5 of part md5s>-<part count>": two 8 MiB parts here.
    assert info.etag is not None and info.etag.endswith("-2")
    assert info.content_type == "audio/x-wav"
    back = tmp_path / "back.wav"
    storage.download_to(uri, back, settings=get_settings())
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(payload).digest()


def _count_calls(operation: str) -> list[int]:
    calls: list[int] = []

    def hook(**_: Any) -> None:
        calls.append(1)

    storage.s3_client(get_settings()).meta.events.register(f"before-call.s3.{operation}", hook)
    return calls


def test_list_paginates(s3_bucket: str) -> None:
    keys = [f"in/{i:03d}.wav" for i in range(23)] + ["in/sub/x.wav", "inbox.txt", "other/y"]
    for key in keys:
        storage.put_bytes(f"s3://{s3_bucket}/{key}", key.encode(), settings=get_settings())
    calls = _count_calls("ListObjectsV2")
    listed = list(storage.list_objects(f"s3://{s3_bucket}/in/", page_size=5, settings=get_settings()))
    assert len(calls) == 5  # 24 keys in pages of 5
    assert [i.uri for i in listed] == [f"s3://{s3_bucket}/{k}" for k in sorted(keys[:24])]
    assert all(i.size == len(storage.parse_uri(i.uri).key) for i in listed)
    assert all(i.etag and i.last_modified for i in listed)

    shallow = list(storage.list_objects(f"s3://{s3_bucket}/in/", recursive=False, page_size=7, settings=get_settings()))
    assert len(shallow) == 23
    # S3 prefixes are string prefixes: "in" also matches "inbox.txt".
    assert len(list(storage.list_objects(f"s3://{s3_bucket}/in", settings=get_settings()))) == 25
    assert list(storage.list_objects(f"s3://{s3_bucket}/nothing/", settings=get_settings())) == []


def test_head_reports_size_and_md5_etag_and_a_key_prefix_is_not_an_object(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/a.txt"
    assert not storage.exists(uri, settings=get_settings())
    storage.put_bytes(uri, b"hello", settings=get_settings())
    assert storage.exists(uri, settings=get_settings())
    info = storage.head(uri, settings=get_settings())
    assert info.size == 5
    assert info.etag == hashlib.md5(b"hello").hexdigest()
    assert info.version_id is None
    assert info.last_modified is not None
    assert not storage.exists(f"s3://{s3_bucket}/a", settings=get_settings())  # a prefix of a key is not an object


def test_each_put_to_a_versioned_bucket_gets_a_new_version_id(s3_bucket: str) -> None:
    storage.s3_client(get_settings()).put_bucket_versioning(
        Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    uri = f"s3://{s3_bucket}/v.txt"
    storage.put_bytes(uri, b"one", settings=get_settings())
    first = storage.head(uri, settings=get_settings()).version_id
    storage.put_bytes(uri, b"two!", settings=get_settings())
    second = storage.head(uri, settings=get_settings())
    assert first and second.version_id and first != second.version_id
    assert second.size == 4


def test_a_pinned_read_gets_its_version_or_refuses(s3_bucket: str, tmp_path: Path) -> None:
    """VersionId on a versioned bucket, If-Match on the ETag otherwise; "null" is no version."""
    uri = f"s3://{s3_bucket}/p.wav"
    storage.put_bytes(uri, b"first", settings=get_settings())
    plain = storage.head(uri, settings=get_settings())
    assert plain.version_id is None and plain.version == plain.etag  # unversioned: the etag
    storage.put_bytes(uri, b"second", settings=get_settings())
    with pytest.raises(StorageError) as err:
        storage.download_to(uri, tmp_path / "x", version=plain, settings=get_settings())
    assert err.value.code == "version_mismatch" and not err.value.retryable
    storage.s3_client(get_settings()).put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    # written while versioning was off: S3 says "null", Earshot says no version id
    assert storage.head(uri, settings=get_settings()).version_id is None
    storage.put_bytes(uri, b"third", settings=get_settings())
    third = storage.head(uri, settings=get_settings())
    storage.put_bytes(uri, b"fourth!", settings=get_settings())
    assert third.version_id and third.version == third.version_id
    assert storage.download_to(uri, tmp_path / "v3", version=third, settings=get_settings()) == len(b"third")
    assert (tmp_path / "v3").read_bytes() == b"third"  # the pinned version, not the newest
    gone = storage.ObjectInfo(uri=uri, size=5, etag=third.etag, version_id="no-such-version")
    with pytest.raises(storage.NotFound):
        storage.download_to(uri, tmp_path / "v0", version=gone, settings=get_settings())


def test_presign_serves_bytes(s3_bucket: str) -> None:
    payload = os.urandom(70_000)
    uri = f"s3://{s3_bucket}/share/Ünïcødé file #1.wav"
    storage.put_bytes(uri, payload, settings=get_settings())
    url = storage.presign(uri, expires_s=60, settings=get_settings())
    assert "X-Amz-Signature" in url
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == payload


def test_missing_object_or_bucket_is_not_found_and_writes_nothing(s3_bucket: str, tmp_path: Path) -> None:
    missing = f"s3://{s3_bucket}/nope.wav"
    calls: list[Callable[[], object]] = [
        lambda: storage.read_bytes(missing, settings=get_settings()),
        lambda: storage.head(missing, settings=get_settings()),
        lambda: storage.download_to(missing, tmp_path / "dl", settings=get_settings()),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="no such object") as info:
            call()
        assert info.value.code == "not_found"
    assert not (tmp_path / "dl").exists()

    source = tmp_path / "f"
    source.write_bytes(b"x")
    gone = "s3://earshot-no-such-bucket/k"
    calls = [
        lambda: storage.read_bytes(gone, settings=get_settings()),
        lambda: storage.head(gone, settings=get_settings()),
        lambda: list(storage.list_objects(gone, settings=get_settings())),
        lambda: storage.put_bytes(gone, b"x", settings=get_settings()),
        lambda: storage.put_file(gone, source, settings=get_settings()),
    ]
    for call in calls:
        with pytest.raises(
            StorageError, match="bucket 'earshot-no-such-bucket' does not exist"
        ) as info:
            call()
        assert info.value.code == "not_found"
    assert not storage.exists(gone, settings=get_settings())


def test_keys_with_spaces_and_unicode(s3_bucket: str, tmp_path: Path) -> None:
    keys = ["my folder/interview 1.mp3", "日本語/音声ファイル.wav", "a+b=c&d%20e?.ogg"]
    for key in keys:
        storage.put_bytes(f"s3://{s3_bucket}/{key}", key.encode(), settings=get_settings())
    listed = {storage.parse_uri(i.uri).key for i in storage.list_objects(f"s3://{s3_bucket}/", settings=get_settings())}
    assert listed == set(keys)
    for key in keys:
        uri = storage.join_uri(f"s3://{s3_bucket}", key)
        assert storage.exists(uri, settings=get_settings())
        assert storage.read_bytes(uri, settings=get_settings()) == key.encode()
    source = tmp_path / "x"
    source.write_bytes(b"file")
    storage.put_file(f"s3://{s3_bucket}/up load/ü.bin", source, settings=get_settings())
    assert storage.read_bytes(f"s3://{s3_bucket}/up load/ü.bin", settings=get_settings()) == b"file"


def test_delete_is_idempotent_and_delete_prefix_counts_what_it_removed(s3_bucket: str) -> None:
    for i in range(12):
        storage.put_bytes(f"s3://{s3_bucket}/scratch/job1/{i}.flac", b"x", settings=get_settings())
    storage.put_bytes(f"s3://{s3_bucket}/keep.txt", b"x", settings=get_settings())
    storage.delete(f"s3://{s3_bucket}/scratch/job1/0.flac", settings=get_settings())
    storage.delete(f"s3://{s3_bucket}/scratch/job1/0.flac", settings=get_settings())  # idempotent
    assert storage.delete_prefix(f"s3://{s3_bucket}/scratch/", settings=get_settings()) == 11
    assert [i.uri for i in storage.list_objects(f"s3://{s3_bucket}/", settings=get_settings())] == [
        f"s3://{s3_bucket}/keep.txt"
    ]
