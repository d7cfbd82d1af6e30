"""What a user browsing wandb gets, read back from real offline wandb runs (WANDB_MODE=offline,
no server): a real short training run holds its whole config (every sweep axis a filterable
key), its metrics against the trainer's step, and best-value summaries; a plot script's
figures run holds the PNGs byte for byte and the claims table. Two wandb runs in this file."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from bnrepro.analysis import wandb_figures  # noqa: E402
from bnrepro.config import compose_config, flatten  # noqa: E402
from bnrepro.run.store import read_config, read_metrics, read_summary  # noqa: E402
from bnrepro.train import train_population  # noqa: E402
from tests import wandb_offline  # noqa: E402


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv(wandb_figures.FLAG_ENV, raising=False)


def test_a_trained_run_holds_its_config_metrics_on_the_step_axis_and_best_summaries(
        tmp_path, offline, mnist):
    cfg = compose_config(["experiment=fig1_mnist", "debug=smoke", "logger=wandb",
                          "model.norm=bn", "optim.lr=0.3", "seed=2", "trainer.max_steps=6",
                          "trainer.eval_every=3", "trainer.population_batches=2",
                          "probe.num_examples=50"])
    run_dir = tmp_path / "run"
    train_population([cfg], [run_dir])
    (_, records), = wandb_offline.offline_runs(run_dir)

    # Config: the run store's resolved config.yaml, key for key, plus the axes block; nested
    # as in config.yaml (how wandb-workspaces' Config("model.norm") addresses it).
    raw = wandb_offline.config(records)
    assert set(raw) == {*OmegaConf.to_container(cfg), "axes"} and isinstance(raw["model"], dict)
    sent = flatten(raw)
    stored = flatten(OmegaConf.to_container(read_config(run_dir), resolve=True))
    assert {k: v for k, v in sent.items() if not k.startswith("axes.")} == stored
    axes = read_summary(run_dir)["axes"]
    assert {k[len("axes."):]: v for k, v in sent.items() if k.startswith("axes.")} == \
        {**axes, "norm_activation": "bn-sigmoid"}
    assert (sent["model.norm"], sent["model.activation"], sent["optim.lr"], sent["seed"],
            sent["dataset.name"], sent["name"]) == ("bn", "sigmoid", 0.3, 2, "mnist",
                                                    "fig1_mnist")
    run = wandb_offline.run_record(records)
    assert (run.run_group, run.job_type) == ("fig1_mnist", "train")

    # Metrics: every row of metrics.jsonl, value for value, at wandb step = trainer step.
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 3, 6]
    logged = wandb_offline.history(records)
    assert len(logged) == len(rows)
    for row, got in zip(rows, logged, strict=True):
        assert got["_step"] == row["step"]
        assert {k: got[k] for k in row} == row
    assert any(k.startswith("act/h3/q") for k in rows[0])  # the Fig. 1 probes go along
    metrics = wandb_offline.of_type(records, "metric")
    assert any(m.glob_name == "*" and m.step_metric == "step" for m in metrics)

    # Summaries: best accuracy (max), best loss (min), not the last value; the trainer's
    # summary.json scalars beside them.
    final = wandb_offline.summary(records)
    assert final["val/acc"] == {"max": max(r["val/acc"] for r in rows)}
    assert final["val/loss"] == {"min": min(r["val/loss"] for r in rows)}
    assert final["test/acc"] == {"max": max(r["test/acc"] for r in rows)}
    summary = read_summary(run_dir)
    for key in ("status", "best_val_acc", "test_acc_at_best_val", "best_val_step"):
        assert final[key] == summary[key], key


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_figures_are_logged_as_images_and_claims_as_a_table_in_the_experiment_group(
        tmp_path, offline):
    pngs = []
    for name, color in (("fig_a", "red"), ("fig_b", "blue")):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0], color=color)
        fig.savefig(tmp_path / f"{name}.png")
        plt.close(fig)
        pngs.append(tmp_path / f"{name}.png")
    claims = [{"claim": "BN trains faster", "paper": "14x", "ours": "10x", "verdict": "holds",
               "dataset": "cifar10-jpeg", "source": "Ioffe & Szegedy (2015)"},
              {"claim": "x diverges", "paper": "inf", "ours": "0 of 3", "verdict": "mixed",
               "dataset": "cifar10-jpeg", "source": "ours"}]
    config = {"name": "fig2_cifar", "logger": {"kind": "none"}}  # a run trained without wandb
    store = tmp_path / "store"
    run_id = wandb_figures.publish(True, config, pngs, wandb_dir=store, claims=claims,
                                   tables={"cells": pd.DataFrame(
                                       {"lr": [0.1, 1.0],
                                        "steps": pd.array([5, None], dtype="Int64")})})
    (folder, records), = wandb_offline.offline_runs(store)
    run = wandb_offline.run_record(records)
    assert (run.run_id, run.run_group, run.job_type, run.project) == \
        (run_id, "fig2_cifar", "figures", "bnrepro")
    row, = wandb_offline.history(records)
    for png in pngs:
        key = f"figures/{png.stem}"
        assert row[f"{key}._type"] == "image-file"
        assert sha256(folder / "files" / row[f"{key}.path"]) == sha256(png)
    assert sha256(pngs[0]) != sha256(pngs[1])  # two different images, each in its own key
    table = json.loads((folder / "files" / row["claims.path"]).read_text())
    assert table["columns"] == list(wandb_figures.CLAIM_COLUMNS)
    assert table["data"] == [[c[k] for k in wandb_figures.CLAIM_COLUMNS] for c in claims]
    cells = json.loads((folder / "files" / row["tables/cells.path"]).read_text())
    assert cells["columns"] == ["lr", "steps"]
    assert cells["data"] == [[0.1, 5], [1.0, None]]  # pandas' NA logged as null


def test_figures_are_logged_only_when_asked_and_a_failure_is_one_warning(
        tmp_path, offline, monkeypatch):
    assert wandb_figures.publish(False, {"name": "x"}, [], wandb_dir=tmp_path) is None
    assert not (tmp_path / "wandb").exists()

    parser = __import__("argparse").ArgumentParser()
    wandb_figures.add_flag(parser)
    assert parser.parse_args([]).wandb is False and parser.parse_args(["--wandb"]).wandb
    monkeypatch.setenv(wandb_figures.FLAG_ENV, "1")
    parser = __import__("argparse").ArgumentParser()
    wandb_figures.add_flag(parser)
    assert parser.parse_args([]).wandb is True

    import wandb

    def broken_init(**kwargs):
        raise wandb.errors.CommError("no server")

    monkeypatch.setattr(wandb, "init", broken_init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert wandb_figures.publish(True, {"name": "x"}, [], wandb_dir=tmp_path) is None
    assert [str(w.message) for w in caught if "wandb" in str(w.message)] == [
        "figures not logged to wandb (CommError: no server); the files on disk are unaffected"]
