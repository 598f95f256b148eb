"""Reading what an offline W&B run wrote: the records of its `run-<id>.wandb` file.

The file is W&B's append-only log (LevelDB's log format, with a 7-byte ":W&B" header): 32 KiB blocks of records,
each a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last piece) and a piece of a
serialised `wandb_internal_pb2.Record`. Parsed here so that tests check what a run logged (history, summary,
metric definitions, config, artifacts) rather than search its bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER, FILE_HEADER = 32768, 7, 7


def wandb_records(run_file: Path) -> list[pb.Record]:
    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    records, pieces, position = [], b"", FILE_HEADER
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        piece = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (1, 2):
            pieces = piece
        elif kind in (3, 4):
            pieces += piece
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records


def offline_run_file(run_dir: Path) -> Path:
    (found,) = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    return found


def summary_of(records: list[pb.Record]) -> dict[str, Any]:
    """The run's final summary: every summary update applied in order (nested keys joined with "/")."""
    summary: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
    return summary


def config_of(records: list[pb.Record]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                key = item.key or "/".join(item.nested_key)
                config[key] = json.loads(item.value_json)
    return config


def of_type(records: list[pb.Record], kind: str) -> list[Any]:
    return [getattr(record, kind) for record in records if record.WhichOneof("record_type") == kind]
