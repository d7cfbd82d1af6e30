"""One process per run directory at a time.

Two processes training into one directory (a sweep launched twice, a requeued job while the
old one still runs) would interleave their rows in one metrics.jsonl. Each run directory is
therefore held through an advisory `flock` on `<run_dir>/.lock` for as long as a process
trains in it. The kernel drops the lock when its holder dies, however it dies, so a stale
lock of a killed process never blocks a rerun. The file itself is left in place (deleting
it would race with a process about to lock it) and records who holds it, for the message.
flock works on local disks and on most cluster file systems (NFSv4, Lustre, GPFS).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"

# Locks this process holds: resolved run dir -> [open lock file, hold count]. flock locks
# belong to an open file, so the same process locking a directory twice must reuse it.
_held: dict[Path, list] = {}


class RunDirectoryBusy(RuntimeError):
    """Another live process is training in this run directory."""


def acquire(run_dir: str | Path) -> None:
    """Hold `run_dir` for this process, or raise RunDirectoryBusy naming the holder."""
    key = Path(run_dir).resolve()
    if key in _held:
        _held[key][1] += 1
        return
    key.mkdir(parents=True, exist_ok=True)
    handle = open(key / LOCK_FILE, "a+")  # noqa: SIM115 (kept open while the lock is held)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirectoryBusy(
            f"{key} is in use by {holder}; wait for it to finish (or stop it), then rerun "
            "the same command: it resumes from the last checkpoint") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)[:300]}))
    handle.flush()
    _held[key] = [handle, 1]


def release(run_dir: str | Path) -> None:
    key = Path(run_dir).resolve()
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        entry[0].close()


@contextmanager
def holding(run_dirs: Sequence[str | Path]) -> Iterator[None]:
    """Hold every directory of `run_dirs`, or none: a busy one raises before anything else."""
    taken = []
    try:
        for run_dir in run_dirs:
            acquire(run_dir)
            taken.append(run_dir)
        yield
    finally:
        for run_dir in taken:
            release(run_dir)
