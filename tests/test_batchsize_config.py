"""The batch-size experiments' configs: every cell of their sweeps is valid and follows the
protocol the config comments state (same examples, linear rate scaling, evaluations, Alg. 2
images, Batch Renorm's schedule as fractions of the run), and seeds share a population."""

import pytest

from bnrepro.config import CONF_DIR, compose_config, floor_divided
from bnrepro.validation import config_problems
from hydra_plugins.bnrepro_population.population_launcher import population_key
from tests.conftest import sweep_params


def sweep(experiment: str) -> dict[str, list[str]]:
    """The experiment file's own sweep axes (hydra.sweeper.params)."""
    return sweep_params(CONF_DIR / "experiment" / f"{experiment}.yaml")


@pytest.mark.parametrize("experiment", ["batchsize_mnist", "batchsize_cifar"])
def test_every_cell_is_valid_and_follows_the_protocol(experiment):
    """Issue 26: one SGD batch and one rate; BN and Batch Renorm swept over the statistics
    (ghost) batch b; GN, LN and no norm (the Makefile's BATCHSIZE_FLAT) once, at b = 0."""
    axes = sweep(experiment)
    assert set(axes) == {"model.norm", "model.bn_ghost_batch", "seed"}
    assert set(axes["model.norm"]) == {"bn", "brn"}
    assert len(axes["seed"]) >= 3
    ghosts = sorted(int(b) for b in axes["model.bn_ghost_batch"])
    assert ghosts[0] == 2 and 32 in ghosts  # Wu & He's smallest and typical batch
    runs = [(norm, b) for norm in axes["model.norm"] for b in ghosts]
    runs += [(norm, 0) for norm in ("gn", "ln", "none")]
    steps = set()
    for norm, ghost in runs:
        cfg = compose_config([f"experiment={experiment}", f"model.norm={norm}",
                              f"model.bn_ghost_batch={ghost}"])
        s, t = cfg.batch_scaling, cfg.trainer
        assert t.batch_size == s.reference_batch == 32 and cfg.optim.lr == s.base_lr
        assert t.max_steps * t.batch_size == s.examples
        steps.add(t.max_steps)
        assert t.eval_every * s.evaluations == t.max_steps
        assert t.test_every == t.max_steps  # the test set at step 0 and at the end
        assert t.population_batches * t.batch_size == s.alg2_examples
        assert cfg.model.brn.warmup_steps + cfg.model.brn.relax_steps <= t.max_steps
        assert cfg.probe.inference_gap is True
        if experiment == "batchsize_cifar":  # the degenerate FC-layer BN is not in this arm
            assert cfg.model.classifier_norm is False
        assert config_problems(cfg) == [], (experiment, norm, ghost)
    assert len(steps) == 1  # every run the same steps


def test_seeds_train_as_one_population_per_norm_and_ghost_batch():
    def key(*overrides: str) -> str:
        return population_key(compose_config(["experiment=batchsize_mnist", *overrides]))

    same = {key("seed=0", "model.bn_ghost_batch=8"), key("seed=2", "model.bn_ghost_batch=8")}
    assert len(same) == 1
    assert key("seed=0", "model.bn_ghost_batch=16") not in same
    assert key("seed=0", "model.bn_ghost_batch=0", "model.norm=gn") not in same


def test_floor_divided_gives_whole_counts():
    assert floor_divided(8192, 256) == 32 and isinstance(floor_divided(8192, 256), int)
    assert floor_divided(3072, 7) == 438
    with pytest.raises(ValueError, match="divisor"):
        floor_divided(10, 0)
