"""bnrepro.experiments.sweep (sweep-mnist, sweep-cifar): selection on validation, reporting on
test; diverged seeds scored as chance; cells keyed by every differing config value; mixed
experiments refused until narrowed with --where. Most tests build run stores by hand (the
trainer's store interface) so every number is known; one trains real runs end to end."""

import functools
import io
import json
import math
from collections import Counter
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from omegaconf import OmegaConf

from bnrepro import analyse
from bnrepro.claims import read_claims
from bnrepro.config import compose_config
from bnrepro.experiments import sweep
from bnrepro.run.store import read_metrics, read_summary

THRESHOLDS = (0.3, 0.6, 0.99)  # reached early, reached later on val than on test, never
STATUS_ORDER = ["completed", "diverged", "failed", "interrupted", "running"]
MNIST = ["experiment=sweep_mnist", "model.dropout=0.0"]
CIFAR = ["experiment=sweep_cifar", "dataset=cifar10-jpeg", "model.dropout=0.0"]


@functools.cache
def config_yaml(overrides: tuple[str, ...]) -> str:
    return OmegaConf.to_yaml(compose_config(list(overrides)), resolve=True)


def curve(val: list[float], test: list[float] | None = None, every: int = 20) -> list[dict]:
    """metrics.jsonl rows: one per evaluation, val/acc and test/acc as given (test = val if
    not given), probe quantiles that move with accuracy, and decoys drift must not read."""
    rows = []
    for i, (v, t) in enumerate(zip(val, test or val, strict=True)):
        row = {"step": i * every, "train/loss": 2.5 - 2 * v, "val/loss": 2.5 - 2 * v,
               "val/acc": v, "test/loss": 2.5 - 2 * t, "test/acc": t}
        if i:
            row["train/acc"] = v  # not logged at step 0
        for layer in (1, 2):
            unit = {"q15": -layer * v, "q50": 0.1 * i, "q85": layer * v}
            row |= {f"act/h{layer}/{q}": x for q, x in unit.items()}
            row |= {f"act/h{layer}/all_{q}": 50.0 * i for q in unit}  # all units: not drift
            row |= {f"act_train/h{layer}/{q}": -70.0 * i for q in unit}  # train mode: not drift
            row |= {f"act/h{layer}/mean": 0.0, f"act/h{layer}/std": 1.0}
        rows.append(row)
    return rows


def make_run(run_dir: Path, overrides: list[str], rows: list[dict], status: str = "completed",
             config_at: str = "config.yaml", **summary) -> Path:
    """A run dir as the trainer writes it: resolved config, metrics.jsonl, summary.json.
    Final/best numbers come from the last/best row whatever the status, so a diverged run
    carries its pre-divergence accuracy as a real store might."""
    cfg = OmegaConf.create(config_yaml(tuple(overrides)))
    (run_dir / config_at).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / config_at).write_text(config_yaml(tuple(overrides)))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = rows[-1] if rows else {}
    best = max(rows, key=lambda r: r["val/acc"]) if rows else {}
    axes = {"dataset": cfg.dataset.name, "norm": cfg.model.norm,
            "activation": cfg.model.activation, "lr": cfg.optim.lr,
            "dropout": cfg.model.dropout, "seed": cfg.seed}
    content = {"status": status, "reason": None if status == "completed" else f"{status} here",
               "steps_done": last.get("step", 0), "max_steps": cfg.trainer.max_steps,
               "final_val_acc": last.get("val/acc"), "best_val_acc": best.get("val/acc"),
               "best_val_step": best.get("step"), "test_acc_at_best_val": best.get("test/acc"),
               "final_test_acc": last.get("test/acc"), "final_train_loss": last.get("train/loss"),
               "diverged_at_step": last.get("step", 0) + 1 if status == "diverged" else None,
               "resumed_from_step": None, "wall_time_s": 1.0, "train_time_s": 0.5,
               "population_size": 1, "axes": axes} | summary
    (run_dir / "summary.json").write_text(json.dumps(content))
    return run_dir


def run_cell(root: Path, overrides: list[str], seeds: dict[int, tuple[str, list[dict]]]
             ) -> dict[Path, str]:
    """One cell's seeds: {seed: (status, rows)} -> {run_dir: status}."""
    name = ",".join(o.split(".")[-1] for o in overrides[1:])
    return {make_run(root / f"{name},seed={s}", [*overrides, f"seed={s}"], rows, status): status
            for s, (status, rows) in seeds.items()}


def assert_figure(stem: Path) -> None:
    assert Path(f"{stem}.pdf").stat().st_size > 0
    image = matplotlib.image.imread(Path(f"{stem}.png"))
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert image[..., :3].std() > 0  # not blank


def count_line(dataset: str, statuses: list[str]) -> str:
    counts = Counter(statuses)
    parts = [f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s]]
    return f"{dataset}: {len(statuses)} runs ({', '.join(parts)})"


def printed_best(printed: str) -> pd.DataFrame:
    """The best-cell table as printed (one dataset), as a frame."""
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("best cell per"))
    end = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    return pd.read_csv(io.StringIO("\n".join(lines[start + 1:end])), sep=r"\s+")


def best_row(table: pd.DataFrame, norm: str, activation: str) -> pd.Series:
    rows = table[(table["norm"] == norm) & (table["activation"] == activation)]
    assert len(rows) == 1, table
    return rows.iloc[0]


def test_steps_to_threshold_reads_validation_accuracy_first_time_it_is_reached():
    metrics = pd.DataFrame({"step": [0, 20, 40, 60], "val/acc": [0.1, 0.5, 0.4, 0.7],
                            "test/acc": [0.1, 0.9, 0.9, 0.9]})
    assert sweep.steps_to_threshold(metrics, 0.45) == 20  # not 60: the first time
    assert sweep.steps_to_threshold(metrics, 0.5) == 20  # >=
    assert sweep.steps_to_threshold(metrics, 0.6) == 60  # test/acc would say 20
    assert sweep.steps_to_threshold(metrics, 0.95) is None
    assert sweep.steps_to_threshold(pd.DataFrame(), 0.5) is None
    assert sweep.steps_to_threshold(metrics.drop(columns="val/acc"), 0.5) is None


def test_drift_averages_the_range_of_the_tracked_units_quantiles():
    metrics = pd.DataFrame({"act/h2/q15": [-1.0, -3.0, -2.0], "act/h2/q50": [0.0, 0.0, 1.0],
                            "act/h2/q85": [1.0, 1.0, 1.0], "act/h2/all_q15": [0.0, 9.0, 0.0],
                            "act_train/h2/q15": [0.0, 9.0, 0.0]})
    assert sweep.drift(metrics, 2) == pytest.approx((2 + 1 + 0) / 3)  # all_q*, act_train: no
    assert math.isnan(sweep.drift(metrics, 1))


def test_a_hand_built_sweep_one_row_per_run_and_unreadable_dirs_skipped(tmp_path, capsys):
    store, out = tmp_path / "store", tmp_path / "results"
    val, test = [0.1, 0.35, 0.65, 0.8], [0.1, 0.7, 0.7, 0.8]  # 0.6 reached at 40 on val, 20 test
    relu = [*MNIST, "model.activation=relu"]
    runs = run_cell(store, [*relu, "model.norm=bn", "optim.lr=0.1"],
                    {0: ("completed", curve(val, test)), 1: ("completed", curve(val))})
    val_later_than_test = next(iter(runs))
    runs |= run_cell(store, [*relu, "model.norm=bn", "optim.lr=1.0"],
                     {1: ("interrupted", curve(val[:2]))})
    runs[make_run(store / "bn,lr=1.0,seed=0", [*relu, "model.norm=bn", "optim.lr=1.0", "seed=0"],
                  curve([0.1, 0.2, 0.3, 0.4]), config_at=".hydra/config.yaml")] = "completed"
    runs |= run_cell(store, [*relu, "model.norm=none", "optim.lr=0.1"],
                     {0: ("completed", curve(test, val)), 1: ("failed", [])})
    runs |= run_cell(store, [*relu, "model.norm=none", "optim.lr=1.0"],
                     {0: ("diverged", curve([0.1, 0.7])), 1: ("diverged", curve([0.1]))})
    good = next(iter(runs))
    bad = {"broken": lambda d: (d / "summary.json").write_text('{"status": "co'),
           "no_metrics": lambda d: (d / "metrics.jsonl").unlink(),
           "no_config": lambda d: (d / "config.yaml").unlink(),
           "old_trainer": lambda d: (d / "summary.json").write_text(json.dumps(
               {k: v for k, v in read_summary(d).items() if k != "final_val_acc"}))}
    for name, damage in bad.items():
        make_run(store / "bad" / name, [*relu, "seed=0"], curve(val))
        damage(store / "bad" / name)

    with pytest.warns(UserWarning, match=r"skipped 4 unreadable") as caught:
        sweep.main([str(store), "--out", str(out), "--thresholds", *map(str, THRESHOLDS)])
    message = str(caught[0].message)
    assert all(str(store / "bad" / name) in message for name in bad), message
    assert str(good) not in message
    printed = capsys.readouterr().out
    assert count_line("mnist", list(runs.values())) in printed, printed

    df = pd.read_csv(out / "sweep_mnist.csv")
    assert sorted(df["run_dir"]) == sorted(map(str, runs))  # one row per readable run
    assert list(df.columns[:6]) == ["dataset", "norm", "activation", "lr", "dropout", "seed"]
    assert not [c for c in df.columns if c.startswith(("model.", "optim.", "trainer."))]
    for row in df.to_dict("records"):
        summary, metrics = read_summary(row["run_dir"]), read_metrics(row["run_dir"])
        assert row["status"] == runs[Path(row["run_dir"])] == summary["status"]
        for key in ("final_val_acc", "final_test_acc"):
            assert row[key] == summary[key] or pd.isna(row[key]) and summary[key] is None
        for t in THRESHOLDS:
            first = next((r["step"] for r in metrics if r["val/acc"] >= t), None)
            value = row[f"steps_to_val_acc_{t:g}"]
            assert (pd.isna(value) if first is None else value == first), (t, row["run_dir"])
        for layer in (1, 2):
            expected = sum(max(r[f"act/h{layer}/{q}"] for r in metrics)
                           - min(r[f"act/h{layer}/{q}"] for r in metrics)
                           for q in ("q15", "q50", "q85")) / 3 if metrics else math.nan
            assert row[f"drift_h{layer}"] == pytest.approx(expected, nan_ok=True)
    first_06 = df.set_index("run_dir")["steps_to_val_acc_0.6"]
    assert first_06[str(val_later_than_test)] == 40  # test/acc would say 20

    assert_figure(out / "sweep_mnist_heatmap")
    assert_figure(out / "sweep_mnist_best_curves")
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files behind


def test_the_best_cell_is_chosen_on_validation_and_reported_on_test(tmp_path, capsys):
    store, base = tmp_path / "store", [*MNIST, "model.norm=bn", "model.activation=relu"]
    # lr 0.1: better on validation, worse on test; lr 1.0 the other way round.
    tests_01 = {0: 0.90, 1: 0.91, 2: 0.89}
    run_cell(store, [*base, "optim.lr=0.1"],
             {s: ("completed", curve([0.1, 0.95], [0.1, t])) for s, t in tests_01.items()})
    run_cell(store, [*base, "optim.lr=1.0"],
             {s: ("completed", curve([0.1, 0.90], [0.1, 0.97])) for s in tests_01})
    sweep.main([str(store), "--out", str(tmp_path / "out")])
    best = best_row(printed_best(capsys.readouterr().out), "bn", "relu")
    assert best["lr"] == 0.1
    assert best["val_acc"] == pytest.approx(0.95, abs=1e-4)
    assert best["test_acc"] == pytest.approx(sum(tests_01.values()) / 3, abs=1e-4)  # reported
    assert best["completed"] == "3/3" and best["diverged"] == "0/3"
    # the analysis behind the command: the same choice, and a figure per file it wrote
    result = sweep.analyse([store], name="grid")
    chosen = result.datasets["mnist"].best.set_index(["norm", "activation"])
    assert chosen.loc[("bn", "relu"), "lr"] == 0.1
    drawn = sweep.figures(result)
    assert sorted(drawn) == ["grid_best_curves", "grid_heatmap"]
    for fig in drawn.values():
        plt.close(fig)


def test_a_cell_cannot_win_on_its_surviving_seed_and_diverged_seeds_score_chance(tmp_path,
                                                                                   capsys):
    store = tmp_path / "store"
    relu = [*MNIST, "model.norm=none", "model.activation=relu"]
    # lr 1.0: one survivor at 0.99; the diverged seed even reports 0.99 before it blew up.
    lucky = run_cell(store, [*relu, "optim.lr=1.0"],
                     {0: ("completed", curve([0.1, 0.99])), 1: ("diverged", curve([0.1, 0.99])),
                      2: ("failed", [])})
    steady = run_cell(store, [*relu, "optim.lr=0.1"],
                      {s: ("completed", curve([0.1, 0.9])) for s in range(3)})
    # Chance, not zero: (0.95 + 0.95 + 0.1) / 3 = 0.667 beats 0.65; scored 0 it would not.
    sigmoid = [*MNIST, "model.norm=bn", "model.activation=sigmoid"]
    run_cell(store, [*sigmoid, "optim.lr=1.0"],
             {0: ("completed", curve([0.1, 0.95])), 1: ("completed", curve([0.1, 0.95])),
              2: ("diverged", curve([0.1]))})
    run_cell(store, [*sigmoid, "optim.lr=0.1"],
             {s: ("completed", curve([0.1, 0.65])) for s in range(3)})

    sweep.main([str(store), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "a diverged/failed/unfinished seed scoring chance (0.1)" in printed  # the rule
    table = printed_best(printed)
    none_relu = best_row(table, "none", "relu")
    assert none_relu["lr"] == 0.1 and none_relu["completed"] == "3/3"
    assert none_relu["select_val"] == pytest.approx(0.9, abs=1e-4)
    bn_sigmoid = best_row(table, "bn", "sigmoid")
    assert bn_sigmoid["lr"] == 1.0
    assert bn_sigmoid["select_val"] == pytest.approx((0.95 + 0.95 + 0.1) / 3, abs=1e-4)
    assert bn_sigmoid["val_acc"] == pytest.approx(0.95, abs=1e-4)  # mean over completed seeds
    assert bn_sigmoid["completed"] == "2/3" and bn_sigmoid["diverged"] == "1/3"
    cells = sweep.cell_table(pd.read_csv(tmp_path / "out" / "sweep_mnist.csv"),
                             sweep.BASE_CELL).set_index(["norm", "lr"])
    assert cells.loc[("none", 1.0), "n"] == 1 and cells.loc[("none", 1.0), "runs"] == len(lucky)
    assert cells.loc[("none", 0.1), "n"] == len(steady)
    assert_figure(tmp_path / "out" / "sweep_mnist_heatmap")


def test_runs_of_different_experiments_are_refused_until_narrowed_with_where(tmp_path,
                                                                             capsys):
    store, out = tmp_path / "sweep_cifar10-jpeg", tmp_path / "out"
    cpu_slice, full = {}, {}
    for lr in ("0.1", "1.0"):
        cpu_slice |= run_cell(store, [*CIFAR, "model.width_multiplier=0.5",
                                      "trainer.max_steps=400", f"optim.lr={lr}"],
                              {0: ("completed", curve([0.1, 0.4]))})
        full |= run_cell(store, [*CIFAR, "model.width_multiplier=1.0", "trainer.max_steps=3000",
                                 f"optim.lr={lr}"], {s: ("completed", curve([0.1, 0.6]))
                                                     for s in range(2)})
    with pytest.raises(SystemExit) as refused:
        sweep.main([str(store), "--out", str(out)])
    message = str(refused.value.code)
    width = next(line for line in message.splitlines() if "model.width_multiplier" in line)
    steps = next(line for line in message.splitlines() if "trainer.max_steps" in line)
    assert "0.5" in width and "1.0" in width, message
    assert "400" in steps and "3000" in steps, message
    assert "--where" in message
    assert not out.exists()  # nothing written

    with pytest.raises(SystemExit, match="model.widht"):  # a typo is not a filter
        sweep.main([str(store), "--out", str(out), "--where", "model.widht=0.5"])
    # the command of `make sweep-cifar`
    assert analyse.main(["sweep-cifar", str(store), "--out", str(out), "--where",
                         "model.width_multiplier=0.5", "--where", "trainer.max_steps=400"]) == 0
    assert count_line("cifar10-jpeg", list(cpu_slice.values())) in capsys.readouterr().out
    df = pd.read_csv(out / "sweep_cifar10-jpeg.csv")
    assert sorted(df["run_dir"]) == sorted(map(str, cpu_slice))
    sweep.main([str(store), "--out", str(out), "--where", "model.width_multiplier=1.0",
                "--where", "seed=1"])  # every condition must hold
    df = pd.read_csv(out / "sweep_cifar10-jpeg.csv")
    assert sorted(df["run_dir"]) == sorted(str(d) for d in full if d.name.endswith("seed=1"))


def test_a_momentum_sweep_becomes_a_cell_key_and_a_csv_column(tmp_path, capsys):
    store = tmp_path / "store"
    base = [*MNIST, "model.norm=bn", "model.activation=sigmoid", "optim.lr=0.1"]
    runs = run_cell(store, [*base, "optim.momentum=0.9"],
                    {s: ("completed", curve([0.1, 0.97])) for s in range(3)})
    runs |= run_cell(store, [*base, "optim.momentum=0.0"],
                     {s: ("completed", curve([0.1, 0.93])) for s in range(3)})
    sweep.main([str(store), "--out", str(tmp_path / "out")])
    best = best_row(printed_best(capsys.readouterr().out), "bn", "sigmoid")
    assert best["optim.momentum"] == 0.9
    assert best["completed"] == "3/3"  # not 6/6: momenta are not seeds
    assert best["val_acc"] == pytest.approx(0.97, abs=1e-4)
    df = pd.read_csv(tmp_path / "out" / "sweep_mnist.csv").set_index("run_dir")
    assert "optim.weight_decay" not in df  # the same in every run: not a cell key
    for run_dir in runs:
        config = OmegaConf.load(run_dir / "config.yaml")
        assert df.loc[str(run_dir), "optim.momentum"] == config.optim.momentum
    assert_figure(tmp_path / "out" / "sweep_mnist_heatmap")


def test_where_values_are_parsed_as_yaml():
    assert sweep.parse_where("model.width_multiplier=0.5") == ("model.width_multiplier", 0.5)
    assert sweep.parse_where("optim.weight_decay=1e-4") == ("optim.weight_decay", 1e-4)
    assert sweep.parse_where("model.norm=none") == ("model.norm", "none")
    assert sweep.parse_where("model.hidden=[100, 100]") == ("model.hidden", [100, 100])


def test_aggregate_runs_of_the_real_trainer_end_to_end(run_train, mirror, tmp_path, capsys):
    store, out = tmp_path / "store", tmp_path / "results"
    run_train("-m", "experiment=fig1_mnist", "debug=smoke", "model.activation=relu",
              "model.norm=bn,none", "optim.lr=0.5,3.0", "seed=0", f"hydra.sweep.dir={store}")
    run_dirs = sorted(p.parent for p in store.rglob("summary.json"))
    assert len(run_dirs) == 4
    sweep.main([str(store), "--out", str(out), "--thresholds", *map(str, THRESHOLDS)])
    statuses = [read_summary(d)["status"] for d in run_dirs]
    assert "completed" in statuses
    assert count_line("mnist", statuses) in capsys.readouterr().out

    df = pd.read_csv(out / "sweep_mnist.csv")
    assert sorted(df["run_dir"]) == sorted(map(str, run_dirs))
    for row in df.to_dict("records"):
        summary, metrics = read_summary(row["run_dir"]), read_metrics(row["run_dir"])
        assert row["status"] == summary["status"]
        assert row["final_val_acc"] == summary["final_val_acc"] or summary["status"] != "completed"
        for t in THRESHOLDS:
            first = next((r["step"] for r in metrics if (r["val/acc"] or 0) >= t), None)
            value = row[f"steps_to_val_acc_{t:g}"]
            assert (pd.isna(value) if first is None else value == first), (t, row["run_dir"])
    assert [c for c in df.columns if c.startswith("drift_h")] == ["drift_h1", "drift_h2",
                                                                  "drift_h3"]
    assert (df.loc[df["status"] == "completed", ["drift_h1", "drift_h2", "drift_h3"]] > 0
            ).all().all()  # training moves the probed units
    assert_figure(out / "sweep_mnist_heatmap")
    assert_figure(out / "sweep_mnist_best_curves")


def test_wandb_flag_logs_the_figures_and_runs_table_to_the_sweeps_group(tmp_path, capsys,
                                                                         monkeypatch):
    calls = []
    monkeypatch.setattr(sweep.wandb_figures, "publish",
                        lambda *args, **kwargs: calls.append((args, kwargs)))
    store, base = tmp_path / "store", [*MNIST, "model.norm=bn", "model.activation=relu"]
    run_cell(store, [*base, "optim.lr=0.1"], {s: ("completed", curve([0.1, 0.9])) for s in (0, 1)})
    sweep.main([str(store), "--out", str(tmp_path / "out")])
    (enabled, config, images), kwargs = calls.pop()
    assert not enabled  # publish decides: off without --wandb
    sweep.main([str(store), "--out", str(tmp_path / "out"), "--wandb"])
    (enabled, config, images), kwargs = calls.pop()
    assert enabled and sweep.wandb_figures.target(config)["group"] == "sweep_mnist"
    assert sorted(p.name for p in images) == ["sweep_mnist_best_curves.png",
                                              "sweep_mnist_heatmap.png"]
    assert all(p.is_file() for p in images) and kwargs["wandb_dir"] == store
    assert sorted(kwargs["tables"]["runs"]["seed"]) == [0, 1]


SIGMOID = [*MNIST, "model.activation=sigmoid"]  # Fig. 1's net: sigmoid, no dropout


def fig1_net_cells(store: Path, cells: dict[tuple[str, str], dict[int, tuple]]) -> None:
    """{(norm, lr): {seed: (status, final val acc, final test acc)}} of Fig. 1's net."""
    for (norm, lr), seeds in cells.items():
        run_cell(store / f"{norm}_lr{lr}", [*SIGMOID, f"model.norm={norm}", f"optim.lr={lr}"],
                 {s: (status, curve([0.1, val], [0.1, test]))
                  for s, (status, val, test) in seeds.items()})


def test_fig1_net_at_each_nets_best_rate_chosen_on_validation_compared_on_test(tmp_path,
                                                                              capsys):
    store, out = tmp_path / "store", tmp_path / "results"
    fig1_net_cells(store, {
        # BN: lr 0.1 best on validation; lr 1.0 would win on test (it must not be chosen)
        ("bn", "0.01"): {s: ("completed", 0.5, 0.5) for s in range(3)},
        ("bn", "0.1"): {s: ("completed", 0.95, 0.90 + s / 100) for s in range(3)},
        ("bn", "1.0"): {s: ("completed", 0.93, 0.99) for s in range(3)},
        ("bn", "10.0"): {s: ("completed", 0.6, 0.6) for s in range(3)},
        # without BN: lr 1.0 chosen although seed 2 diverged ((0.95 + 0.95 + 0.1) / 3 > 0.6)
        ("none", "0.01"): {s: ("completed", 0.2, 0.2) for s in range(3)},
        ("none", "0.1"): {s: ("completed", 0.6, 0.95) for s in range(3)},
        ("none", "1.0"): {0: ("completed", 0.95, 0.85), 1: ("completed", 0.95, 0.86),
                          2: ("diverged", 0.95, 0.99)},
        ("none", "10.0"): {s: ("diverged", 0.1, 0.1) for s in range(3)}})
    # another net in the same sweep takes no part in the claim
    run_cell(store, [*MNIST, "model.activation=relu", "model.norm=none", "optim.lr=1.0"],
             {s: ("completed", curve([0.1, 0.99])) for s in range(3)})
    assert analyse.main(["sweep-mnist", str(store), "--out", str(out)]) == 0
    data = read_claims(out / "sweep_mnist_claims.json")
    assert data["experiment"] == "sweep_mnist" and data["make"] == "make sweep-mnist"
    (claim,) = data["claims"]
    evidence = claim["evidence"]
    assert [side["label"] for side in evidence["sides"]] == ["with BN (lr 0.1)",
                                                           "without BN (lr 1)"]
    assert evidence["sides"][0]["seeds"] == pytest.approx([0.90, 0.91, 0.92])  # test, per seed
    assert evidence["sides"][1]["seeds"][:2] == pytest.approx([0.85, 0.86])
    assert evidence["sides"][1]["seeds"][2] is None  # diverged: the worst value, not dropped
    assert claim["verdict"] == "holds" and evidence["p_value"] == pytest.approx(1 / 20)
    assert all(p["met"] for p in evidence["preconditions"])
    assert evidence["lead_by_rate"]["0.1"] == pytest.approx(0.91 - 0.95)
    assert evidence["lead_by_rate"]["1"] == pytest.approx(0.99 - 0.855)
    assert claim["dataset"] == "mnist" and claim["source"] == "Ioffe & Szegedy (2015)"
    assert f"[holds] {sweep.BEST_RATE_CLAIM}" in capsys.readouterr().out
    assert (out / "sweep_mnist_claims.md").read_text().count("| BN's net beats") == 1


def test_a_best_rate_at_an_end_of_the_grid_is_not_measured(tmp_path):
    # BN's validation peaks at the largest rate swept: a larger one might be better still
    store, out = tmp_path / "store", tmp_path / "results"
    fig1_net_cells(store, {
        **{("bn", lr): {s: ("completed", val, val) for s in range(3)}
           for lr, val in (("0.1", 0.8), ("1.0", 0.9), ("10.0", 0.95))},
        **{("none", lr): {s: ("completed", val, val) for s in range(3)}
           for lr, val in (("0.1", 0.8), ("1.0", 0.9), ("10.0", 0.5))}})
    sweep.main([str(store), "--out", str(out)])
    (claim,) = read_claims(out / "sweep_mnist_claims.json")["claims"]
    assert claim["verdict"] == "not measured"
    unmet = [p["check"] for p in claim["evidence"]["preconditions"] if not p["met"]]
    assert unmet == ["the rate chosen with BN (10) is inside the swept rates (0.1, 1, 10), "
                     "not at an end"]


def test_a_sweep_without_fig1s_net_writes_no_claims(tmp_path):
    store, out = tmp_path / "store", tmp_path / "results"
    run_cell(store, [*MNIST, "model.activation=relu", "model.norm=bn", "optim.lr=0.1"],
             {s: ("completed", curve([0.1, 0.9])) for s in range(3)})
    sweep.main([str(store), "--out", str(out)])
    assert (out / "sweep_mnist.csv").is_file()
    assert not list(out.glob("*claims*"))
