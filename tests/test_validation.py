"""Bad configs fail before data is loaded: one line naming key, value and what is allowed."""

import pytest

from bnrepro.config import compose_config
from bnrepro.validation import ConfigError, validate

BAD = [
    ("model.norm=layer", "model.norm='layer'", "['none', 'bn', 'noisy_bn'"),
    ("model.activation=tanh", "model.activation='tanh'", "sigmoid"),
    ("optim.lr=0", "optim.lr=0", "must be > 0"),
    ("optim.lr=-0.1", "optim.lr=-0.1", "must be > 0"),
    ("model.dropout=1.0", "model.dropout=1.0", "[0, 1)"),
    ("model.dropout=-0.1", "model.dropout=-0.1", "[0, 1)"),
    ("trainer.batch_size=0", "trainer.batch_size=0", ">= 2"),
    ("trainer.max_steps=0", "trainer.max_steps=0", ">= 1"),
    ("trainer.eval_every=60000", "trainer.eval_every=60000", "trainer.max_steps=50000"),
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1", ">= 0"),
    ("probe.quantiles=[0.5,1.5]", "probe.quantiles=", "(0, 1)"),
    ("logger.kind=tensorboard", "logger.kind='tensorboard'", "wandb"),
    ("probe.shift.levels=0", "probe.shift.levels=0", ">= 1"),
    ("probe.shift.enabled=maybe", "probe.shift.enabled='maybe'", "true or false"),
    ("probe.shift.max_values_per_unit=0.5", "probe.shift.max_values_per_unit=0.5", ">= 1"),
    ("probe.train_noise=1", "probe.train_noise=1", "true or false"),
]


@pytest.mark.parametrize(("override", "names", "allowed"), BAD)
def test_bad_value_is_named_with_what_is_allowed(override, names, allowed):
    cfg = compose_config(["experiment=fig1_mnist", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert names in message and allowed in message and "\n" not in message


# The norm registry's combinations: a norm the model cannot have, knobs that do not fit it.
NORM_BAD = [
    (["model.norm=in"], "model.norm='in'", "conv nets only"),
    (["model.norm=gn", "model.norm_groups=3"], "model.norm_groups=3", "[100]"),
    (["model=cnn", "dataset=cifar10-jpeg", "model.norm=gn", "model.norm_groups=32"],
     "model.norm_groups=32", "[16, 32, 64, 128]"),
    (["model.norm=brn", "trainer.batch_size=1"], "trainer.batch_size=1", ">= 2"),
    (["model.norm=lp1", "trainer.batch_size=1"], "trainer.batch_size=1", ">= 2"),
    (["model.norm=noisy_bn", "trainer.batch_size=1"], "trainer.batch_size=1", ">= 2"),
    (["model.norm=brn", "model.brn.r_max=0.5"], "model.brn.r_max=0.5", ">= 1"),
    (["model.norm=noisy_bn", "model.noise.sigma_param=var"], "model.noise.sigma_param='var'",
     "['std', 'variance']"),
    (["model.norm=noise_only", "model.noise.n_sigma=0.5"], "model.noise.n_sigma=0.5", ">= 1"),
    (["model.norm=lp2", "model.lp.norm_of=both"], "model.lp.norm_of='both'", "centered"),
]


@pytest.mark.parametrize(("overrides", "names", "allowed"), NORM_BAD)
def test_bad_norm_combination_is_refused_in_one_line(overrides, names, allowed):
    cfg = compose_config(["experiment=fig1_mnist", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert names in message and allowed in message and "\n" not in message


@pytest.mark.parametrize("overrides", [["model.norm=ln", "trainer.batch_size=1"],
                                       ["model.norm=noise_only", "trainer.batch_size=1"],
                                       ["model.norm=in", "model=cnn", "dataset=cifar10-jpeg"],
                                       ["model.norm=gn", "model.norm_groups=4"],
                                       ["model.norm=brn", "model.noise.sigma_param=var"]])
def test_good_norm_combinations_pass(overrides):
    """Per-example norms need no batch; a knob only the other norms read is not checked."""
    validate(compose_config(["experiment=fig1_mnist", *overrides]))


def test_the_shipped_configs_are_valid():
    for overrides in (["experiment=fig1_mnist"], ["model=cnn", "dataset=cifar10-jpeg"],
                      ["model=cnn_paper", "dataset=cifar10"], ["model.norm=none"]):
        validate(compose_config(overrides))


def test_cli_exits_nonzero_with_one_line_before_loading_data(run_train, tmp_path):
    result = run_train("experiment=fig1_mnist", "optim.lr=-1", "dataset.mirror=/nonexistent",
                       "dataset.root=/nonexistent", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "optim.lr=-1" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize(("override", "hint"), [("dataset=imagenet", "mnist"),
                                                 ("hydra/launcher=nope", "population")])
def test_unknown_group_options_are_refused_by_hydra(override, hint, run_train, tmp_path):
    result = run_train(override, f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode != 0 and hint in result.stderr
