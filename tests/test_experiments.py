"""bnrepro.experiments.EXPERIMENTS: every registered experiment is a whole unit (its configs,
analysis module, notebook, test file and make target exist), and the command line dispatches
to it and refuses an unknown name with the list of known ones."""

from __future__ import annotations

import re

import pytest

from bnrepro import analyse
from bnrepro.config import CONF_DIR
from bnrepro.experiments import EXPERIMENTS, experiment
from tests.conftest import REPO

MAKE_TARGETS = set(re.findall(r"^([a-z0-9-]+):", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_experiment_is_a_whole_unit(name):
    e = EXPERIMENTS[name]
    assert e.name in MAKE_TARGETS, f"no `make {e.name}` target"
    for config in e.configs:
        assert (CONF_DIR / config).is_file(), f"{name}: no conf/{config}"
    assert (REPO / "notebooks" / f"{e.notebook}.py").is_file()
    assert (REPO / "tests" / f"test_experiment_{e.module}.py").is_file()
    module = e.load()
    for function in ("analyse", "figures", "main"):
        assert callable(getattr(module, function, None)), f"{e.module} lacks {function}()"


def test_every_experiment_config_belongs_to_an_experiment():
    registered = {c for e in EXPERIMENTS.values() for c in e.configs}
    configs = {f"experiment/{p.name}" for p in (CONF_DIR / "experiment").glob("*.yaml")}
    assert configs <= registered, f"configs no experiment claims: {sorted(configs - registered)}"


def test_the_command_line_lists_and_refuses(capsys):
    assert analyse.main([]) == 2
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPERIMENTS)
    with pytest.raises(SystemExit, match="no experiment 'fig3'.*fig1"):
        experiment("fig3")


def test_the_command_line_dispatches_to_the_module(monkeypatch):
    calls = []
    module = EXPERIMENTS["depth"].load()
    monkeypatch.setattr(module, "main", lambda argv: calls.append(argv) or 0)
    assert analyse.main(["depth", "runs/x", "--out", "y"]) == 0
    assert calls == [["runs/x", "--out", "y"]]
