"""The notebooks run top to bottom against a real (tiny) run store."""

import json

import matplotlib

from tests.conftest import REPO

matplotlib.use("Agg")


def test_fig1_explore_runs(run_train, tmp_path, mirror, monkeypatch):
    run_train("-m", "experiment=fig1_mnist", "debug=smoke", "seed=0",
              f"hydra.sweep.dir={tmp_path}")
    monkeypatch.setenv("FIG1_RUNS", str(tmp_path))
    notebook = json.loads((REPO / "notebooks" / "fig1_explore.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), namespace)  # noqa: S102 (our own notebook)
    assert sorted(namespace["table"]["norm"]) == ["bn", "none"]
