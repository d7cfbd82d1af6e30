"""Real training runs through the real entry point, on real MNIST."""

import json

import pytest

from bnrepro.run.store import read_metrics, read_summary

PROBE_KEYS = [f"{net}/h{i}/q{q}" for net in ("act", "act_train") for i in (1, 2, 3)
              for q in (15, 50, 85)]
EXPLODE = ["experiment=fig1_mnist", "debug=smoke", "model.norm=none", "model.activation=relu",
           "optim.lr=1e6"]


def test_bn_beats_no_bn_on_a_short_fig1_run(run_train, tmp_path, mirror):
    run_train("-m", "experiment=fig1_mnist", "model.norm=bn,none", "seed=0",
              "trainer.max_steps=2000", "trainer.eval_every=500",
              f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${model.norm}")
    acc = {}
    for norm in ("bn", "none"):
        run_dir = tmp_path / norm
        assert (run_dir / ".hydra" / "config.yaml").is_file()
        summary = read_summary(run_dir)
        assert summary["status"] == "completed" and summary["steps_done"] == 2000
        assert summary["axes"]["norm"] == norm and summary["wall_time_s"] > 0
        rows = read_metrics(run_dir)
        assert [r["step"] for r in rows] == [0, 500, 1000, 1500, 2000]
        for key in ["step", "train/loss", "val/loss", "val/acc", "test/loss", "test/acc",
                    *PROBE_KEYS]:
            assert key in rows[-1], key
        # selected on validation, reported on test
        best = max(rows, key=lambda r: r["val/acc"])
        assert (summary["best_val_acc"], summary["best_val_step"]) == (best["val/acc"],
                                                                       best["step"])
        assert summary["test_acc_at_best_val"] == best["test/acc"]
        assert summary["final_test_acc"] == rows[-1]["test/acc"]
        assert summary["final_val_acc"] == rows[-1]["val/acc"]
        acc[norm] = summary["final_test_acc"]
    assert acc["bn"] > acc["none"], acc
    assert acc["none"] > 0.5  # the baseline learns too: the comparison is not against noise


def test_same_seed_gives_identical_metrics(run_train, tmp_path, mirror):
    for name in ("a", "b"):
        run_train("experiment=fig1_mnist", "debug=smoke", "model.dropout=0.2",
                  f"hydra.run.dir={tmp_path / name}")
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == \
        (tmp_path / "b" / "metrics.jsonl").read_text()


def test_divergence_is_recorded_not_raised(run_train, tmp_path, mirror):
    """The update of step 1 explodes; step 2's training loss is the first to show it."""
    run_train(*EXPLODE, f"hydra.run.dir={tmp_path}")
    summary = read_summary(tmp_path)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 2
    assert "train loss" in summary["reason"] and "at step 2" in summary["reason"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]


@pytest.mark.parametrize("max_steps", [1, 3])
def test_an_update_that_explodes_right_before_an_evaluation_is_caught_there(
        max_steps, run_train, tmp_path, mirror):
    """Seen: the evaluation right after an exploding update logged a garbage row as alive,
    and an explosion on the last step (max_steps=1) ended `completed`."""
    run_train(*EXPLODE, f"trainer.max_steps={max_steps}", "trainer.eval_every=1",
              f"hydra.run.dir={tmp_path}")
    summary = read_summary(tmp_path)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 1
    assert "after the update of step 1" in summary["reason"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]


def test_wandb_offline_run_holds_the_logged_keys(run_train, tmp_path, mirror, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_train("experiment=fig1_mnist", "debug=smoke", "logger=wandb",
              f"hydra.run.dir={tmp_path}")
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    record = next(offline_runs[0].glob("run-*.wandb")).read_bytes()
    # the protobuf records hold keys and names as plain UTF-8
    for key in ["test/acc", "train/loss", *PROBE_KEYS, "mnist-bn-sigmoid-lr0.1-do0-s0",
                "fig1_mnist", "norm=bn"]:
        assert key.encode() in record, key
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_wandb_failure_does_not_stop_training(run_train, tmp_path, mirror):
    """Online mode with no API key: wandb.init fails for real; the run must not."""
    result = run_train("experiment=fig1_mnist", "debug=smoke", "logger=wandb",
                       f"hydra.run.dir={tmp_path / 'run'}",
                       env={"WANDB_MODE": "online", "WANDB_API_KEY": None,
                            "HOME": str(tmp_path)})  # no ~/.netrc: not logged in
    assert result.stderr.count("wandb disabled for this run") == 1
    assert read_summary(tmp_path / "run")["status"] == "completed"
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 20, 40]


def test_test_every_skips_the_test_set_between_and_changes_nothing_else(tmp_path, mirror):
    """trainer.test_every: the test set at multiples of it and at the end only; validation,
    training and selection as with the test set at every evaluation."""
    from bnrepro.config import compose_config
    from bnrepro.run.store import read_metrics
    from bnrepro.train import train_population

    base = ["experiment=fig1_mnist", "debug=smoke", "trainer.max_steps=50",
            "trainer.eval_every=10"]
    every = train_population([compose_config(base)], [tmp_path / "every"])[0]
    sparse = train_population([compose_config([*base, "trainer.test_every=20"])],
                              [tmp_path / "sparse"])[0]
    rows_every, rows_sparse = read_metrics(tmp_path / "every"), read_metrics(tmp_path / "sparse")
    assert [r["step"] for r in rows_sparse if "test/acc" in r] == [0, 20, 40, 50]
    for a, b in zip(rows_every, rows_sparse, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("test/")} == \
            {k: v for k, v in b.items() if not k.startswith("test/")}
        if "test/acc" in b:
            assert a["test/acc"] == b["test/acc"]
    assert sparse["final_test_acc"] == every["final_test_acc"]
    assert sparse["best_val_step"] == every["best_val_step"]


def test_trainer_threads_hold_while_training_and_are_restored_after(tmp_path, mirror):
    """trainer.threads applies to the training it configures only: a process that trains
    several configs (a test session, a notebook, the bench) gets its own setting back."""
    import torch

    from bnrepro.config import compose_config
    from bnrepro.train import train_population

    cfg = compose_config(["experiment=fig1_mnist", "debug=smoke", "trainer.threads=1",
                          "trainer.max_steps=3", "trainer.eval_every=3"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        during: list[int] = []
        train_population([cfg], [tmp_path / "run"], lambda step: during.append(
            torch.get_num_threads()))
        assert during == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_configs_that_differ_outside_the_member_keys_are_refused_before_anything(tmp_path,
                                                                                 mirror):
    """train_population called directly with two models: one ConfigError naming the key,
    and no run directory is touched."""
    from bnrepro.config import compose_config
    from bnrepro.train import train_population
    from bnrepro.validation import ConfigError

    base = ["experiment=fig1_mnist", "debug=smoke"]
    cfgs = [compose_config([*base, "seed=0", "optim.lr=0.1"]),  # member keys may differ
            compose_config([*base, "seed=1", "model.norm=none"])]
    with pytest.raises(ConfigError, match=r"differ in model\.norm; members may differ only"):
        train_population(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert not any(tmp_path.iterdir())
