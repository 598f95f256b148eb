"""The README's promises that files can check: CI runs its quickstart commands, and the tests it cites exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def quickstart_commands() -> list[str]:
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", README, re.S)
    assert block, "README has no Quickstart bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_quickstart_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in ci if line and not line.startswith(("#", "set ", "cd ", "export ", "#!"))]
    assert commands == quickstart_commands()
    assert len(commands) == 2


def test_every_test_the_readme_cites_exists():
    docs = README + (ROOT / "BENCHMARKS.md").read_text()
    cited = set(re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", docs))
    assert cited, "no test cited: the pattern no longer matches the README"
    missing = []
    for path, name in cited:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name and not re.search(rf"^(async )?def {name}\b", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"README/BENCHMARKS.md cite tests that do not exist: {sorted(missing)}"
