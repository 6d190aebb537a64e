"""The one interface to stored files: a local folder (the default) or an S3-compatible bucket
(AWS S3, MinIO, Ceph), chosen by ``HBM_STORAGE_URL``. ``Artifacts`` names a fit's files on
top of it; nothing else in the API or the workers touches a path.

    Storage                  keys are '/'-separated paths under the root ("fits/{id}/x.json")
    ├── LocalStorage         a folder: write to a temporary name, fsync, rename, fsync the
    │                        folder (a reader sees the old file or the whole new one)
    └── ObjectStorage        fsspec's S3 filesystem (s3fs): a file is written locally, then
                             uploaded as one object (multipart above 50 MiB), which appears
                             whole or not at all; reads stream in blocks

What both promise:

- ``staged(key)`` yields a local path to write; when the block ends without error the file
  is published under ``key`` atomically (and removed locally); on error nothing is.
- ``open_stream(key)`` gives the size and the bytes in chunks: a large file is never held
  in memory; ``local_copy(key)`` gives a local file to open with a library that needs one
  (netCDF), removed afterwards when it was downloaded.
- ``FileNotFoundError`` for a missing key; every other failure is ``StorageError`` (with
  ``full`` when a local disk is full), raised by ``Artifacts``' callers' error mapping.

An object store has no folders and no rename: a "folder" exists while an object's key
starts with its prefix, and its time is its newest object's.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from service.core.errors import StorageError
from service.core.settings import Settings

#: Bytes read at a time when streaming a file.
CHUNK_BYTES = 1 << 20
_FULL = {errno.ENOSPC, errno.EDQUOT}


def storage_error(exc: OSError, what: str) -> StorageError:
    """A StorageError in the service's words for an OSError while doing ``what``."""
    full = exc.errno in _FULL
    reason = "the disk is full" if full else "the storage failed"
    return StorageError(f"{what}: {reason}", full=full)


class Storage(ABC):
    """Files by key, written atomically (see the module docstring)."""

    #: Where a human finds the files (a folder, or s3://bucket/prefix).
    location: str

    @abstractmethod
    @contextmanager
    def staged(self, key: str) -> Iterator[Path]:
        """A local path to write; published under ``key`` when the block ends."""

    @abstractmethod
    def put(self, key: str, payload: bytes | memoryview) -> None:
        """Write ``payload`` under ``key`` atomically."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under ``key`` (FileNotFoundError if absent)."""

    @abstractmethod
    def open_stream(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, Iterator[bytes]]:
        """The size of ``key`` and its bytes in chunks (FileNotFoundError at once)."""

    @abstractmethod
    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A local file holding ``key``'s bytes for the block (FileNotFoundError)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The size of ``key`` in bytes (FileNotFoundError if absent)."""

    @abstractmethod
    def has_folder(self, prefix: str) -> bool:
        """Whether anything is stored under ``prefix/``."""

    @abstractmethod
    def names(self, prefix: str) -> list[str]:
        """The names of the files directly under ``prefix/``."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """Remove ``key`` (a missing key is fine)."""

    @abstractmethod
    def remove_folder(self, prefix: str) -> None:
        """Remove everything under ``prefix/`` (nothing there is fine)."""

    @abstractmethod
    def folders(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Each folder directly under ``prefix/`` and when it last changed (epoch seconds)."""

    @abstractmethod
    def writable(self) -> bool:
        """Whether a file can be written and removed now."""


class LocalStorage(Storage):
    """Files in a local folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    @contextmanager
    def staged(self, key: str) -> Iterator[Path]:
        target = self._path(key)
        folder = target.parent
        created = not folder.is_dir()  # a failed first write leaves no empty folder behind
        published = False
        tmp = ""
        try:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
                os.close(fd)
            except OSError as exc:
                raise storage_error(exc, f"the file {target.name} could not be written") from exc
            try:
                yield Path(tmp)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
                published = True
                _fsync_folder(folder)
            except OSError as exc:
                raise storage_error(exc, f"the file {target.name} could not be written") from exc
        finally:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            if created and not published:
                with suppress(OSError):
                    folder.rmdir()

    def put(self, key: str, payload: bytes | memoryview) -> None:
        with self.staged(key) as tmp, tmp.open("wb") as handle:
            handle.write(payload)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _failed(exc, "read", key) from exc

    def open_stream(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, Iterator[bytes]]:
        try:
            handle = self._path(key).open("rb")
            size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _failed(exc, "read", key) from exc
        return size, _chunks(handle, chunk_bytes)

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        yield path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def has_folder(self, prefix: str) -> bool:
        return self._path(prefix).is_dir()

    def names(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        return sorted(entry.name for entry in folder.iterdir() if entry.is_file())

    def remove(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, "a file could not be removed") from exc

    def remove_folder(self, prefix: str) -> None:
        target = self._path(prefix)
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, "the files could not be removed") from exc

    def folders(self, prefix: str) -> Iterator[tuple[str, float]]:
        try:
            entries = list(os.scandir(self._path(prefix)))
        except FileNotFoundError:
            return
        for entry in entries:
            with suppress(FileNotFoundError):
                yield entry.name, entry.stat(follow_symlinks=False).st_mtime

    def writable(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.root, prefix=".probe.")
            os.close(fd)
            os.unlink(name)
        except OSError:
            return False
        return True


class ObjectStorage(Storage):
    """Files as objects of an S3-compatible bucket, through fsspec's s3fs."""

    def __init__(self, url: str, scratch: Path | None = None, **options: Any) -> None:
        import s3fs  # only a deployment on an object store needs it

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        self.base = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        self.location = f"s3://{self.base}"
        self.scratch = scratch
        self.fs = s3fs.S3FileSystem(**options)

    def _key(self, key: str) -> str:
        return f"{self.base}/{key}"

    def _tmp(self, suffix: str) -> Path:
        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.scratch, prefix=".hbm-", suffix=suffix)
        os.close(fd)
        return Path(name)

    @contextmanager
    def staged(self, key: str) -> Iterator[Path]:
        name = key.rsplit("/", 1)[-1]
        try:
            tmp = self._tmp(f".{name}")
        except OSError as exc:
            raise storage_error(exc, f"the file {name} could not be written") from exc
        try:
            yield tmp
            self.fs.put_file(str(tmp), self._key(key))
        except OSError as exc:
            raise storage_error(exc, f"the file {name} could not be written") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, key: str, payload: bytes | memoryview) -> None:
        try:
            self.fs.pipe_file(self._key(key), bytes(payload))
        except OSError as exc:
            raise _failed(exc, "written", key) from exc

    def get(self, key: str) -> bytes:
        try:
            # One GET: with concurrency above 1, s3fs asks for the size first (a HEAD).
            return bytes(self.fs.cat_file(self._key(key), max_concurrency=1))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _failed(exc, "read", key) from exc

    def open_stream(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, Iterator[bytes]]:
        try:
            handle = self.fs.open(self._key(key), "rb", block_size=chunk_bytes)
            size = int(handle.size)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _failed(exc, "read", key) from exc
        return size, _chunks(handle, chunk_bytes)

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        tmp = self._tmp(f".{key.rsplit('/', 1)[-1]}")
        try:
            try:
                self.fs.get_file(self._key(key), str(tmp))
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise storage_error(exc, "a file could not be downloaded") from exc
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.isfile(self._key(key)))
        except OSError as exc:
            raise storage_error(exc, "the storage could not be read") from exc

    def size(self, key: str) -> int:
        try:
            return int(self.fs.info(self._key(key))["size"])
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _failed(exc, "read", key) from exc

    def has_folder(self, prefix: str) -> bool:
        try:
            self.fs.invalidate_cache(self._key(prefix))
            return bool(self.fs.ls(self._key(prefix), detail=False))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error(exc, "the storage could not be read") from exc

    def names(self, prefix: str) -> list[str]:
        try:
            self.fs.invalidate_cache(self._key(prefix))
            entries = self.fs.ls(self._key(prefix), detail=True)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(exc, "the storage could not be read") from exc
        return sorted(e["name"].rsplit("/", 1)[-1] for e in entries if e["type"] == "file")

    def remove(self, key: str) -> None:
        try:
            self.fs.rm_file(self._key(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, "a file could not be removed") from exc

    def remove_folder(self, prefix: str) -> None:
        try:
            self.fs.rm(self._key(prefix), recursive=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, "the files could not be removed") from exc
        self.fs.invalidate_cache(self._key(prefix))

    def folders(self, prefix: str) -> Iterator[tuple[str, float]]:
        root = self._key(prefix)
        try:
            self.fs.invalidate_cache(root)
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return
        newest: dict[str, float] = {}
        for name, info in found.items():
            relative = name[len(root) + 1 :]
            if "/" not in relative:
                continue
            folder = relative.split("/", 1)[0]
            modified = info.get("LastModified")
            when = modified.timestamp() if isinstance(modified, datetime) else 0.0
            newest[folder] = max(newest.get(folder, 0.0), when)
        yield from newest.items()

    def writable(self) -> bool:
        probe = self._key(f".probe-{os.getpid()}")
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except Exception:
            return False
        return True


def storage_for(settings: Settings) -> Storage:
    """The storage the settings name: the object store of ``storage_url``, or the local
    ``data_dir``."""
    if not settings.storage_url:
        return LocalStorage(settings.data_dir)
    client: dict[str, Any] = {}
    if settings.s3_endpoint_url:
        client["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_region:
        client["region_name"] = settings.s3_region
    options: dict[str, Any] = {"client_kwargs": client}
    if settings.s3_access_key_id:
        options["key"] = settings.s3_access_key_id
    if settings.s3_secret_access_key is not None:
        options["secret"] = settings.s3_secret_access_key.get_secret_value()
    return ObjectStorage(settings.storage_url, **options)


def _failed(exc: OSError, doing: str, key: str) -> StorageError:
    """The StorageError of a failure to read or write ``key``."""
    return storage_error(exc, f"the file {key.rsplit('/', 1)[-1]} could not be {doing}")


def _chunks(handle: Any, chunk_bytes: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
