"""The wall time a tier's reproduction has taken, over every invocation that worked on it.

`make reproduce-long` runs for hours, over several working sessions: the end of one may kill it
without warning, and the same command resumes it in the next. Each invocation keeps its own
entry in <runs>/logs/time.json (seconds so far, per part, and the machine), rewritten every
progress line, so a kill loses at most one interval of the count. `total` sums the entries:
the tier's measured wall time, and what each part took. The run store owns the file: a tier
trained again from an empty runs/<tier>/ starts its count again.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bnrepro.atomic import atomic_write_json


@dataclass
class TierTime:
    """The sum of a ledger's invocations."""

    seconds: float
    invocations: int
    parts: dict[str, float]  # part -> seconds, in the order parts first ran
    machines: list[str]      # each machine that ran an invocation, once

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "invocations": self.invocations,
                "parts": {k: round(v, 1) for k, v in self.parts.items()},
                "machines": self.machines}


def read(path: Path) -> list[dict]:
    """The invocations recorded in `path` ([] when there is none yet)."""
    try:
        entries = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a time ledger ({err}); move it aside to start the "
                         f"count again") from err
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a time ledger (a list of invocations); move it aside")
    return entries


def total(entries: list[dict]) -> TierTime:
    parts: dict[str, float] = {}
    for entry in entries:
        for part, seconds in entry["parts"].items():
            parts[part] = parts.get(part, 0.0) + seconds
    machines = list(dict.fromkeys(e["machine"] for e in entries))
    return TierTime(sum(e["seconds"] for e in entries), len(entries), parts, machines)


def duration(seconds: float) -> str:
    """1 h 05 min, 12 min, 40 s."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


class Ledger:
    """This invocation's entry in the ledger at `path`: `tick(part)` charges the seconds since
    the last tick to `part` and rewrites the file; `close(status)` ends the entry. Thread-safe:
    the progress thread ticks while the main thread moves from part to part."""

    def __init__(self, path: Path, machine: str, clock=time.monotonic) -> None:
        self.path, self.clock = Path(path), clock
        self.earlier = read(self.path)
        self.entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
                      "seconds": 0.0, "parts": {}, "status": "running"}
        self.start = self.last = clock()
        self.lock = threading.Lock()
        self._write()

    def tick(self, part: str) -> None:
        with self.lock:
            now = self.clock()
            parts = self.entry["parts"]
            parts[part] = round(parts.get(part, 0.0) + now - self.last, 3)
            self.entry["seconds"] = round(now - self.start, 3)
            self.last = now
            self._write()

    def close(self, part: str, status: str) -> None:
        self.tick(part)
        with self.lock:
            self.entry["status"] = status
            self._write()

    def total(self) -> TierTime:
        with self.lock:
            return total([*self.earlier, self.entry])

    def _write(self) -> None:
        atomic_write_json(self.path, [*self.earlier, self.entry])
