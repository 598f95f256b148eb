"""Files that later tools read are written to a temporary name and renamed, never left truncated."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from zf_lightning.utils.errors import InputError, MissingInputError


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZF_CACHE_DIR", Path.home() / ".cache" / "zf_lightning"))


def _atomic(path: Path, write: Callable[[str], object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_torch_save(obj: object, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_json(data: object, path: str | Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    _atomic(Path(path), write)


def atomic_write_npz(arrays: dict, path: str | Path) -> Path:
    """Compressed npz of named arrays; returns the path."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append ".npz" to a temporary name
            np.savez_compressed(f, **arrays)

    _atomic(Path(path), write)
    return Path(path)


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
