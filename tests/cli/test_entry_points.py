"""Every entry point behaves alike: its whole config checked before any directory is made (a misspelled key named
with the closest allowed one), a user error reported in one line without a traceback and a non-zero exit, and
its output directory printed when it starts and, with the files written, when it ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.configs import cli_env, run_console_main
from zf_lightning.cli import analyze, evaluate, features, prepare, tables, train, visualize

HYDRA_APPS = {
    "zf-train": train.main,
    "zf-eval": evaluate.main,
    "zf-visualize": visualize.main,
    "zf-analyze": analyze.main,
    "zf-features": features.main,
}


def run_main(monkeypatch, tmp_path: Path, command: str, args: list[str]) -> int:
    """The console script `command`, in this process (as its entry point runs it): its exit status."""
    if command in HYDRA_APPS:
        return run_console_main(monkeypatch, tmp_path, HYDRA_APPS[command], [command, *args])
    entry = {"zf-tables": tables.main, "zf-prepare": prepare.main}[command]
    return run_console_main(monkeypatch, tmp_path, lambda: sys.exit(entry(args)), [command, *args])


TYPOS = [
    ("zf-train", ["+trainer.max_epoch=1"], "trainer.max_epoch: unknown key", "'max_epochs'"),
    ("zf-eval", ["ckpt_path=x.ckpt", "+data.batch_sise=1"], "data.batch_sise: unknown key", "'batch_size'"),
    (
        "zf-visualize",
        ["top9", "ckpt_path=x.ckpt", "+maps_per_layr=3"],
        "maps_per_layr: unknown top-level key",
        "'maps_per_layer'",
    ),
    (
        "zf-visualize",
        ["top9", "ckpt_path=x.ckpt", "+images.image_dri=x"],
        "images.image_dri: unknown key",
        "'image_dir'",
    ),
    (
        "zf-visualize",
        ["filters", "ckpt_paths=[x.ckpt]", "+layer2_map=3"],
        "layer2_map: unknown top-level key",
        "'layer2_maps'",
    ),
    (
        "zf-analyze",
        ["occlusion", "ckpt_path=x.ckpt", "+occlusion.windw=32"],
        "occlusion.windw: unknown key",
        "'window'",
    ),
    (
        "zf-analyze",
        ["invariance", "ckpt_path=x.ckpt", "+invariance.batch_sise=2"],
        "invariance.batch_sise: unknown key",
        "'batch_size'",
    ),
    (
        "zf-analyze",
        ["correspondence", "ckpt_path=x.ckpt", "+correspondence.repeat=2"],
        "correspondence.repeat: unknown key",
        "'repeats'",
    ),
    ("zf-features", ["ckpt_path=x.ckpt", "+grids=3"], "grids: unknown top-level key", "'grid'"),
    ("zf-tables", ["runs", "--outt", "x"], "unrecognized arguments: --outt", "--out"),
    ("zf-prepare", ["src", "dst", "--sise", "3"], "unrecognized arguments: --sise", "--size"),
]


@pytest.mark.parametrize(("command", "args", "problem", "closest"), TYPOS, ids=[f"{t[0]} {t[1][0]}" for t in TYPOS])
def test_a_misspelled_key_is_refused_before_any_directory_naming_the_closest(
    monkeypatch, tmp_path, capsys, command, args, problem, closest
):
    assert run_main(monkeypatch, tmp_path, command, args) == 2
    err = capsys.readouterr().err
    assert problem in err and closest in err, err
    assert "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no run directory, no logs


BAD_INPUT = [
    ("zf-eval", ["ckpt_path={truncated}"], "is not a complete checkpoint (1000 bytes, no zip end record)"),
    ("zf-eval", ["ckpt_path={missing}"], "no such checkpoint file"),
    ("zf-train", ["data=imagenet", "data.root={missing}", "logger=csv"], "ImageNet root"),
    (
        "zf-analyze",
        ["occlusion", "ckpt_path={checkpoint}", "data.num_classes=5", "~logger"],
        "has 10 classes but data.num_classes=5",
    ),
]


@pytest.mark.parametrize(("command", "args", "message"), BAD_INPUT, ids=[f"{b[0]} {b[2][:24]}" for b in BAD_INPUT])
def test_bad_input_is_one_line_without_a_traceback(
    monkeypatch, tmp_path, capsys, tiny_checkpoint, command, args, message
):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    paths = {"truncated": truncated, "missing": tmp_path / "missing", "checkpoint": tiny_checkpoint}
    assert run_main(monkeypatch, tmp_path, command, [arg.format(**paths) for arg in args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"{command.split()[0]}") and ": error: " in line]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err


def test_the_console_script_reports_a_truncated_checkpoint_in_one_line(tmp_path, tiny_checkpoint):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    done = subprocess.run(
        [str(Path(sys.executable).parent / "zf-eval"), f"ckpt_path={truncated}", "logger=csv"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr, done.stderr
    assert f"zf-eval: error: ckpt_path='{truncated}' is not a complete checkpoint" in done.stderr


def test_a_command_names_its_output_directory_at_the_start_and_its_files_at_the_end(
    monkeypatch, tmp_path, capsys, tiny_checkpoint
):
    assert (
        run_main(monkeypatch, tmp_path, "zf-eval", [f"ckpt_path={tiny_checkpoint}", "logger=csv", "hydra.run.dir=out"])
        == 0
    )
    out = capsys.readouterr().out
    assert f"zf-eval: writing to {tmp_path / 'out'}" in out or "zf-eval: writing to out" in out
    assert "zf-eval: wrote " in out and "csv/ (2 files)" in out and "summary.json" in out, out
