"""Writes that are all-or-nothing: a reader never sees half a file, a kill never leaves one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_figure(fig: Any, stem: str | Path, formats: tuple[str, ...] = ("png", "pdf"),
                       dpi: int = 150) -> list[Path]:
    """Save a matplotlib figure as <stem>.png and <stem>.pdf, each written atomically."""
    stem = Path(stem)
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in formats]
    for path, ext in zip(paths, formats, strict=True):
        atomic_write(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=dpi))
    return paths
