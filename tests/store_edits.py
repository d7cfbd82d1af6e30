"""Reading and editing COPIES of run stores in the experiments' tests (tests/conftest.copy_store
makes the copy): a run's config, metrics rows and summary, and the check that an analysis
refuses bad input with one `error:` line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO


def config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def select_runs(root: Path, **where: Any) -> list[Path]:
    """The run folders below `root` (sorted) whose config has every a__b=value (a.b) given;
    a value None matches any."""
    def value(cfg: dict, dotted: str) -> Any:
        for key in dotted.split("__"):
            cfg = cfg[key]
        return cfg

    dirs = sorted(p.parent for p in root.rglob("summary.json"))
    return [d for d in dirs if all(v is None or value(config(d), k) == v
                                   for k, v in where.items())]


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def set_config(run_dir: Path, **keys: Any) -> None:
    """Set config keys given as a__b=value (a.b)."""
    cfg = config(run_dir)
    for dotted, value in keys.items():
        *parents, leaf = dotted.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))


def update_summary(run_dir: Path, fields: dict[str, Any]) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps(summary | fields))


def assert_refuses(main: Callable[[list[str]], int], root: Path, out: Path,
                   capsys: pytest.CaptureFixture, message: str) -> None:
    """An analysis's `main` on `root`: exit code 2, an error that says `message`, and no
    `out` folder (refused before anything is written)."""
    assert main([str(root), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def assert_refuses_empty_folder(experiment: str, tmp_path: Path, message: str) -> None:
    """`python -m bnrepro.analyse <experiment>` on an empty folder: exit code 2 and one
    `error:` line that says `message`."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "bnrepro.analyse", experiment, str(empty),
                             "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
