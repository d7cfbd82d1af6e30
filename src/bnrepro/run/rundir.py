"""Where a run writes: a directory derived from its command-line overrides.

The same command therefore finds the same directory again, and resumes an interrupted run
or skips a finished one, for single runs and ad-hoc multiruns alike, not only for the
experiment configs. `fresh=true` asks for a new, timestamped directory instead.
"""

from __future__ import annotations

import functools
import hashlib
import time

MAX_NAME = 150  # file systems cap a name at 255 bytes; long override lists are shortened


def run_subdir(override_dirname: str) -> str:
    """`model.norm=bn,seed=0` -> itself; no overrides -> `defaults`; too long -> cut + hash."""
    name = override_dirname or "defaults"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[:MAX_NAME - 13]}-{digest}"
    return name


def fresh_suffix(fresh: bool) -> str:
    """'' for the deterministic directory, '_<timestamp>' when `fresh` (a sibling of the
    deterministic one, never inside it)."""
    return _process_timestamp() if fresh else ""


@functools.cache
def _process_timestamp() -> str:
    """One per process, however often (and with whatever config) the run dir is resolved."""
    return time.strftime("_%Y-%m-%d_%H-%M-%S")
