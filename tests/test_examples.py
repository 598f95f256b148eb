"""The examples run as documented: a subprocess per script, on a folder of generated JPEGs, offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.configs import cli_env
from tests.helpers.images import photo_like, save_image

ROOT = Path(__file__).resolve().parents[1]


def test_top9_of_a_trained_network_draws_fig2_for_a_folder(tmp_path):
    for i, folder in enumerate(["cats", "cats", "dogs"]):
        save_image(tmp_path / "images" / folder / f"{i}.jpg", photo_like(260, 240, seed=i), quality=90)
    out = tmp_path / "top9.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "top9_of_a_trained_network.py"), str(tmp_path / "images")]
        + ["--name", "alexnet", "--weights", "none", "--layer", "5", "--maps", "3,7", "--k", "2", "--out", str(out)],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] >= 640 and pixels.std() > 10  # a drawn figure, not a blank canvas
