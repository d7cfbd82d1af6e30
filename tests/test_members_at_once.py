"""trainer.members_at_once: a big population trains as chunks one after another, to the same
training floats as the whole population, and evaluates as the whole does."""

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from bnrepro.config import compose_config
from bnrepro.data.datasets import DataUnavailableError, load_dataset
from bnrepro.run import checkpoint
from bnrepro.run.store import read_metrics, read_summary
from bnrepro.train import balanced_chunks, train_population
from bnrepro.validation import ConfigError, validate
from tests.conftest import FIG2_DATASET, FIG2_TINY, REPO, data_missing


@pytest.mark.parametrize(("n", "limit", "sizes"), [
    (9, 4, [3, 3, 3]), (8, 4, [4, 4]), (7, 3, [3, 2, 2]), (4, None, [4]), (4, 4, [4]),
    (3, 2, [3]),  # never a member alone where the group was not: 3 by 2 stays together
    (5, 2, [3, 2]), (2, 1, [2])])
def test_chunks_are_balanced_in_order_and_never_leave_a_member_alone(n, limit, sizes):
    chunks = balanced_chunks(list(range(n)), limit)
    assert [len(c) for c in chunks] == sizes
    assert [k for c in chunks for k in c] == list(range(n))


def population(tmp_path, name, overrides, seeds=range(4)):
    """The trained members: (run directory, config) each."""
    cfgs = [compose_config([*overrides, f"seed={s}"]) for s in seeds]
    dirs = [tmp_path / name / str(s) for s in seeds]
    train_population(cfgs, dirs)
    return list(zip(dirs, cfgs, strict=True))


# case -> (overrides, whether evaluations must match to the bit too). The CNN's small
# evaluation memory budget cuts a chunk's forward passes differently from the whole
# population's unless they are sized for the whole: its byte check fails without that sizing.
# The MLP's evaluations agree to float rounding only: a shared input's first layer is one
# product over the members a chunk holds, and under AVX2 kernels (ATEN_CPU_CAPABILITY=avx2
# MKL_ENABLE_INSTRUCTIONS=AVX2) its blocking depends on how many they are.
CASES = {
    "mlp": (["experiment=fig1_mnist", "debug=smoke"], False),
    "cnn": (["experiment=fig2_cifar", f"dataset={FIG2_DATASET}", "fig2_variant=bn_x5",
             *FIG2_TINY, "trainer.eval_memory_mb=2"], True),
}
TRAINING = ("step", "train/loss", "train/acc")


def final_state(run_dir: Path, cfg: DictConfig) -> dict:
    saved = checkpoint.load(run_dir, cfg)  # the newest: the final one
    assert saved["finished"]
    state = saved["state"]
    return {**state["model"], **{f"momentum.{i}": v
                                 for i, v in enumerate(state["optimizer"]["momentum"])}}


@pytest.mark.parametrize("net", CASES)
def test_a_population_in_chunks_trains_the_same_floats_as_in_one_piece(tmp_path, mirror, net):
    """Training is the chunks' own computation: final weights, momentum, BN's moving averages
    and the logged training loss and accuracy to the bit; evaluations as CASES says."""
    if net == "cnn":
        try:
            load_dataset(FIG2_DATASET, REPO / "data")
        except DataUnavailableError as err:
            data_missing(str(err))
    overrides, exact_evaluation = CASES[net]
    whole = population(tmp_path, "whole", overrides)
    chunked = population(tmp_path, "chunked", [*overrides, "trainer.members_at_once=2"])
    for (a, cfg_a), (b, cfg_b) in zip(whole, chunked, strict=True):
        if exact_evaluation:
            assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
        assert read_summary(a)["population_size"] == 4
        assert read_summary(b)["population_size"] == 2  # it did train in chunks
        state_a, state_b = final_state(a, cfg_a), final_state(b, cfg_b)
        assert state_a.keys() == state_b.keys()
        # Alg. 2's population statistics come from evaluation passes, not from training
        trained = [k for k in state_a if ".population_" not in k]
        assert len(trained) < len(state_a)
        assert all(torch.equal(state_a[k], state_b[k]) for k in trained)
        assert all(torch.allclose(state_a[k], state_b[k], rtol=1e-5, atol=1e-6)
                   for k in state_a)
        rows_a, rows_b = read_metrics(a), read_metrics(b)
        assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
        for row_a, row_b in zip(rows_a, rows_b, strict=True):
            assert row_a.keys() == row_b.keys()
            assert {k: row_a[k] for k in TRAINING if k in row_a} == \
                {k: row_b[k] for k in TRAINING if k in row_b}
            assert row_b == pytest.approx(row_a, rel=1e-4, abs=1e-5)


def test_a_bad_limit_is_one_clear_error():
    cfg = compose_config(["experiment=fig1_mnist", "trainer.members_at_once=0"])
    with pytest.raises(ConfigError, match="trainer.members_at_once.*must be null or >= 1"):
        validate(cfg)
