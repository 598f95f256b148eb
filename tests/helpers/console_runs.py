"""Two short zf-train runs of the built-in default, launched at once from the console script, as a user (or a
scheduler) would: default loggers (CSV + W&B offline), feature evolution, the timestamped run directory, a shared
mean-image cache, umask 022, and a secret in the environment and in the config. Several tests read what they
wrote (tests/conftest.py runs them once a session): each launch costs some 5 s of imports on 2 cores."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.configs import TINY, cli_env

UMASK = 0o022


@dataclass(frozen=True)
class ConsoleRuns:
    root: Path  # the working directory; ZF_LOG_DIR is root/logs
    runs: list[Path]  # the run directories, as Hydra named them
    cache: Path  # the shared data cache (mean images)
    secret: str  # WANDB_API_KEY's value, referenced by the config


def launch_default_runs(root: Path, count: int = 2) -> ConsoleRuns:
    secret = f"zfsecret{uuid.uuid4().hex}"  # 40 characters, like a W&B key
    cache = root / "cache"
    env = {**cli_env(root), "WANDB_API_KEY": secret, "WANDB_MODE": "offline", "ZF_CACHE_DIR": str(cache)}
    args = [
        *TINY,
        "trainer.max_epochs=1",
        f"data.cache_dir={cache}",
        "+notes.text=${oc.env:WANDB_API_KEY}",  # a config value that resolves to the secret
        "+notes.run_note='key is ${oc.env:WANDB_API_KEY}'",  # ... and one that contains it
        "+notes.service.api_key=not-from-the-env",  # a key whose name says it is secret
    ]  # logger=default: CSV + W&B offline
    launched = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "zf-train"), *args],
            env=env,
            cwd=root,
            umask=UMASK,  # set in the children only
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for process in launched:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    runs = sorted((root / "logs" / "train" / "runs").iterdir())
    return ConsoleRuns(root=root, runs=runs, cache=cache, secret=secret)
