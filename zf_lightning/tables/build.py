"""The paper's tables from run records: each cell our mean ± std beside the paper's number, and the
difference; failed, incomplete and missing cells marked in the table and listed under it.

Ours is the mean over a cell's runs (seeds, splits) with the sample standard deviation (ddof=1), as the
paper's ± over 5 splits.

Smoke runs (synthetic data, debug=smoke) are in groups of their own, `<group>-smoke` (zf_lightning/utils/smoke.py):
a table is built from the real groups, or from the smoke groups (`smoke=True`), never from both; its caption names
the datasets of its runs, and a table whose runs are on synthetic and on real data is refused.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from zf_lightning.tables.results import COMPLETED, FAILED, RunRecord
from zf_lightning.utils.errors import InputError
from zf_lightning.utils.io import atomic_write_text
from zf_lightning.utils.smoke import SYNTHETIC, smoke_group

PAPER_FILE = Path(__file__).with_name("paper.yaml")
FORMATS = ("md", "tex", "csv")
_MAX_ERROR_CHARS = 60
_MAX_NAMED_RUNS = 5  # of each kind, in the error about a table that mixes synthetic and real data
DATA_KINDS = ("real", "synthetic")
# How captions name the datasets of runs (RunRecord.dataset); any other as it is.
DATASET_NAMES = {
    "imagenet": "ImageNet 2012",
    "caltech101": "Caltech-101",
    "caltech256": "Caltech-256",
    "voc2012": "PASCAL VOC 2012",
    SYNTHETIC: "synthetic data",
}
# The columns of a table logged to W&B (`wandb_rows`), one line per cell.
WANDB_COLUMNS = ["row", "column", "ours", "paper", "difference", "n", "status"]


@dataclass(frozen=True)
class PaperValue:
    mean: float
    std: float | None = None
    text: str = field(default="", compare=False)  # as printed in the paper: "16.0", "81.4 ± 0.33"

    def __str__(self) -> str:
        return self.text or (f"{self.mean}" if self.std is None else f"{self.mean} ± {self.std}")


@dataclass
class Column:
    key: str
    label: str
    metric: str | None  # where the number is in a run; None: not something we measure


@dataclass
class Row:
    key: str
    label: str
    paper: dict[str, PaperValue | None]  # by column key
    metric: str | None = None  # a row of metrics (feature analysis) names its own
    reference: bool = False  # not run by us: another paper's result, or the paper's ensemble
    expected: bool = True  # a sweep runs it, so no runs means "missing"


@dataclass
class TableSpec:
    name: str
    title: str
    source: str
    note: str
    group: str
    rows_by: list[str] | None
    columns_by: list[str] | None
    replicates_by: list[str]
    columns: list[Column]
    rows: list[Row]
    transpose: bool = False
    default_metric: str | None = None
    digits: int = 1  # decimals shown (Table 1's numbers are around 0.07: 3)
    # Where a single run holds its own spread of a cell (Table 1's std over image pairs); like `metric`, "{row}" and
    # "{column}" are filled in with the cell's keys. Shown as ± when the cell has one replicate.
    std_metric: str | None = None


def load_paper(path: str | Path = PAPER_FILE) -> dict[str, TableSpec]:
    """The tables of paper.yaml, checked: one paper number per column in every row."""
    tables = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["tables"]
    return {name: _table_spec(name, entry) for name, entry in tables.items()}


def _table_spec(name: str, entry: dict[str, Any]) -> TableSpec:
    default_metric = entry.get("metric")
    columns = [
        Column(str(c["key"]), c["label"], c["metric"] if "metric" in c else default_metric) for c in entry["columns"]
    ]
    rows = []
    for row in entry["rows"]:
        paper = row.get("paper") or [None] * len(columns)
        if len(paper) != len(columns):
            raise InputError(
                f"paper.yaml: {name} row {row['key']!r} has {len(paper)} paper numbers for {len(columns)} columns"
            )
        rows.append(
            Row(
                key=str(row["key"]),
                label=row["label"],
                metric=row.get("metric"),
                paper={column.key: parse_paper_value(value) for column, value in zip(columns, paper)},
                reference=bool(row.get("reference", False)),
                expected=bool(row.get("expected", True)),
            )
        )
    return TableSpec(
        name=name,
        title=entry["title"],
        source=entry["source"],
        note=entry.get("note", ""),
        group=entry["group"],
        rows_by=_paths(entry.get("rows_by")),
        columns_by=_paths(entry.get("columns_by")),
        replicates_by=_paths(entry.get("replicates_by")) or [],
        columns=columns,
        rows=rows,
        transpose=bool(entry.get("transpose", False)),
        default_metric=default_metric,
        digits=int(entry.get("digits", 1)),
        std_metric=entry.get("std_metric"),
    )


def _paths(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def parse_paper_value(value: str | float | None) -> PaperValue | None:
    """38.4 -> 38.4; "83.8 ± 0.5" -> 83.8 with std 0.5; null -> None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return PaperValue(float(value), text=repr(float(value)))
    match = re.fullmatch(r"\s*([-+\d.]+)\s*(?:±|\+-|\+/-)\s*([\d.]+)\s*", str(value))
    if match is None:
        return PaperValue(float(value), text=str(value).strip())
    return PaperValue(float(match[1]), float(match[2]), text=f"{match[1]} ± {match[2]}")


def key_of(record: RunRecord, paths: list[str]) -> str | None:
    """The record's row or column key: the value at the path ("/"-joined for several); None if absent."""
    values = [record.get(path) for path in paths]
    if any(value is None or isinstance(value, (dict, list)) for value in values):
        return None
    return "/".join(_as_key(value) for value in values)


def _as_key(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 15.0 from some loggers is the paper's 15
    return str(value)


@dataclass
class Cell:
    row: Row
    column: Column
    metric: str | None
    runs: list[RunRecord] = field(default_factory=list)  # one per replicate, the latest of each
    values: list[float] = field(default_factory=list)
    digits: int = 1
    within_run_std: float | None = None  # a single run's own spread of the number (the spec's std_metric)
    failures: list[RunRecord] = field(default_factory=list)
    without_metric: list[RunRecord] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else self.within_run_std

    @property
    def paper(self) -> PaperValue | None:
        return self.row.paper.get(self.column.key)

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper.mean

    @property
    def status(self) -> str:
        if self.row.reference and not self.runs:
            return "reference"
        if self.metric is None:
            return "n/a"
        if self.values:
            return "partial" if self.failures else "ok"
        if self.failures:
            return FAILED if any(run.status == FAILED for run in self.failures) else self.failures[0].status
        return "missing"

    def ours(self) -> str:
        """The cell as shown: "38.4 ± 0.3 (n=5)", "failed (ValueError: ...)", "missing", ..."""
        status = self.status
        if status in ("ok", "partial"):
            mean, std = self.mean, self.std
            assert mean is not None  # "ok" and "partial" cells have values
            text = _number(mean, self.digits) + (f" ± {_number(std, self.digits)}" if std is not None else "")
            notes = ([f"n={self.n}"] if self.n > 1 else []) + (
                [f"{len(self.failures)} failed"] if self.failures else []
            )
            return text + (f" ({'; '.join(notes)})" if notes else "")
        if status in (FAILED, "incomplete"):
            error = self.failures[0].error or status
            if status == "incomplete":  # "no summary.json": the list under the table says why
                error = error.split(":")[0]
            error = _shorten(error)
            more = f"; +{len(self.failures) - 1} more" if len(self.failures) > 1 else ""
            return f"{status} ({error}{more})"
        return {"reference": "", "n/a": "n/a"}.get(status, "missing")


def _number(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def _filled(template: str | None, row: str, column: str) -> str | None:
    """A metric path with the cell's row and column keys put in for "{row}" and "{column}"."""
    return template.replace("{row}", row).replace("{column}", column) if template else template


def _shorten(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


@dataclass
class Table:
    """One table of the paper filled with our runs."""

    spec: TableSpec
    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[str, str], Cell]
    unplaced: list[tuple[RunRecord, str]]
    records: list[RunRecord] = field(default_factory=list)  # every run of the table's group
    smoke: bool = False  # built from the smoke group (<group>-smoke)

    def cell(self, row_key: str, column_key: str) -> Cell:
        return self.cells[(row_key, column_key)]

    @property
    def datasets(self) -> dict[str, int]:
        """The datasets of the table's runs and their numbers of runs ("dataset not recorded": no config names one)."""
        return dict(Counter(record.dataset or "dataset not recorded" for record in self.records))

    @property
    def comparable(self) -> bool:
        """Whether ours may be read beside the paper's numbers: no smoke run, no run on synthetic data."""
        return not self.smoke and not any(record.synthetic for record in self.records)

    @property
    def title(self) -> str:
        """The paper's title, marked when ours are not comparable to it."""
        if self.comparable:
            return self.spec.title
        synthetic = any(record.synthetic for record in self.records)
        kind = ", ".join((["smoke runs"] if self.smoke else []) + (["synthetic data"] if synthetic else []))
        return f"{self.spec.title} [ours: {kind}]"

    def frame(self) -> pd.DataFrame:
        """One line per cell: the numbers (for analysis, and the CSV) and their rendering."""
        lines = []
        for row in self.rows:
            for column in self.columns:
                cell = self.cell(row.key, column.key)
                lines.append(
                    {
                        "table": self.spec.name,
                        "row": row.key,
                        "row_label": row.label,
                        "reference": row.reference,
                        "column": column.key,
                        "column_label": column.label,
                        "metric": cell.metric,
                        "status": cell.status,
                        "n": cell.n,
                        "n_failed": len(cell.failures),
                        "ours_mean": cell.mean,
                        "ours_std": cell.std,
                        "paper_mean": cell.paper.mean if cell.paper else None,
                        "paper_std": cell.paper.std if cell.paper else None,
                        "ours_minus_paper": cell.diff,
                        "ours": cell.ours(),
                        "paper": str(cell.paper) if cell.paper else "",
                        "runs": ";".join(run.source for run in cell.runs),
                    }
                )
        return pd.DataFrame(lines)

    def problems(self) -> list[str]:
        """What is not a number in the table, and why: failed and incomplete runs (each once, with the cells
        it leaves empty), missing runs, and runs that fit no cell."""
        lines: list[str] = []
        failed: dict[str, tuple[RunRecord, list[Cell]]] = {}
        without: dict[str, tuple[RunRecord, list[Cell]]] = {}
        for row in self.rows:
            cells = [self.cell(row.key, column.key) for column in self.columns if self.cell(row.key, column.key).metric]
            if not row.reference and cells and all(not cell.runs for cell in cells):
                lines.append(f"missing: {_row_name(self.spec, row)}: no runs")
                continue
            for cell in cells:
                for run in cell.failures:
                    failed.setdefault(run.source, (run, []))[1].append(cell)
                for run in cell.without_metric:
                    without.setdefault(run.source, (run, []))[1].append(cell)
                if not cell.runs and not row.reference:
                    lines.append(f"missing: {_row_name(self.spec, row)}, {cell.column.label}: no run")
        lines = [
            f"{run.status}: {self._where(cells)}: {run.source}: {run.error}" for run, cells in failed.values()
        ] + lines
        for run, cells in without.values():
            metrics = ", ".join(dict.fromkeys(cell.metric for cell in cells if cell.metric is not None))  # all have one
            lines.append(f"missing: {self._where(cells)}: {run.source} completed without {metrics}")
        lines += [f"not placed: {record.source} ({record.status}): {why}" for record, why in self.unplaced]
        return lines

    def _where(self, cells: list[Cell]) -> str:
        """The cells a failed run leaves empty, in few words: its row (and columns, if not all of them)."""
        rows = list(dict.fromkeys(cell.row.key for cell in cells))
        columns = list(dict.fromkeys(cell.column.label for cell in cells))
        measured = [column for column in self.columns if self.cell(cells[0].row.key, column.key).metric]
        if len(rows) == 1:
            name = _row_name(self.spec, cells[0].row)
            return name if len(columns) == len(measured) else f"{name}, {', '.join(columns)}"
        if len(columns) == 1:
            return f"{columns[0]}, {len(rows)} rows"
        return f"{len(rows)} rows x {len(columns)} columns"


def _row_name(spec: TableSpec, row: Row) -> str:
    return f"{row.label} [{row.key}]" if spec.rows_by else row.label


def build_table(spec: TableSpec, records: list[RunRecord]) -> Table:
    """Place each record of the table's group in its cells, then fill every cell from the latest run of
    each of its replicates."""
    placed: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    unplaced = []
    run_rows = [row.key for row in spec.rows if not row.reference]
    for record in records:
        found_rows = [key_of(record, spec.rows_by)] if spec.rows_by else run_rows
        found_columns = [key_of(record, spec.columns_by)] if spec.columns_by else [c.key for c in spec.columns]
        row_keys = [key for key in found_rows if key is not None]
        column_keys = [key for key in found_columns if key is not None]
        if len(row_keys) < len(found_rows) or len(column_keys) < len(found_columns):
            missing = [p for p in (spec.rows_by or []) + (spec.columns_by or []) if record.get(p) is None]
            unplaced.append((record, f"no {', '.join(missing)} in the run"))
            continue
        for row_key in row_keys:
            for column_key in column_keys:
                placed[(row_key, column_key)].append(record)

    used_rows = {row_key for row_key, _ in placed}
    used_columns = {column_key for _, column_key in placed}
    rows = [row for row in spec.rows if row.reference or row.expected or row.key in used_rows]
    columns = list(spec.columns)
    known_rows, known_columns = {row.key for row in spec.rows}, {column.key for column in columns}
    # Never dropped: rows and columns of runs that the paper does not have come last.
    rows += [Row(key, f"{key} (not in the paper)", {}) for key in sorted(used_rows - known_rows)]
    columns += [
        Column(key, f"{key} (not in the paper)", spec.default_metric) for key in sorted(used_columns - known_columns)
    ]

    cells = {}
    for row in rows:
        for column in columns:
            cell = Cell(row, column, _filled(row.metric or column.metric, row.key, column.key), digits=spec.digits)
            cell.runs = latest_per_replicate(placed.get((row.key, column.key), []), spec.replicates_by)
            for run in cell.runs:
                value = _as_number(run.get(cell.metric)) if run.status == COMPLETED and cell.metric else None
                if run.status != COMPLETED:
                    cell.failures.append(run)
                elif value is None:
                    cell.without_metric.append(run)
                else:
                    cell.values.append(value)
            if len(cell.values) == 1 and spec.std_metric:
                cell.within_run_std = _as_number(cell.runs[0].get(_filled(spec.std_metric, row.key, column.key) or ""))
            cells[(row.key, column.key)] = cell
    return Table(spec, rows, columns, cells, unplaced, records=list(records))


def _as_number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # absent, or not a number (a W&B summary can hold anything)
        return None


def latest_per_replicate(records: list[RunRecord], replicates_by: list[str]) -> list[RunRecord]:
    """One run per replicate (seed, split): the latest completed one, else the latest. A job that failed and
    was run again counts once, as its retry."""
    replicates: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        replicates[tuple(_as_key(record.get(path)) for path in replicates_by)].append(record)
    chosen = []
    for runs in replicates.values():
        completed = [run for run in runs if run.status == COMPLETED]
        chosen.append(max(completed or runs, key=lambda run: run.time))
    return sorted(chosen, key=lambda run: run.source)


def table_group(spec: TableSpec, smoke: bool = False) -> str:
    """The group whose runs fill the table: paper.yaml's, or its smoke group (`table3-smoke`)."""
    return smoke_group(spec.group) if smoke else spec.group


def build_tables(
    records: list[RunRecord],
    specs: dict[str, TableSpec] | None = None,
    *,
    smoke: bool = False,
    data: str | None = None,
) -> dict[str, Table]:
    """Every table of the paper that some record belongs to (by its group, or by its smoke group with `smoke`), in
    the paper's order. `data`: keep only the runs on "real" or on "synthetic" data; None keeps all, and refuses a
    table with runs of both kinds (InputError naming them)."""
    if data is not None and data not in DATA_KINDS:
        raise InputError(f"data must be one of {list(DATA_KINDS)} or None, got {data!r}")
    specs = load_paper() if specs is None else specs
    by_group: dict[str | None, list[RunRecord]] = defaultdict(list)
    for record in records:
        if data is None or record.synthetic == (data == "synthetic"):
            by_group[record.group].append(record)
    chosen = {name: by_group[table_group(spec, smoke)] for name, spec in specs.items()}
    mixed = [problem for name, runs in chosen.items() if (problem := mixed_data(name, runs))]
    if mixed:
        raise InputError(
            "; ".join(mixed) + ". Ours on synthetic data are not comparable to the paper's: keep one kind "
            "(zf-tables --data real, or --data synthetic)"
        )
    tables = {}
    for name, runs in chosen.items():
        if runs:
            tables[name] = build_table(specs[name], runs)
            tables[name].smoke = smoke
    return tables


def mixed_data(name: str, records: list[RunRecord]) -> str | None:
    """What is wrong with a table whose runs are on synthetic and on real data, naming the runs; None if they are
    all of one kind."""
    synthetic = [record for record in records if record.synthetic]
    real = [record for record in records if not record.synthetic]
    if not synthetic or not real:
        return None

    def named(runs: list[RunRecord]) -> str:
        names = [f"{run.source} [{run.dataset or 'dataset not recorded'}]" for run in runs[:_MAX_NAMED_RUNS]]
        more = f", +{len(runs) - _MAX_NAMED_RUNS} more" if len(runs) > _MAX_NAMED_RUNS else ""
        return ", ".join(names) + more

    return (
        f"{name} mixes {len(synthetic)} run(s) on synthetic data ({named(synthetic)}) with {len(real)} run(s) on "
        f"real data ({named(real)})"
    )


# Rendering ------------------------------------------------------------------------------------------------


def wide(table: Table) -> pd.DataFrame:
    """The table laid out as in the paper, each paper column as ours | paper | Δ (ours − paper)."""
    spec, rows, columns = table.spec, table.rows, table.columns
    if spec.transpose:  # e.g. Table 6: one line per class, the methods across
        show_ours = {
            row.key: not row.reference or any(table.cell(row.key, c.key).runs for c in columns) for row in rows
        }
        show_paper = {row.key: any(row.paper.values()) for row in rows}
        return pd.DataFrame(
            [
                {"": column.label}
                | {
                    name: text
                    for row in rows
                    for name, text in _triple(
                        row.label, table.cell(row.key, column.key), show_ours[row.key], show_paper[row.key]
                    ).items()
                }
                for column in columns
            ]
        )
    show_ours = {column.key: any(table.cell(row.key, column.key).metric for row in rows) for column in columns}
    return pd.DataFrame(
        [
            {"": f"{row.label} (reference, not run)" if row.reference else _row_name(spec, row)}
            | {
                name: text
                for column in columns
                for name, text in _triple(
                    column.label, table.cell(row.key, column.key), show_ours[column.key], True
                ).items()
            }
            for row in rows
        ]
    )


def _triple(name: str, cell: Cell, show_ours: bool, show_paper: bool) -> dict[str, str]:
    parts = {}
    if show_ours:
        parts[f"{name}: ours"] = cell.ours()
    if show_paper:
        parts[f"{name}: paper"] = str(cell.paper) if cell.paper else "—"
        if show_ours:
            diff = cell.diff
            parts[f"{name}: Δ"] = f"{diff:+.{cell.digits}f}" if diff is not None and math.isfinite(diff) else ""
    return parts


def _caption(table: Table) -> list[str]:
    spec = table.spec
    synthetic = any(record.synthetic for record in table.records)
    return [
        _data_line(table),
        f"Source: {spec.source}. Ours: mean ± sample std (ddof=1) over n runs (seeds / splits)"
        + ("; a single run's ± is its own spread (see below)" if spec.std_metric else "")
        + "; "
        "Δ = ours − paper; — = no number in the paper.",
        # The note describes the real runs ("our test runs on the ImageNet 2012 validation set"): not these.
        *([spec.note] if spec.note and not synthetic else []),
    ]


def _data_line(table: Table) -> str:
    """The datasets of our runs, and whether they may be compared with the paper at all."""
    counts = ", ".join(
        f"{DATASET_NAMES.get(name, name)} ({count} run{'' if count == 1 else 's'})"
        for name, count in table.datasets.items()
    )
    line = f"Data of our runs: {counts}"
    if table.smoke:
        line += f", smoke runs (group {table_group(table.spec, smoke=True)})"
    if not table.comparable:
        line += ": not comparable to the paper (its numbers and Δ are shown to check the pipeline only)"
    return line + "."


def to_markdown(table: Table) -> str:
    frame = wide(table)
    lines = [f"## {table.title}", "", *_caption(table), ""]
    lines.append("| " + " | ".join(_markdown_escape(c) for c in frame.columns) + " |")
    lines.append("|" + "|".join("---" for _ in frame.columns) + "|")
    lines += ["| " + " | ".join(_markdown_escape(v) for v in values) + " |" for values in frame.itertuples(index=False)]
    problems = table.problems()
    if problems:
        lines += ["", f"Not complete ({len(problems)}):", *[f"- {_markdown_escape(p)}" for p in problems]]
    return "\n".join(lines) + "\n"


def _markdown_escape(text: object) -> str:
    return str(text).replace("|", "\\|")


def to_latex(table: Table) -> str:
    frame = wide(table)
    frame = frame.map(latex_escape).rename(columns=latex_escape)
    body = frame.to_latex(
        index=False,
        escape=False,
        caption=latex_escape(table.title),
        label=f"tab:{table.spec.name}",
        column_format="l" + "r" * (len(frame.columns) - 1),
    )
    lines = [body.rstrip("\n"), *(f"% {line}" for line in _caption(table))]
    problems = table.problems()
    if problems:
        lines += [
            f"Not complete ({len(problems)}):",
            r"\begin{itemize}",
            *(rf"\item {latex_escape(p)}" for p in problems),
            r"\end{itemize}",
        ]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "|": r"\textbar{}",
        "<": r"\textless{}",
        ">": r"\textgreater{}",
    }
    return _latex_symbols("".join(replacements.get(char, char) for char in str(text)))


def _latex_symbols(text: str) -> str:
    for char, latex in {"±": r"$\pm$", "Δ": r"$\Delta$", "−": "-", "—": "---", "…": r"\ldots{}"}.items():
        text = text.replace(char, latex)
    return text


def to_csv(table: Table) -> str:
    return table.frame().to_csv(index=False)


def wandb_rows(table: Table) -> list[list[Any]]:
    """The table as the lines of a W&B table (columns WANDB_COLUMNS), one per cell: numbers, None where there is
    none (the status says why)."""
    lines = []
    for row in table.rows:
        label = f"{row.label} (reference, not run)" if row.reference else _row_name(table.spec, row)
        for column in table.columns:
            cell = table.cell(row.key, column.key)
            paper = cell.paper.mean if cell.paper else None
            lines.append([label, column.label, cell.mean, paper, cell.diff, cell.n, cell.status])
    return lines


def write_table(table: Table, out_dir: str | Path) -> dict[str, Path]:
    """<out_dir>/<table>.md, .tex and .csv; returns them by format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    renderers = {"md": to_markdown, "tex": to_latex, "csv": to_csv}
    written = {}
    for suffix in FORMATS:
        path = out_dir / f"{table.spec.name}.{suffix}"
        atomic_write_text(renderers[suffix](table), path)
        written[suffix] = path
    return written
