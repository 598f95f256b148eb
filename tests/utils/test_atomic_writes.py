"""Every file is written by one atomic writer (`zf_lightning.utils.io.atomic_write`): with the mode the umask gives a
new file, readable by another user of a shared cache, and never half written under its name, whenever a kill lands."""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.console_runs import UMASK
from zf_lightning.callbacks.fault_tolerance import AtomicCheckpointIO
from zf_lightning.data.mean_image import cache_path, load_or_compute_mean_image
from zf_lightning.utils.io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    atomic_write_text,
    fsync_folder,
)

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


WRITERS = {
    "bytes": lambda path: atomic_write_bytes(b"data", path),
    "text": lambda path: atomic_write_text("text\n", path),
    "json": lambda path: atomic_write_json({"a": 1}, path),
    "npz": lambda path: atomic_write_npz({"a": np.arange(3)}, path),
    "torch": lambda path: atomic_torch_save({"a": torch.ones(2)}, path),
    "checkpoint_io": lambda path: AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, path),
}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=["022", "002", "077"])
@pytest.mark.parametrize("writer", WRITERS)
def test_each_writer_gives_the_mode_of_the_umask_at_the_time_of_writing(tmp_path, writer, mask, expected):
    path = tmp_path / "sub" / f"file.{writer}"
    path.parent.mkdir()
    path.write_bytes(b"old")
    path.chmod(0o600)  # as tempfile.mkstemp left every file before: the new file does not keep it
    with umask(mask):
        WRITERS[writer](path)
    assert mode(path) == expected
    assert path.read_bytes() != b"old" and not temporaries(path.parent)


def test_contents_are_what_the_plain_writers_write(tmp_path):
    atomic_write_json({"b": [1, 2], "a": "x"}, tmp_path / "s.json")
    assert (tmp_path / "s.json").read_text() == '{\n  "a": "x",\n  "b": [\n    1,\n    2\n  ]\n}\n'
    atomic_write_text("é\n", tmp_path / "t.md")
    assert (tmp_path / "t.md").read_bytes() == "é\n".encode()
    atomic_write_npz({"a": np.arange(4)}, tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as arrays:
        assert arrays["a"].tolist() == [0, 1, 2, 3]
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.arange(3))


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and not temporaries(tmp_path)


def test_the_folder_fsync_works_here(tmp_path):
    fsync_folder(tmp_path)  # raises on a real I/O error only
    atomic_write_bytes(b"x", tmp_path / "a" / "b" / "c.bin")  # makes the folders, syncs the last one
    assert (tmp_path / "a" / "b" / "c.bin").read_bytes() == b"x"


@pytest.mark.slow
def test_every_file_a_short_run_writes_has_the_mode_of_the_umask(console_default_runs):
    # The console runs ran under umask 022 (tests/helpers/console_runs.py); every writer's mode under 002 and 077
    # is checked in-process above.
    assert UMASK == 0o022
    folders = (*console_default_runs.runs, console_default_runs.cache)
    files = {
        path.relative_to(console_default_runs.root).as_posix(): path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file()
    }
    names = set(files)
    # Every kind of file the project writes itself is among them (with Hydra's, Lightning's and W&B's own).
    for pattern in ("runs/*/summary.json", "checkpoints/last.ckpt", "csv/metrics.csv", "feature_evolution/*.npz"):
        assert any(Path(name).match(pattern) for name in names), (pattern, sorted(names))
    assert any(name.startswith("cache/mean_image-") for name in names) and any(n.endswith(".png") for n in names)
    assert {name: oct(mode(path)) for name, path in files.items() if mode(path) != 0o644} == {}
    assert not [path for folder in folders for path in folder.rglob(".*.tmp")]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder that another user can reach (pytest's tmp_path is inside a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="zf-shared-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def read_as_nobody(path: Path) -> subprocess.CompletedProcess:
    cat = shutil.which("cat")
    if cat is None:
        pytest.skip("no `cat` to read the file as another user")
    # Group nobody too, without root's supplementary groups: only the file's "other" bits let it read.
    return subprocess.run([cat, str(path)], user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True)


@pytest.mark.skipif(not hasattr(os, "setreuid"), reason="subprocess cannot run a child as another user here")
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run a child as nobody")
def test_another_user_reads_a_shared_cache_written_under_umask_022(shared_dir):
    images = torch.utils.data.TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4))
    cache = shared_dir / "cache"
    with umask(0o022):
        mean = load_or_compute_mean_image("shared", images, cache)
    written = cache_path(cache, "shared")
    read = read_as_nobody(written)
    assert read.returncode == 0, read.stderr
    assert read.stdout == written.read_bytes()
    assert torch.equal(torch.load(written, weights_only=True)["mean_image"], mean)

    with umask(0o077):  # the control: a private umask makes the cache unreadable to others
        load_or_compute_mean_image("private", images, cache)
    read = read_as_nobody(cache_path(cache, "private"))
    assert read.returncode != 0 and b"Permission denied" in read.stderr


# Writes `target` with the writer, forever: version after version, each many MiB of its version's byte; with
# `pause` > 0 it stops for a minute after that many MiB of the first version (where the kill is to land).
WRITING_CHILD = textwrap.dedent(
    """
    import itertools, sys, time
    from pathlib import Path
    from zf_lightning.utils.io import atomic_write

    target, first, chunks, pause = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print("ready", flush=True)

    def write(version):
        def fill(tmp):
            with open(tmp, "wb") as f:
                for chunk in range(1, chunks + 1):
                    f.write(bytes([version]) * (1 << 20))
                    f.flush()
                    if chunk == pause:
                        print("paused", flush=True)
                        time.sleep(60)
        return fill

    for version in itertools.count(first):
        atomic_write(target, write(version % 256))
    """
)
CHUNKS = 16  # MiB a version


def start_writer(target: Path, first: int, pause: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITING_CHILD, str(target), str(first), str(CHUNKS), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
    )


def whole_version(path: Path) -> int:
    """The version byte of a whole file under the name; fails on a half or mixed one."""
    data = path.read_bytes()
    assert len(data) == CHUNKS << 20, f"{len(data)} bytes: a half file under the name"
    assert data.count(data[:1]) == len(data), "bytes of two versions"
    return data[0]


@pytest.mark.parametrize("previous", [b"the previous content", None])
def test_a_kill_during_the_write_leaves_the_previous_file_or_none_and_no_half_file(tmp_path, previous):
    target = tmp_path / "cache.bin"
    if previous is not None:
        target.write_bytes(previous)
    child = start_writer(target, first=7, pause=3)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    assert child.stdout.readline() == "paused\n"  # 3 MiB written, the rest to come
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    if previous is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == previous
    (half,) = temporaries(tmp_path)  # left beside it, hidden and named .tmp: never taken for the data
    assert half.name.startswith(".cache.bin.") and half.read_bytes() == bytes([7]) * (3 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([half.name, *(["cache.bin"] if previous else [])])

    atomic_write_bytes(b"new", target)  # the next write does not trip over it
    assert target.read_bytes() == b"new"


@pytest.mark.slow
def test_kills_at_random_moments_always_leave_a_whole_version_under_the_name(tmp_path):
    target, rng = tmp_path / "data.bin", random.Random(20)
    versions = set()
    for attempt in range(2):
        child = start_writer(target, first=10 * attempt)
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.6))  # in a write, a rename or between two
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if target.exists():
            versions.add(whole_version(target))
    assert versions, "no write completed before any kill: the kills came too early to test anything"
