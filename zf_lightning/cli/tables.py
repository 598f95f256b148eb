"""zf-tables: the paper's tables rebuilt from runs, with the paper's numbers beside ours.

    zf-tables logs/train/multiruns/2024-05-01_12-00-00-000000 [more sweep or run dirs] [--out tables]
    zf-tables --wandb my-entity/zf-lightning [--out tables]
    zf-tables logs/train/multiruns/... --smoke          # the smoke groups (table3-smoke): synthetic data
    zf-tables ... --log-wandb                           # also the tables as W&B tables, in a run of their own

Writes <out>/<table>.md, .tex and .csv for every table that has runs, and prints the Markdown. Smoke runs
(synthetic data, debug=smoke) are in groups of their own (`table3-smoke`): read only with --smoke.
Exit status 0 when tables were written; 2 when a path does not exist, no runs are found, or a table would mix
runs on synthetic and on real data (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zf_lightning.cli.arguments import ArgumentParser
from zf_lightning.utils.errors import InputError

if TYPE_CHECKING:
    from zf_lightning.tables.build import Table

EXIT_USAGE = 2
TABLES_GROUP = "tables"  # the W&B group (and job_type) of the runs that --log-wandb starts


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
        "--smoke",
        action="store_true",
        help="build the tables from the smoke groups (<group>-smoke: runs on synthetic data or with debug=smoke), "
        "labelled not comparable to the paper; without it only the real groups are read",
    )
    parser.add_argument(
        "--data",
        choices=["real", "synthetic"],
        default=None,
        help="keep only the runs on real or on synthetic data; without it a table with runs of both kinds is refused",
    )
    parser.add_argument(
        "--log-wandb",
        action="store_true",
        help="also log each table (a W&B table and its Markdown) to a W&B run of its own, job_type and group "
        "'tables', with the project's W&B logger settings (conf/logger/wandb.yaml: offline, under <out>/wandb)",
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
        table_group,
        to_markdown,
        write_table,
    )
    from zf_lightning.tables.results import find_runs, wandb_runs

    args = parse_args(argv)
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        return _fail(f"no such file or directory: {', '.join(missing)}")
    specs = load_paper(args.paper or PAPER_FILE)

    known_groups = {table_group(spec, args.smoke) for spec in specs.values()}
    records = find_runs(args.paths)
    if args.wandb:
        try:
            records += wandb_runs(args.wandb, sorted(known_groups))
        except Exception as error:  # network, authentication, unknown project
            return _fail(f"reading W&B project {args.wandb!r} failed: {type(error).__name__}: {error}")
    sources = [str(path) for path in args.paths] + ([f"W&B {args.wandb}"] if args.wandb else [])
    if not records:
        return _fail(f"no runs (summary.json files or Hydra job directories) found in {', '.join(sources)}")

    try:
        tables = build_tables(records, specs, smoke=args.smoke, data=args.data)
    except InputError as error:  # a table that would mix runs on synthetic and on real data
        return _fail(str(error))
    strays = Counter(str(record.group) for record in records if record.group not in known_groups)
    # The runs of the other kind of group (smoke or real) that fill tables there: how to build those.
    other = {table_group(spec, not args.smoke) for spec in specs.values()}
    elsewhere = {group: count for group, count in strays.items() if group in other}
    hint = (
        f"; {sum(elsewhere.values())} are in the {'real' if args.smoke else 'smoke'} groups "
        f"({', '.join(sorted(elsewhere))}): zf-tables {'without' if args.smoke else 'with'} --smoke builds their tables"
        if elsewhere
        else ""
    )
    if not tables:
        kept = f" on {args.data} data" if args.data else ""
        return _fail(
            f"{len(records)} runs found, but none{kept} of a table's group ({', '.join(sorted(known_groups))}); "
            f"their groups: {dict(strays)}{hint}"
        )
    markdown = {}
    for name, table in tables.items():
        written = write_table(table, args.out)
        markdown[name] = to_markdown(table)
        print(markdown[name])
        print(f"[{name}: {', '.join(str(path) for path in written.values())}]\n")
    if strays:
        print(
            f"zf-tables: {sum(strays.values())} runs belong to no table, by group: {dict(strays)}{hint}",
            file=sys.stderr,
        )
    if args.log_wandb:
        try:
            where = log_to_wandb(
                tables, markdown, args.out, {"sources": sources, "smoke": args.smoke, "data": args.data}
            )
        except Exception as error:  # W&B not installed, a bad setting, no network when online
            return _fail(f"the tables were written, but logging them to W&B failed: {type(error).__name__}: {error}")
        print(f"[W&B: the tables logged to {where}]")
    return 0


def log_to_wandb(tables: dict[str, Table], markdown: dict[str, str], out: Path, config: dict[str, Any]) -> str:
    """Each table as a `wandb.Table` (columns: row, column, ours, paper, difference, n, status) and its Markdown
    (summary key `<table>/markdown`), in a W&B run of its own: job_type "tables", group "tables" ("tables-smoke" for
    tables of smoke or synthetic runs). The run takes the project's W&B logger settings (conf/logger/wandb.yaml:
    project, offline), as every run of the project does, and goes under <out>/wandb. Returns where it went."""
    import wandb
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from zf_lightning.config import config_dir
    from zf_lightning.tables.build import WANDB_COLUMNS, wandb_rows
    from zf_lightning.utils.smoke import SMOKE_TAG, smoke_group

    smoke = any(not table.comparable for table in tables.values())
    settings = OmegaConf.create(
        {
            "paths": {"output_dir": str(out)},
            "run_name": TABLES_GROUP,
            "group": smoke_group(TABLES_GROUP) if smoke else TABLES_GROUP,
            "tags": [TABLES_GROUP, *([SMOKE_TAG] if smoke else [])],
            "job_type": TABLES_GROUP,
            "logger": OmegaConf.load(Path(config_dir()) / "logger" / "wandb.yaml"),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    logger = instantiate(settings.logger.wandb)
    run = logger.experiment
    run.config.update(config)
    columns: list[str | int] = list(WANDB_COLUMNS)  # as wandb.Table types them
    run.log({name: wandb.Table(columns=columns, data=wandb_rows(table)) for name, table in tables.items()})
    for name in tables:
        run.summary[f"{name}/markdown"] = markdown[name]
    offline = OmegaConf.select(settings, "logger.wandb.offline")
    where = f"{run.project}/{run.id}" + (f" (offline: wandb sync {Path(run.dir).parent})" if offline else "")
    run.finish()
    return where


def _fail(message: str) -> int:
    print(f"zf-tables: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
