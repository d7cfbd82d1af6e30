"""The batch-size experiments' configs: every cell of their sweeps is valid and follows the
protocol the config comments state (same examples, linear rate scaling, evaluations, Alg. 2
images, Batch Renorm's schedule as fractions of the run), and seeds share a population."""

import pytest
import yaml

from bnrepro.config import CONF_DIR, compose_config, floor_divided
from bnrepro.norms import NORMS
from bnrepro.validation import config_problems
from hydra_plugins.bnrepro_population.population_launcher import population_key


def sweep(experiment: str) -> dict[str, list[str]]:
    """The experiment file's own sweep axes (hydra.sweeper.params)."""
    params = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    return {k: str(v).split(",") for k, v in params["hydra"]["sweeper"]["params"].items()}


@pytest.mark.parametrize("experiment", ["batchsize_mnist", "batchsize_cifar"])
def test_every_cell_is_valid_and_follows_the_protocol(experiment):
    axes = sweep(experiment)
    assert set(axes) == {"model.norm", "trainer.batch_size", "seed"}
    assert {"bn", "brn", "gn", "ln", "none"} <= set(axes["model.norm"])
    assert len(axes["seed"]) >= 3
    batches = sorted(int(b) for b in axes["trainer.batch_size"])
    assert batches[0] == 2 and 32 in batches  # Wu & He's smallest and typical batch
    for batch in batches:
        cfg = compose_config([f"experiment={experiment}", f"trainer.batch_size={batch}"])
        s, t = cfg.batch_scaling, cfg.trainer
        assert cfg.optim.lr == pytest.approx(s.base_lr * batch / s.reference_batch)
        assert t.max_steps * batch == s.examples  # the same examples at every batch size
        assert t.eval_every * s.evaluations == t.max_steps
        assert t.test_every == t.max_steps  # the test set at step 0 and at the end
        assert t.population_batches * batch == s.alg2_examples
        assert cfg.model.brn.warmup_steps == t.max_steps // s.brn_warmup_divisor
        assert cfg.model.brn.relax_steps == t.max_steps // s.brn_relax_divisor
        assert cfg.probe.inference_gap is True
        for norm in axes["model.norm"]:
            assert norm in NORMS
            cfg.model.norm = norm
            assert config_problems(cfg) == [], (experiment, batch, norm)


def test_seeds_train_as_one_population_per_norm_and_batch_size():
    def key(*overrides: str) -> str:
        return population_key(compose_config(["experiment=batchsize_mnist", *overrides]))

    same = {key("seed=0", "trainer.batch_size=8"), key("seed=2", "trainer.batch_size=8")}
    assert len(same) == 1
    assert key("seed=0", "trainer.batch_size=16") not in same
    assert key("seed=0", "trainer.batch_size=8", "model.norm=gn") not in same


def test_floor_divided_gives_whole_counts():
    assert floor_divided(8192, 256) == 32 and isinstance(floor_divided(8192, 256), int)
    assert floor_divided(3072, 7) == 438
    with pytest.raises(ValueError, match="divisor"):
        floor_divided(10, 0)
