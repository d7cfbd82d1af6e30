"""Shared fixtures. Tests use real data: set BNREPRO_DATA_MIRROR to an offline copy (CI points
it at ../shared/datasets) or have internet for torchvision's download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnrepro.data import Dataset, load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    return load_dataset("mnist", REPO / "data")


@pytest.fixture
def run_train():
    """Run `python -m bnrepro.train <args>` in a subprocess from the repo root, as a user would."""

    def run(*args: str, check: bool = True, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), **(env or {})}
        env = {k: v for k, v in env.items() if v is not None}  # None removes a variable
        result = subprocess.run([sys.executable, "-m", "bnrepro.train", *args], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=900)
        if check and result.returncode != 0:
            raise AssertionError(f"train failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    return run


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline mirror: required in CI, skipped (with a reason) on a machine without it."""
    path = Path(os.environ.get("BNREPRO_DATA_MIRROR", "/nonexistent"))
    if not (path / "mnist").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the offline mirror; BNREPRO_DATA_MIRROR={path}")
        pytest.skip("needs the offline mirror (set BNREPRO_DATA_MIRROR)")
    return path
