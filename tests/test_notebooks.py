"""The notebooks run top to bottom against a real (tiny) run store."""

import ast
import json

import matplotlib
import pytest

from bnrepro.store import read_metrics, read_summary
from tests.conftest import REPO

matplotlib.use("Agg")


def run_cell(source: str, namespace: dict):
    """Execute a code cell; return the value of its last expression, as Jupyter shows it."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)  # noqa: S102 (our own notebook)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)  # noqa: S307


def test_fig1_explore_runs(run_train, tmp_path, mirror, monkeypatch):
    run_train("-m", "experiment=fig1_mnist", "debug=smoke", "seed=0",
              f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${model.norm}")
    monkeypatch.setenv("FIG1_RUNS", str(tmp_path))
    notebook = json.loads((REPO / "notebooks" / "fig1_explore.ipynb").read_text())
    namespace: dict = {}
    outputs = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            outputs.append(run_cell("".join(cell["source"]), namespace))
    # the table holds each run's summary, not just its labels
    table = namespace["table"].set_index("norm")
    for norm in ("bn", "none"):
        summary = read_summary(tmp_path / norm)
        for key in ("best_val_acc", "test_acc_at_best_val", "final_test_acc"):
            assert table.loc[norm, key] == summary[key], (norm, key)
    # one panel per (norm, layer), each with the three percentile curves of every evaluation
    axes = namespace["fig"].axes
    assert len(axes) == 2 * 3
    steps = [r["step"] for r in read_metrics(tmp_path / "bn")]
    for ax in axes:
        assert len(ax.lines) == 3 and all(list(line.get_xdata()) == steps for line in ax.lines)
    # the drift table equals the drift recomputed from the logged percentiles
    drift = outputs[-1]
    rows = read_metrics(tmp_path / "none")
    for layer in (1, 2, 3):
        ranges = [max(r[f"act/h{layer}/q{q}"] for r in rows) -
                  min(r[f"act/h{layer}/q{q}"] for r in rows) for q in (15, 50, 85)]
        assert drift.loc["none", f"drift_h{layer}"] == pytest.approx(sum(ranges) / 3)
