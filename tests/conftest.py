"""Shared fixtures. Tests use real data from any source that works: the prepared cache under
data/, the offline mirror named by BNREPRO_DATA_MIRROR (CI points it at ../shared/datasets), or
torchvision's download. Without data a test skips with the reason; under CI (env CI set) it
fails instead, so a CI without data cannot pass by skipping everything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one torch thread each, in the worker
    # and in the training subprocesses it starts (set before torch is imported), since
    # processes of two threads each side by side spin-wait on each other (docs/costs.md).
    os.environ["OMP_NUM_THREADS"] = "1"

# Tests run on the CPU whatever the machine has (their expectations are CPU floats and CPU
# random streams): no GPU is visible to this process or to the training subprocesses it starts
# (set before torch is imported). BNREPRO_TEST_GPU=1 (make gpu-check) leaves the GPUs visible,
# for the tests marked `gpu`, which are skipped where CUDA is not usable.
if os.environ.get("BNREPRO_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402

from bnrepro.data.datasets import Dataset, DataUnavailableError, load_dataset  # noqa: E402

# Session fixtures that train a run store: under pytest-xdist every test that reads one runs
# on the same worker (xdist_group, `--dist loadgroup`), so each store is trained only once.
STORE_FIXTURES = {"fig2_store", "santurkar_store", "batchsize_store"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a usable CUDA device and BNREPRO_TEST_GPU=1 "
                                     "(make gpu-check runs these)")
    for item in items:
        if STORE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("trained_stores"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def seeded_global_rng() -> None:
    """Each test starts from the same global torch RNG state, whichever tests ran before it
    on its xdist worker: an unseeded draw once made a margin check fail on one order only."""
    torch.manual_seed(0)


def data_missing(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere: a machine without data may skip, CI may not."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide the data: {reason}")
    pytest.skip(reason)


def compose_dln(overrides: list[str]):
    """conf/dln.yaml (the deep linear net's own config, not train.yaml) with `overrides`."""
    from hydra import compose, initialize_config_dir

    from bnrepro.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("dln", overrides=overrides)


def sweep_params(*configs: Path) -> dict[str, list[str]]:
    """The sweep axes (hydra.sweeper.params) of these config files, each axis as its list of
    values; a later file's axes replace an earlier one's, as Hydra merges a profile over its
    experiment."""
    import yaml

    params: dict = {}
    for path in configs:
        tree = yaml.safe_load(path.read_text()) or {}
        params |= tree.get("hydra", {}).get("sweeper", {}).get("params", {})
    return {key: str(values).split(",") for key, values in params.items()}


def require_dataset(name: str) -> Dataset:
    """`name` loaded into the repo's cache (where training subprocesses read it), else the
    test is skipped (failed under CI) with the reason."""
    try:
        return load_dataset(name, REPO / "data")
    except DataUnavailableError as err:
        data_missing(str(err))


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    """Real MNIST from the cache, the mirror or a download, cached in <repo>/data.

    Training subprocesses run from the repo root with dataset.root=data, so once this loads
    they find the same verified cache and need no mirror of their own.
    """
    try:
        return load_dataset("mnist", REPO / "data")
    except DataUnavailableError as err:
        data_missing(str(err))


@pytest.fixture(scope="session")
def mirror(mnist: Dataset) -> Dataset:
    """Alias of `mnist` for tests that only need MNIST to be loadable (the training tests):
    the name is older than the cache/download fallback and kept so they need no change."""
    return mnist


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    """The offline mirror folder itself, for tests of reading the mirror files."""
    path = Path(os.environ.get("BNREPRO_DATA_MIRROR", "/nonexistent"))
    if not (path / "mnist").is_dir():
        data_missing(f"needs the offline mirror (BNREPRO_DATA_MIRROR={path} has no mnist/)")
    return path


@pytest.fixture(scope="session")
def run_train():
    """Run `python -m bnrepro.train <args>` in a subprocess from the repo root, as a user would
    (session-scoped so that fixtures of any scope can train their run stores)."""

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


def stop_before_step(monkeypatch: pytest.MonkeyPatch, step: int,
                     error: type[BaseException] = RuntimeError,
                     record: list[int] | None = None) -> None:
    """Make the trainer raise `error` once, right before the forward pass of `step` (where it
    sets the norms' step): a kill at a known point. `record` collects every step it sees."""
    from bnrepro import train
    from bnrepro.norms import norm_step_setter

    pending = [step]

    def setter(model):
        set_step = norm_step_setter(model)

        def stopping(s: int) -> None:
            if record is not None:
                record.append(s)
            if pending and s == pending[0]:
                pending.clear()
                raise error("stopped for the test")
            set_step(s)

        return stopping

    monkeypatch.setattr(train, "norm_step_setter", setter)


FIG2_DATASET = "cifar10-jpeg"
FIG2_TINY = ["model.width_multiplier=0.25", "trainer.max_steps=20", "trainer.eval_every=10",
             "trainer.progress=false", "trainer.population_batches=2", "dataset.val_size=1000",
             "fig2_baseline.crop_padding=0"]  # same for every variant: only the run time changes


@pytest.fixture(scope="session")
def fig2_store(tmp_path_factory, run_train) -> Path:
    """Real fig2_cifar runs on cifar10-jpeg, trained once per session for bnrepro.experiments.fig2
    and the fig2 notebook: Baseline and BN-x5, seeds 0 and 1, 20 steps, evaluated every 10."""
    require_dataset(FIG2_DATASET)  # the cache the training subprocess reads
    sweep = tmp_path_factory.mktemp("fig2") / f"fig2_{FIG2_DATASET}"
    run_train("-m", "experiment=fig2_cifar", f"dataset={FIG2_DATASET}",
              "fig2_variant=baseline,bn_x5", "seed=0,1", *FIG2_TINY, f"hydra.sweep.dir={sweep}")
    assert len(list(sweep.rglob("summary.json"))) == 4
    return sweep


SANTURKAR_TINY = ["model.hidden=[16,16]", "trainer.max_steps=20", "trainer.eval_every=10",
                  "trainer.test_every=20", "trainer.population_batches=2",
                  "probe.num_examples=120",
                  "dataset.val_size=1000", "trainer.progress=false", "measures.ics.every=10",
                  "measures.landscape.every=10", "measures.landscape.points=3"]


@pytest.fixture(scope="session")
def santurkar_store(tmp_path_factory, mnist, run_train) -> Path:
    """Real runs: every norm of the experiment, seeds 0, 1 and 2 (the fewest with which the
    verdict rule, bnrepro.claims.compare, can decide), 20 steps, evaluated every 10."""
    sweep = tmp_path_factory.mktemp("santurkar") / "santurkar_mnist"
    run_train("-m", "experiment=santurkar_mnist", "seed=0,1,2", *SANTURKAR_TINY,
              f"hydra.sweep.dir={sweep}")
    assert len(list(sweep.rglob("summary.json"))) == 3 * 7
    return sweep


BATCHSIZE_TINY = ["model.hidden=[20]", "batch_scaling.examples=64",
                  "batch_scaling.evaluations=2", "batch_scaling.alg2_examples=64",
                  "dataset.val_size=500", "trainer.test_examples=200", "trainer.progress=false"]


@pytest.fixture(scope="session")
def batchsize_store(tmp_path_factory, mnist, run_train) -> Path:
    """Real runs at SGD batch 32 (2 steps), seeds 0, 1, 2: BN and Batch Renorm with ghost
    batches of 2 and 32, GN once."""
    sweep = tmp_path_factory.mktemp("batchsize") / "batchsize_mnist"
    run_train("-m", "experiment=batchsize_mnist", "model.norm=bn,brn",
              "model.bn_ghost_batch=2,32", "seed=0,1,2", *BATCHSIZE_TINY,
              f"hydra.sweep.dir={sweep}")
    run_train("-m", "experiment=batchsize_mnist", "model.norm=gn", "model.bn_ghost_batch=0",
              "seed=0,1,2", *BATCHSIZE_TINY, f"hydra.sweep.dir={sweep}")
    assert len(list(sweep.rglob("summary.json"))) == 15
    return sweep


def copy_store(src: Path, dst: Path) -> Path:
    """A copy of a run store to edit, without checkpoints, Hydra records and locks."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pt", ".hydra", ".lock"))
    return dst
