"""The one atomic writer behind every file LaMed writes.

A reader (or a crash, or a full disk) must see either the previous file or the complete new one,
never a truncated mix: a half-written NIfTI mask placed over a patient's previous result is worse
than no result. Every writer here therefore works on a temporary file in the *target folder* (so
the final ``os.replace`` is a rename on one file system), flushes and fsyncs it, then renames it
over the target and fsyncs the folder so the rename itself survives a power cut.

Permissions: ``tempfile.mkstemp`` creates files with mode 0600 whatever the umask, which made
prepared datasets unreadable to a lab's other users. The finished file gets ``0666 & ~umask``
like any file ``open()`` would create.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "OutputError",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json_atomic",
    "save_npy_atomic",
    "check_writable_dir",
    "current_umask",
]


class OutputError(OSError):
    """An output could not be written; the message names the file and the reason (disk full, read-only, ...)."""


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _describe(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write '{path}': no space left on the device (nothing was changed at that path)"
    if exc.errno == errno.EROFS:
        return f"cannot write '{path}': the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write '{path}': permission denied"
    if exc.errno == errno.ENOTDIR:
        return f"cannot write '{path}': a parent of it is a regular file, not a folder"
    return f"cannot write '{path}': {exc.strerror or exc}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputError(errno.ENOTDIR, _describe(OSError(errno.ENOTDIR, "not a folder"), path)) from exc
    except OSError as exc:
        raise OutputError(exc.errno, _describe(exc, path)) from exc


@contextlib.contextmanager
def atomic_path(path: PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it is fsynced and renamed onto ``path``.

    For libraries that insist on writing to a path themselves (``nibabel.save``, ``safetensors``'
    ``save_file``, ``PIL.Image.save``, ``highdicom``). ``suffix`` keeps the extension such a
    library reads the format from (e.g. ``".nii.gz"``). On any error the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    _make_parent(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        raise OutputError(exc.errno, _describe(exc, path)) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(exc.errno, _describe(exc, path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: PathLike, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
        write(fh)
        fh.flush()
    return path


def atomic_write_bytes(path: PathLike, write: bytes | Callable[[Any], None]) -> Path:
    """Write ``bytes`` (or whatever ``write(binary_fileobj)`` writes) atomically to ``path``."""
    if isinstance(write, (bytes, bytearray, memoryview)):
        data = bytes(write)
        return atomic_write(path, lambda fh: fh.write(data))
    return atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically to ``path``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON atomically to ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def save_npy_atomic(path: PathLike, array: np.ndarray) -> Path:
    """``np.save`` (never pickling) that leaves no partial file under ``path``."""
    return atomic_write(path, lambda fh: np.save(fh, np.ascontiguousarray(array), allow_pickle=False))


def check_writable_dir(folder: PathLike, *, what: str = "output folder") -> Path:
    """Refuse early (before any long computation) an output folder that cannot be created or written.

    Creates ``folder`` if needed and writes then removes a probe file, so a read-only file system,
    a missing permission or a regular file standing where the folder should be is reported up front;
    the folders it created are removed again.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(errno.ENOTDIR, f"{what} '{folder}' is a regular file, not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(errno.ENOTDIR, f"{what} '{folder}': '{parent}' is a regular file, not a folder")
            break
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    _make_parent(folder / "probe")
    try:
        try:
            fd, probe = tempfile.mkstemp(prefix=".lamed-write-probe.", dir=folder)
        except OSError as exc:
            raise OutputError(exc.errno, _describe(exc, folder)) from exc
        os.close(fd)
        os.unlink(probe)
    finally:
        # The folders made for the probe go again: a run refused later leaves nothing behind (the
        # writers create their folders when they write).
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
    return folder
