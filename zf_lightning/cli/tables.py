"""zf-tables: the paper's tables rebuilt from runs, with the paper's numbers beside ours.

    zf-tables logs/train/multiruns/2024-05-01_12-00-00-000000 [more sweep or run dirs] [--out tables]
    zf-tables --wandb my-entity/zf-lightning [--out tables]

Writes <out>/<table>.md, .tex and .csv for every table that has runs, and prints the Markdown.
Exit status 0 when tables were written; 2 when a path does not exist or no runs are found (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from zf_lightning.cli.arguments import ArgumentParser

EXIT_USAGE = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="zf-tables",
        description="Rebuild the paper's tables (2-7) from the summary.json files of runs, or from W&B.",
    )
    parser.add_argument(
        "paths", nargs="*", type=Path, help="sweep directories (their job directories are searched) or run directories"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("tables"), help="where <table>.md/.tex/.csv go (default: ./tables)"
    )
    parser.add_argument(
        "--wandb", metavar="ENTITY/PROJECT", help="also read the runs of the tables' groups from this W&B project"
    )
    parser.add_argument(
        "--paper",
        type=Path,
        default=None,
        help="the paper's numbers and the run-to-table mapping (default: the packaged paper.yaml)",
    )
    args = parser.parse_args(argv)
    if not args.paths and not args.wandb:
        parser.error("give sweep or run directories, or --wandb ENTITY/PROJECT")
    return args


def main(argv: list[str] | None = None) -> int:
    from zf_lightning.tables.build import (
        PAPER_FILE,
        build_tables,
        load_paper,
        to_markdown,
        write_table,
    )
    from zf_lightning.tables.results import find_runs, wandb_runs

    args = parse_args(argv)
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        return _fail(f"no such file or directory: {', '.join(missing)}")
    specs = load_paper(args.paper or PAPER_FILE)

    records = find_runs(args.paths)
    if args.wandb:
        try:
            records += wandb_runs(args.wandb, sorted({spec.group for spec in specs.values()}))
        except Exception as error:  # network, authentication, unknown project
            return _fail(f"reading W&B project {args.wandb!r} failed: {type(error).__name__}: {error}")
    sources = [str(path) for path in args.paths] + ([f"W&B {args.wandb}"] if args.wandb else [])
    if not records:
        return _fail(f"no runs (summary.json files or Hydra job directories) found in {', '.join(sources)}")

    tables = build_tables(records, specs)
    known_groups = {spec.group for spec in specs.values()}
    strays = Counter(str(record.group) for record in records if record.group not in known_groups)
    if not tables:
        return _fail(
            f"{len(records)} runs found, but none of a table's group ({', '.join(sorted(known_groups))}); "
            f"their groups: {dict(strays)}"
        )
    for name, table in tables.items():
        written = write_table(table, args.out)
        print(to_markdown(table))
        print(f"[{name}: {', '.join(str(path) for path in written.values())}]\n")
    if strays:
        print(f"zf-tables: {sum(strays.values())} runs belong to no table, by group: {dict(strays)}", file=sys.stderr)
    return 0


def _fail(message: str) -> int:
    print(f"zf-tables: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
