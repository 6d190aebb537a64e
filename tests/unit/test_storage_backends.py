"""Both storage backends keep the same promises: a staged file is published whole or not at
all, reads stream in chunks, a missing key is FileNotFoundError, folders are listed with
their time, and removing what is not there is fine. The object store is a real local S3
server (moto's server mode), not a mock of the client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.storage import LocalStorage, ObjectStorage, Storage
from tests.support.s3 import S3Endpoint, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "data")
    endpoint: S3Endpoint = request.getfixturevalue("s3")
    return ObjectStorage(
        endpoint.url(tmp_path.name), scratch=tmp_path / "scratch", **endpoint.options()
    )


def test_a_staged_file_is_published_when_its_block_ends(storage: Storage) -> None:
    with storage.staged("fits/a/summary.json") as tmp:
        tmp.write_bytes(b'{"x": 1}')
        assert not storage.exists("fits/a/summary.json")  # not before the block ends
    assert storage.get("fits/a/summary.json") == b'{"x": 1}'
    assert storage.names("fits/a") == ["summary.json"]


def test_a_failed_block_publishes_nothing_and_leaves_nothing(
    storage: Storage, tmp_path: Path
) -> None:
    storage.put("fits/a/summary.json", b"old")
    with pytest.raises(RuntimeError), storage.staged("fits/a/summary.json") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert storage.get("fits/a/summary.json") == b"old"
    assert storage.names("fits/a") == ["summary.json"]
    scratch = tmp_path / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir())


def test_a_large_file_streams_in_chunks(storage: Storage) -> None:
    payload = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MiB
    storage.put("fits/b/posterior.nc", payload)
    size, chunks = storage.open_stream("fits/b/posterior.nc", chunk_bytes=1 << 20)
    parts = list(chunks)
    assert size == len(payload) and b"".join(parts) == payload
    assert max(len(p) for p in parts) <= 1 << 20 and len(parts) >= 3


def test_a_local_copy_holds_the_bytes_and_a_download_is_removed_after(storage: Storage) -> None:
    storage.put("fits/c/posterior.nc", b"netcdf bytes")
    with storage.local_copy("fits/c/posterior.nc") as path:
        assert path.read_bytes() == b"netcdf bytes"
    if isinstance(storage, ObjectStorage):
        assert not path.exists()


def test_a_missing_key_is_file_not_found_everywhere(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.get("fits/none/spec.json")
    with pytest.raises(FileNotFoundError):
        storage.open_stream("fits/none/spec.json")
    with pytest.raises(FileNotFoundError), storage.local_copy("fits/none/spec.json"):
        pass
    assert not storage.exists("fits/none/spec.json")
    assert not storage.has_folder("fits/none")
    assert storage.names("fits/none") == []
    storage.remove("fits/none/spec.json")  # removing nothing is fine
    storage.remove_folder("fits/none")


def test_folders_are_listed_with_their_time_and_removed_whole(storage: Storage) -> None:
    before = time.time() - 5
    for fit in ("f1", "f2"):
        storage.put(f"fits/{fit}/spec.json", b"{}")
        storage.put(f"fits/{fit}/summary.json", b"{}")
    listed = dict(storage.folders("fits"))
    assert set(listed) == {"f1", "f2"}
    assert all(before <= t <= time.time() + 5 for t in listed.values())
    storage.remove_folder("fits/f1")
    assert not storage.has_folder("fits/f1") and storage.has_folder("fits/f2")
    assert set(dict(storage.folders("fits"))) == {"f2"}
    storage.remove("fits/f2/summary.json")
    assert storage.names("fits/f2") == ["spec.json"]


def test_the_storage_says_whether_it_can_be_written(storage: Storage) -> None:
    assert storage.writable()


def test_an_unreachable_object_store_is_not_writable(tmp_path: Path) -> None:
    storage = ObjectStorage(
        "s3://nowhere/x",
        key="k",
        secret="s",
        client_kwargs={"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
        config_kwargs={"connect_timeout": 1, "retries": {"max_attempts": 1}},
    )
    assert not storage.writable()


def test_a_failed_first_write_leaves_no_empty_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    with pytest.raises(RuntimeError), storage.staged("fits/new/spec.json"):
        raise RuntimeError("the disk filled up")
    assert not storage.has_folder("fits/new")
    assert not (tmp_path / "data" / "fits" / "new").exists()
