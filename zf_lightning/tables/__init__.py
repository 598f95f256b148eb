"""The paper's tables (2-7) rebuilt from our runs, with the paper's numbers beside ours: `zf-tables`.

results.py reads runs (summary.json files, or W&B) into records; build.py maps them to the cells that
paper.yaml defines, aggregates, and renders Markdown, LaTeX and CSV; cli.py is the command.
"""

from zf_lightning.tables.build import build_table, build_tables, load_paper, write_table
from zf_lightning.tables.results import RunRecord, find_runs, wandb_runs

__all__ = ["RunRecord", "build_table", "build_tables", "find_runs", "load_paper", "wandb_runs", "write_table"]
