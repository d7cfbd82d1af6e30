"""Writes that are all-or-nothing: a reader never sees half a file, a kill never leaves one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[Path], Any], durable: bool = False) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`.

    `durable`: fsync the file before the rename and the directory after it, so the new
    content survives a power loss too, not only a killed process (used for checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files a killed atomic_write left in `directory`; returns them."""
    stale = [p for p in Path(directory).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path, durable: bool = False) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp), durable)


def atomic_save_figure(fig: Any, stem: str | Path, formats: tuple[str, ...] = ("png", "pdf"),
                       dpi: int = 150) -> list[Path]:
    """Save a matplotlib figure as <stem>.png and <stem>.pdf, each written atomically."""
    stem = Path(stem)
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in formats]
    for path, ext in zip(paths, formats, strict=True):
        atomic_write(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=dpi))
    return paths
