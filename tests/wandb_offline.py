"""Read what wandb wrote in offline mode: the transaction log offline-run-*/run-<id>.wandb (a
leveldb-style log of protobuf Records, the file `wandb sync` uploads). In offline mode wandb
0.31 writes no files/config.yaml or wandb-summary.json; this log is the only complete record
of a run's config, history, summary and metric definitions (media files lie beside it, under
files/media/, named by the history's `path`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb


def read_records(wandb_file: Path) -> list[pb.Record]:
    """The records of a finished .wandb file: a 7-byte header (":W&B", magic, version), then
    32 KiB blocks of chunks, each with a 7-byte header (crc32, length LE16, type) where type
    1 is a whole record and 2/3/4 the first/middle/last piece of one."""
    data = wandb_file.read_bytes()
    assert data[:4] == b":W&B", wandb_file
    records, pieces, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the writer pads a block's tail shorter than a header
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pb.Record.FromString(pieces))
            pieces = b""
    return records


def finished_records(wandb_file: Path, timeout_s: float = 20.0) -> list[pb.Record]:
    """The file's records once its run's exit record is on disk: wandb-core writes the log in
    the background, and run.finish() can return before the last records reach the file."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_records(wandb_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{wandb_file} has no exit record"
        time.sleep(0.05)


def offline_runs(run_dir: Path) -> list[tuple[Path, list[pb.Record]]]:
    """Every offline-run-* folder under run_dir with its records, oldest process first."""
    runs = [(folder, finished_records(next(folder.glob("run-*.wandb"))))
            for folder in (run_dir / "wandb").glob("offline-run-*")]
    return sorted(runs, key=lambda run: run_record(run[1]).start_time.ToDatetime())


def run_record(records: list[pb.Record]) -> pb.RunRecord:
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def of_type(records: list[pb.Record], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def config(records: list[pb.Record]) -> dict[str, Any]:
    """The run's config as sent (the Run record's, then any later config updates), without
    wandb's own `_wandb` key."""
    out: dict[str, Any] = {}
    for cfg in [run_record(records).config, *of_type(records, "config")]:
        for item in cfg.update:
            out[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    out.pop("_wandb", None)
    return out


def history(records: list[pb.Record]) -> list[dict[str, Any]]:
    """One dict per logged row: key -> value (media: their JSON description, nested keys
    joined by '.' below the logged key, e.g. 'figures/x.path')."""
    rows = []
    for h in of_type(records, "history"):
        row: dict[str, Any] = {}
        for item in h.item:
            row[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
        rows.append(row)
    return rows


def summary(records: list[pb.Record]) -> dict[str, Any]:
    """The final summary: every summary update applied in order (nested keys joined by '.')."""
    out: dict[str, Any] = {}
    for s in of_type(records, "summary"):
        for item in s.update:
            out[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    return out
