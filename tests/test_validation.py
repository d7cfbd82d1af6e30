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
]


@pytest.mark.parametrize(("override", "names", "allowed"), BAD)
def test_bad_value_is_named_with_what_is_allowed(override, names, allowed):
    cfg = compose_config(["experiment=fig1_mnist", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert names in message and allowed in message and "\n" not in message


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
