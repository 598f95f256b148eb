"""Every file the project writes goes through `atomic_write`: a kill at any moment leaves the old file or the new one
under the name, never a half file, and the new file gets the mode the umask gives any new file.

How (`atomic_write`):
- the content goes to a temporary file beside the target, in the same folder (so the rename below never becomes a
  copy across file systems), named ``.<name>.<random>.tmp``: hidden and with a suffix no reader of the project's
  files takes for data. A kill leaves at most that file behind, never anything under the target's name;
- the temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the process's umask (or the
  folder's default ACL) as for any ``open(path, "w")``: mode ``0o666 & ~umask``, e.g. 0644 under umask 022, 0664
  under 002, 0600 under 077. (`tempfile.mkstemp` makes 0600 files whatever the umask: a shared cache would be
  unreadable to everyone but its writer.) The umask is never read: `os.umask` reads it only by setting it, for the
  whole process, and a thread creating a file in between would get the wrong mode;
- its content is flushed and fsync'ed, it is renamed over the target with `os.replace` (atomic on POSIX and
  Windows), and the folder is fsync'ed where the OS can open a folder, so that the rename survives a power loss.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import torch

from zf_lightning.utils.errors import InputError, MissingInputError

TEMPORARY_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp", beside the target
# Not O_TRUNC: the name is new (O_EXCL). O_BINARY: no newline translation on Windows.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZF_CACHE_DIR", Path.home() / ".cache" / "zf_lightning"))


def _new_temporary(target: Path) -> Path:
    """An empty file beside `target`, with the umask's mode (see the module docstring)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            os.close(os.open(tmp, _CREATE, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {target}")


def _fsync_file(path: Path) -> None:
    # Opened again: the writer may have used its own descriptor (torch, PIL). fsync flushes the file, not the fd.
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)  # Windows' fsync needs write access
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | Path) -> None:
    """Make the renames and new names in `folder` durable; nothing where the OS cannot open a folder (Windows)
    or the file system cannot sync one."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows (no handles on folders), or a folder without read permission
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise  # an I/O error is real; "not supported here" is not
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write `path` atomically: `write(tmp)` fills a new, empty temporary file `tmp` beside it (by its name: torch,
    PIL, numpy and `open` all take one), which then replaces `path`. Returns `path`. See the module docstring."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(target)
    replaced = False
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, target)
        replaced = True
    finally:
        if not replaced:  # an exception (a kill leaves the hidden temporary file, never a file under the name)
            tmp.unlink(missing_ok=True)
    fsync_folder(target.parent)
    return target


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(text: str, path: str | Path, encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(data: object, path: str | Path) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    return atomic_write(path, write)


def atomic_write_npz(arrays: dict, path: str | Path) -> Path:
    """Compressed npz of named arrays; returns the path."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append ".npz" to a temporary name
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


def check_checkpoint(path: str | Path, what: str = "ckpt_path") -> Path:
    """A checkpoint file that exists and is whole (torch's zip format with its end record), else a clear error.

    A run killed while writing, or a copy cut short, leaves a file without the zip end record; torch would
    fail on it deep inside its unpickler.
    """
    import zipfile

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"{what}={str(path)!r}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise InputError(
            f"{what}={str(path)!r} is not a complete checkpoint ({path.stat().st_size} bytes, no zip end record): "
            "truncated by a kill or an interrupted copy? Use another checkpoint, e.g. the run's previous last.ckpt"
        )
    return path


def load_checkpoint(path: str | Path, what: str = "ckpt_path") -> dict:
    """`torch.load(weights_only=True)` of a checked checkpoint; one that needs arbitrary pickles is refused."""
    import pickle

    path = check_checkpoint(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"{what}={str(path)!r} needs arbitrary Python objects to load, which could run code: refused "
            f"(checkpoints are loaded with weights_only=True). Torch said: {str(error).splitlines()[0]}"
        ) from None
