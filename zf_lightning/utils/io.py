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


def atomic_torch_save(obj, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_json(data, path: str | Path) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    _atomic(Path(path), write)
