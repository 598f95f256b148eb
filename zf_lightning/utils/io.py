"""Files that later tools read are written to a temporary name and renamed, never left truncated."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZF_CACHE_DIR", Path.home() / ".cache" / "zf_lightning"))


def _atomic(path: Path, write) -> None:
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


def atomic_torch_save(obj, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_json(data, path: str | Path) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    _atomic(Path(path), write)


def atomic_write_npz(arrays: dict, path: str | Path) -> Path:
    """Compressed npz of named arrays; returns the path."""
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: numpy would append ".npz" to a temporary name
            np.savez_compressed(f, **arrays)

    _atomic(Path(path), write)
    return Path(path)
