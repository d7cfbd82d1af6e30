"""Aggregate a hyper-parameter sweep: one CSV row per run, accuracy heatmaps, best-cell curves.
The analysis of the experiments sweep-mnist and sweep-cifar (bnrepro.experiments.EXPERIMENTS).

    python -m bnrepro.analyse sweep-mnist runs/sweep_mnist [more dirs] [--out results]
        [--thresholds 0.9 0.95] [--where KEY=VALUE ...] [--name STEM]
    python -m bnrepro.analyse sweep-cifar runs/sweep_cifar10 [--out results]
        --where model.width_multiplier=0.5 --where trainer.max_steps=400

Every run dir below the given folders is read, whatever its status (completed, diverged,
failed, ...); one whose files are missing or unreadable is named in a warning and skipped.
`--where KEY=VALUE` (repeatable) keeps only runs whose resolved config has that value; VALUE
is parsed as YAML, so `--where model.width_multiplier=0.5` matches 0.5.

Cells. Runs are split by dataset. Within a dataset a cell is keyed by norm, activation, lr,
dropout and every other config key whose value differs between the runs, except the seed (a
cell's seeds are its replicates) and NON_TRAJECTORY_KEYS. Besides the four, only optimiser
hyper-parameters (optim.*, e.g. momentum) may differ: selection tunes over them. Runs that
differ in anything else (width, steps, model profile, ...) are different experiments, so the
analysis stops with one error naming each such key and its values, writing nothing; narrow the
folder with --where.

Selection rule: validation picks, test reports. Per (norm, activation) the best cell is the
one with the highest select_val: the mean over ALL the cell's seeds of final validation
accuracy, where a seed that did not complete (diverged, failed, interrupted, running) scores
chance, 1/10. A cell where 1 of 3 seeds survived at 0.99 scores (0.99 + 0.1 + 0.1) / 3, so it
cannot win on its survivor alone. Only cells with a completed seed are candidates; ties go to
the higher mean validation accuracy. Test accuracy never takes part in choosing: the printed
table and the figures REPORT the chosen cell's mean final test accuracy over its completed
seeds, with its completed and diverged seed counts (k/n). steps_to_val_acc_<t> is the first
evaluated step whose val/acc >= t.

For each dataset D it writes <out>/sweep_D.csv, sweep_D_heatmap.{png,pdf} (colour: mean final
validation accuracy over completed seeds) and sweep_D_best_curves.{png,pdf} (test accuracy of
the chosen cells). `--name` replaces the stem `sweep_D`. With --wandb (or
BNREPRO_WANDB_FIGURES=1) the figures and the per-run table also go to the runs' wandb group.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnrepro.analysis import wandb_figures
from bnrepro.atomic import atomic_save_figure, atomic_write, atomic_write_text
from bnrepro.claims import compare, to_markdown, write_claims
from bnrepro.config import flatten
from bnrepro.run.store import evaluation_rows, read_config, read_metrics, read_summary

AXES = ["dataset", "norm", "activation", "lr", "dropout", "seed"]  # summary["axes"]
AXIS_KEYS = {"dataset.name": "dataset", "model.norm": "norm", "model.activation": "activation",
             "optim.lr": "lr", "model.dropout": "dropout", "seed": "seed"}  # config -> axis
BASE_CELL = ["norm", "activation", "lr", "dropout"]
# Config keys that never change a training trajectory, so runs differing only in them are
# replicates of one cell. An entry ending in "." covers everything under it.
NON_TRAJECTORY_KEYS = ("name", "trainer.progress", "trainer.resume", "trainer.checkpoint_every",
                       "trainer.device", "trainer.threads", "trainer.eval_memory_mb",
                       "dataset.root", "dataset.mirror", "logger.", "hydra.", "measures.",
                       "probe.residual_variance", "trainer.test_examples",
                       "probe.inference_gap")
TUNABLE_PREFIXES = ("optim.",)  # besides the axes, the only keys a sweep may vary
REQUIRED_SUMMARY_KEYS = ["status", "axes", "final_val_acc", "final_test_acc"]
SUMMARY_KEYS = ["status", "reason", "steps_done", "max_steps", "diverged_at_step",
                "final_val_acc", "best_val_acc", "best_val_step", "test_acc_at_best_val",
                "final_test_acc", "final_train_loss"]
STATUSES = ["completed", "diverged", "failed", "interrupted", "running"]  # printing order
NUM_CLASSES = 10  # mnist, cifar10 and cifar10-jpeg
CHANCE = 1 / NUM_CLASSES  # the selection score of a seed that did not complete
CHANCE_MARGIN = 0.1  # 'no learn' = mean val acc below CHANCE + this (--chance-margin)
THRESHOLDS = (0.9, 0.95, 0.97)  # the steps_to_val_acc_<t> columns (--thresholds)
UNIT_QUANTILE = re.compile(r"act/h(\d+)/q\d+$")  # the tracked unit's quantiles, not all_q*
UNREADABLE = (OSError, ValueError, KeyError, yaml.YAMLError, OmegaConfBaseException)
ABSENT = "(absent)"  # how a config key missing from a run is shown
# Fig. 1's net among the sweep's cells (Ioffe & Szegedy Sec. 4.1: sigmoid units, no dropout):
# its claim at each net's best rate (issue 26) is checked where a sweep holds such cells.
FIG1_NET = {"activation": "sigmoid", "dropout": 0.0}
FIG1_SOURCE = "Ioffe & Szegedy (2015)"  # bnrepro.claims.SOURCES
ENDED = ("completed", "diverged")  # a diverged seed is the worst value; others did not end
BEST_RATE_CLAIM = "BN's net beats the no-BN net in test accuracy, each at its best rate"
BEST_RATE_RULE = (
    "each net's rate (and any other tuned optim.* value) is chosen on validation among Fig. "
    "1's net's cells (sigmoid, no dropout) by the selection rule of the heatmap; the chosen "
    "cells' per-seed final TEST accuracies are compared by bnrepro.claims.compare (exact "
    "one-sided permutation test at 0.05; with 3 seeds a side holds only when the ranges do "
    "not overlap; else inconclusive); a diverged seed counts as the worst value. Not measured "
    "when a net has no completed cell, the chosen cells ran other seeds or a seed did not "
    "end, or a chosen rate is at an end of the swept rates (a rate outside the grid could be "
    "better: the grid, not the runs, would decide).")
SELECTION_RULE = (f"chosen on select_val = mean final val acc over all n seeds of the cell, "
                  f"a diverged/failed/unfinished seed scoring chance ({CHANCE:g}); val_acc, "
                  f"test_acc = means over completed seeds")


def steps_to_threshold(metrics: pd.DataFrame, threshold: float, column: str = "val/acc"
                       ) -> int | None:
    """First evaluated step whose `column` (validation accuracy) is >= threshold; None if it
    never gets there or was not logged."""
    if metrics.empty or column not in metrics:
        return None
    hits = metrics.loc[metrics[column].astype(float) >= threshold, "step"]
    return int(hits.min()) if len(hits) else None


def quantile_columns(metrics: pd.DataFrame) -> dict[int, list[str]]:
    """Hidden layer (1-based) -> the tracked unit's logged quantile columns (q15, q50, q85)."""
    layers: dict[int, list[str]] = {}
    for column in metrics.columns:
        if match := UNIT_QUANTILE.fullmatch(column):
            layers.setdefault(int(match[1]), []).append(column)
    return dict(sorted(layers.items()))


def drift(metrics: pd.DataFrame, layer: int) -> float:
    """How much the input distribution of layer `layer`'s tracked unit moved during training:
    the mean over its logged quantiles of (max - min over evaluations). NaN if not logged."""
    columns = quantile_columns(metrics).get(layer)
    if not columns:
        return float("nan")
    values = metrics[columns].astype(float)
    return float((values.max() - values.min()).mean())


def read_run(run_dir: Path) -> tuple[dict, dict[str, Any], pd.DataFrame]:
    """summary.json, the flattened resolved config and metrics.jsonl of one run; raises one of
    UNREADABLE if a file is missing or bad."""
    summary = read_summary(run_dir)
    if not isinstance(summary, dict) or not isinstance(summary.get("axes"), dict):
        raise ValueError("summary.json holds no run summary")
    if missing := [k for k in REQUIRED_SUMMARY_KEYS if k not in summary]:
        raise ValueError(f"summary.json lacks {', '.join(missing)} (a trainer without a "
                         "validation split?)")
    config = OmegaConf.to_container(read_config(run_dir), resolve=True)
    if not isinstance(config, dict):
        raise ValueError("config.yaml holds no config mapping")
    if not (run_dir / "metrics.jsonl").is_file():  # read_metrics would return [] silently
        raise FileNotFoundError("no metrics.jsonl")
    # One row per evaluation, in order: a resumed run's store drops rows past its checkpoint;
    # rows of measured steps that were not evaluated are not curves (bnrepro.measures).
    return summary, flatten(config), pd.DataFrame(evaluation_rows(read_metrics(run_dir)))


def run_row(summary: dict, metrics: pd.DataFrame, thresholds: list[float]) -> dict[str, Any]:
    """The CSV row of one run, minus its cell-key columns (known only per dataset)."""
    row = {k: summary["axes"][k] for k in AXES} | {k: summary.get(k) for k in SUMMARY_KEYS}
    row |= {f"steps_to_val_acc_{t:g}": steps_to_threshold(metrics, t) for t in thresholds}
    return row | {f"drift_h{i}": drift(metrics, i) for i in quantile_columns(metrics)}


def collect(roots: Iterable[str | Path], thresholds: Iterable[float] = THRESHOLDS
            ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """One row per run dir below `roots` (every status), and each run's metrics and flattened
    config by run_dir. Unreadable run dirs are skipped with one warning that names them."""
    thresholds = list(thresholds)
    rows, curves, configs, skipped = [], {}, {}, []
    for root in roots:
        for summary_file in sorted(Path(root).rglob("summary.json")):
            run_dir = summary_file.parent
            try:
                summary, config, metrics = read_run(run_dir)
                row = run_row(summary, metrics, thresholds)
            except UNREADABLE as err:
                skipped.append(f"{run_dir} ({type(err).__name__}: {err})")
                continue
            rows.append(row | {"run_dir": str(run_dir)})
            curves[str(run_dir)], configs[str(run_dir)] = metrics, config
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable run(s): " + "; ".join(skipped),
                      stacklevel=2)
    return typed_frame(rows, thresholds), curves, configs


def typed_frame(rows: list[dict[str, Any]], thresholds: list[float]) -> pd.DataFrame:
    drifts = sorted({c for r in rows for c in r if c.startswith("drift_h")},
                    key=lambda c: int(c[len("drift_h"):]))
    steps_to = [f"steps_to_val_acc_{t:g}" for t in thresholds]
    columns = [*AXES, *SUMMARY_KEYS, *steps_to, *drifts, "run_dir"]
    integers = ["seed", "steps_done", "max_steps", "diverged_at_step", "best_val_step", *steps_to]
    floats = ["lr", "dropout", "final_val_acc", "best_val_acc", "test_acc_at_best_val",
              "final_test_acc", "final_train_loss", *drifts]
    df = pd.DataFrame(rows, columns=columns)
    return df.astype({c: "Int64" for c in integers} | {c: float for c in floats})


def parse_where(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` -> (KEY, VALUE parsed as YAML the way OmegaConf reads config files)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--where wants KEY=VALUE, got {text!r}")
    try:
        parsed = OmegaConf.to_container(OmegaConf.create(f"v: {value}"))["v"]
    except (yaml.YAMLError, OmegaConfBaseException):
        parsed = value  # not valid YAML (e.g. holds ": "): compare as the plain string
    return key.strip(), parsed


def keep_where(df: pd.DataFrame, configs: dict[str, dict[str, Any]],
               where: list[tuple[str, Any]]) -> pd.DataFrame:
    """The runs whose config has every `where` (key, value); refuses a key no run has, since
    that is a typo rather than a filter."""
    for key, _ in where:
        if not any(key in configs[d] for d in df["run_dir"]):
            raise SystemExit(f"--where {key}=...: no run's config has the key {key!r}")
    keep = [all(configs[d].get(key, ABSENT) == value for key, value in where)
            for d in df["run_dir"]]
    return df[keep].reset_index(drop=True)


def hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def differing_keys(configs: list[dict[str, Any]]) -> dict[str, dict[Any, int]]:
    """Every config key whose value is not the same in all `configs` (ignoring the seed and
    NON_TRAJECTORY_KEYS) -> {value: number of runs with it}."""
    keys = sorted({k for config in configs for k in config})
    differing = {}
    for key in keys:
        if key == "seed" or any(f"{key}.".startswith(p if p.endswith(".") else f"{p}.")
                                for p in NON_TRAJECTORY_KEYS):
            continue
        counts: dict[Any, int] = {}
        for config in configs:
            value = hashable(config.get(key, ABSENT))
            counts[value] = counts.get(value, 0) + 1
        if len(counts) > 1:
            differing[key] = counts
    return differing


def split_keys(configs: list[dict[str, Any]]) -> tuple[list[str], dict[str, dict[Any, int]]]:
    """(extra cell keys, keys that mark different experiments -> their value counts)."""
    extra = {k: v for k, v in differing_keys(configs).items() if k not in AXIS_KEYS}
    refused = {k: v for k, v in extra.items() if not k.startswith(TUNABLE_PREFIXES)}
    return [k for k in extra if k not in refused], refused


def describe_values(counts: dict[Any, int]) -> str:
    def order(value: Any) -> tuple:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return (not is_number, value if is_number else str(value))

    return ", ".join(f"{v} ({counts[v]} run{'s' * (counts[v] > 1)})"
                     for v in sorted(counts, key=order))


def mixed_experiments_error(refused: dict[str, dict[str, dict[Any, int]]]) -> str:
    """One message naming, per dataset, each key that differs beyond the sweep's axes."""
    lines = ["these runs differ in settings that are not sweep axes, so they are different "
             "experiments and averaging them as seeds would be wrong:"]
    lines += [f"  {dataset}: {key} = {describe_values(counts)}"
              for dataset, keys in refused.items() for key, counts in keys.items()]
    key, counts = next(iter(next(iter(refused.values())).items()))
    lines.append("cells may differ only in model.norm, model.activation, optim.lr, "
                 "model.dropout, optim.* and seed. Aggregate one experiment at a time: add "
                 f"--where KEY=VALUE (repeatable), e.g. --where {key}={next(iter(counts))}")
    return "\n".join(lines)


def cell_table(runs: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """Per cell: select_val score (score; non-completed seeds count as chance), mean final val
    and test accuracy over completed seeds (val, test), completed seeds (n), diverged seeds
    (diverged) and all seeds (runs)."""
    done = runs["status"] == "completed"
    scored = runs.assign(score=runs["final_val_acc"].where(done).fillna(CHANCE),
                         val=runs["final_val_acc"].where(done),
                         test=runs["final_test_acc"].where(done), done=done,
                         div=runs["status"] == "diverged")
    grouped = scored.groupby(cell, dropna=False, sort=True)
    return grouped.agg(score=("score", "mean"), val=("val", "mean"), test=("test", "mean"),
                       n=("done", "sum"), diverged=("div", "sum"),
                       runs=("status", "size")).reset_index()


def best_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (norm, activation): the cell with the highest score among cells with a completed
    seed (ties: higher mean val); NaN where no cell of the pair has a completed seed."""
    ranked = cells[cells["n"] > 0].sort_values(["score", "val"], ascending=False, kind="stable")
    best = ranked.groupby(["norm", "activation"]).head(1)
    pairs = cells[["norm", "activation"]].drop_duplicates()
    return pairs.merge(best, how="left", on=["norm", "activation"]).sort_values(
        ["norm", "activation"], ignore_index=True)


def best_table_text(best: pd.DataFrame, cell: list[str]) -> str:
    """The printed best-cell table, headed by the selection rule."""
    def count(k: float, n: float) -> str:
        return "-" if pd.isna(n) else f"{int(k)}/{int(n)}"

    table = best[cell].assign(
        select_val=best["score"], val_acc=best["val"], test_acc=best["test"],
        completed=[count(k, n) for k, n in zip(best["n"], best["runs"], strict=True)],
        diverged=[count(k, n) for k, n in zip(best["diverged"], best["runs"], strict=True)])
    body = table.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")
    return f"best cell per (norm, activation), {SELECTION_RULE}\n{body}"


def status_counts(runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts()
    order = [s for s in STATUSES if s in counts] + sorted(set(counts.index) - set(STATUSES))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def cell_lines(cell: dict[str, Any], no_learn_below: float, chosen: bool) -> list[str]:
    """The text of one heatmap cell."""
    lines = [f"val {cell['val']:.3f}", f"test {cell['test']:.3f}"] if cell["n"] else []
    if not cell["n"] and not cell["diverged"]:
        lines.append("no result")
    if 0 < cell["n"] < cell["runs"]:
        lines.append(f"n={cell['n']}/{cell['runs']}")
    if cell["n"] and cell["val"] < no_learn_below:
        lines.append("no learn")
    if cell["diverged"]:
        lines.append(f"div {cell['diverged']}/{cell['runs']}")
    return lines + ["chosen"] * chosen


def panel_rows(cells: pd.DataFrame, extra: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """One heatmap row per (norm, values of the extra cell keys)."""
    combos = cells[extra].drop_duplicates().sort_values(extra).to_dict("records") if extra \
        else [{}]
    return [(norm, combo) for norm in sorted(cells["norm"].unique()) for combo in combos]


def draw_panel(ax: plt.Axes, panel: pd.DataFrame, chosen: pd.DataFrame, scale: Normalize,
               no_learn_below: float, lrs: list[float], dropouts: list[float]) -> None:
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # white: no completed seed
    grid = panel.pivot(index="dropout", columns="lr", values="val")
    ax.imshow(grid.reindex(index=dropouts, columns=lrs).to_numpy(float), cmap=cmap, norm=scale,
              origin="lower", aspect="auto")
    for cell in panel.to_dict("records"):
        i, j = dropouts.index(cell["dropout"]), lrs.index(cell["lr"])
        is_chosen = bool(len(chosen.merge(pd.DataFrame([cell])[chosen.columns])))
        if cell["diverged"]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                   edgecolor="red", lw=1.5))
        if is_chosen:
            ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False,
                                   edgecolor="black", lw=3))
        rgb = cmap(scale(cell["val"]))[:3] if cell["n"] else (1, 1, 1)
        dark = cell["n"] and np.dot(rgb, (0.299, 0.587, 0.114)) < 0.5
        box = {"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8, "lw": 0}
        ax.text(j, i, "\n".join(cell_lines(cell, no_learn_below, is_chosen)), ha="center",
                va="center", fontsize=7, color="white" if dark and not cell["diverged"]
                else "black", fontweight="bold" if cell["diverged"] else "normal",
                bbox=box if cell["diverged"] else None)
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(dropouts)), [f"{d:g}" for d in dropouts])


def heatmap_figure(cells: pd.DataFrame, best: pd.DataFrame, extra: list[str], dataset: str,
                   no_learn_below: float) -> plt.Figure:
    """Per (norm, extra keys) x activation panel: lr x dropout, coloured by mean final val acc
    over completed seeds; the chosen cells framed."""
    rows, acts = panel_rows(cells, extra), sorted(cells["activation"].unique())
    lrs, dropouts = sorted(cells["lr"].unique()), sorted(cells["dropout"].unique())
    val = cells["val"].dropna()
    low, high = (val.min(), val.max()) if len(val) else (0.0, 1.0)
    scale = Normalize(min(low, high - 0.01), high)
    chosen = best.dropna(subset=["score"])[["norm", "activation", "lr", "dropout", *extra]]
    fig, axes = plt.subplots(len(rows), len(acts), squeeze=False, layout="constrained",
                             figsize=(len(acts) * (1.0 * len(lrs) + 1.2) + 1.2,
                                      len(rows) * (0.9 * len(dropouts) + 1.1) + 0.8))
    for (r, (norm, combo)), (c, act) in ((a, b) for a in enumerate(rows) for b in enumerate(acts)):
        mask = (cells["norm"] == norm) & (cells["activation"] == act)
        for key, value in combo.items():
            mask &= cells[key] == value
        draw_panel(axes[r, c], cells[mask], chosen, scale, no_learn_below, lrs, dropouts)
        axes[r, c].set_title(", ".join([f"norm={norm}", act, *(f"{k}={v:g}" if isinstance(
            v, float) else f"{k}={v}" for k, v in combo.items())]), fontsize=9)
        if r == len(rows) - 1:
            axes[r, c].set_xlabel("learning rate")
        if c == 0:
            axes[r, c].set_ylabel("dropout")
    fig.colorbar(ScalarMappable(scale, plt.get_cmap("viridis")), ax=axes,
                 label="mean final VALIDATION accuracy (completed seeds)")
    title = (f"{dataset}: colour and 'val' = mean final VALIDATION accuracy, 'test' = mean final "
             "TEST accuracy, both over completed seeds. Framed 'chosen': the best cell per (norm, "
             "activation), picked on validation with non-completed seeds scored as chance. "
             "Hatched, div k/n: k of n seeds diverged; n=k/n: k of n seeds completed; no learn: "
             f"val < {no_learn_below:g}")
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 12)), fontsize=9)
    return fig


def cell_label(cell: dict[str, Any], keys: list[str]) -> str:
    values = [f"{k}={cell[k]:g}" if isinstance(cell[k], float) else f"{k}={cell[k]}"
              for k in keys[2:]]
    return (f"{cell['norm']}, {cell['activation']}: {', '.join(values)} "
            f"({cell['n']:.0f} of {cell['runs']:.0f} seeds completed, "
            f"{cell['diverged']:.0f} of {cell['runs']:.0f} diverged)")


def best_curves_figure(runs: pd.DataFrame, best: pd.DataFrame, curves: dict[str, pd.DataFrame],
                       cell: list[str], dataset: str) -> plt.Figure:
    """Test accuracy of each chosen cell: mean over its completed seeds, band = min..max."""
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    done = runs[runs["status"] == "completed"]
    for k, chosen in enumerate(best.dropna(subset=["score"]).to_dict("records")):
        members = done.merge(pd.DataFrame([chosen])[cell], on=cell)
        acc = pd.concat([curves[d].set_index("step")["test/acc"].astype(float)
                         for d in members["run_dir"]], axis=1)
        color = plt.get_cmap("tab10")(k)
        ax.plot(acc.index, acc.mean(axis=1), color=color, label=cell_label(chosen, cell))
        ax.fill_between(acc.index, acc.min(axis=1), acc.max(axis=1), color=color, alpha=0.2)
    ax.set(xlabel="training steps", ylabel="TEST accuracy",
           title=f"{dataset}: test accuracy of the best cell per norm and activation, chosen on "
                 "validation\n(mean over completed seeds, band = min..max)")
    ax.grid(alpha=0.3)
    if ax.lines:
        fig.legend(loc="outside lower center", ncols=1, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no completed runs", transform=ax.transAxes, ha="center")
    return fig


def with_cell_columns(runs: pd.DataFrame, configs: dict[str, dict[str, Any]],
                      extra: list[str]) -> pd.DataFrame:
    """`runs` with one column per extra cell key, placed after the axes."""
    values = {k: [hashable(configs[d].get(k)) for d in runs["run_dir"]] for k in extra}
    return pd.concat([runs[AXES], pd.DataFrame(values, index=runs.index),
                      runs.drop(columns=AXES)], axis=1)


def by_dataset(df: pd.DataFrame, configs: dict[str, dict[str, Any]]
               ) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Per dataset: its runs with one column per extra cell key (after the axes), and those
    keys. SystemExit with mixed_experiments_error if runs of a dataset differ in a key that is
    neither a sweep axis nor tunable (nothing is computed for any dataset then)."""
    datasets = sorted(df["dataset"].unique())
    keys = {d: split_keys([configs[r] for r in df.loc[df["dataset"] == d, "run_dir"]])
            for d in datasets}
    if refused := {d: keys[d][1] for d in datasets if keys[d][1]}:
        raise SystemExit(mixed_experiments_error(refused))
    return {d: (with_cell_columns(df[df["dataset"] == d], configs, keys[d][0]), keys[d][0])
            for d in datasets}


@dataclass
class DatasetSweep:
    """One dataset's sweep: its runs (the CSV's rows, in cell and seed order), the config keys
    that key its cells besides BASE_CELL, its cells and the chosen cell per (norm,
    activation), and the stem of its files."""
    dataset: str
    stem: str
    runs: pd.DataFrame
    extra: list[str]
    cells: pd.DataFrame
    best: pd.DataFrame
    claims: list[dict[str, Any]]

    @property
    def cell(self) -> list[str]:
        return [*BASE_CELL, *self.extra]


@dataclass
class SweepResult:
    """Each dataset's sweep; every run's metrics and flattened config by run_dir; the 'no
    learn' line of the heatmaps."""
    datasets: dict[str, DatasetSweep]
    curves: dict[str, pd.DataFrame]
    configs: dict[str, dict[str, Any]]
    no_learn_below: float


def chosen_seeds(runs: pd.DataFrame, chosen: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """The runs of the chosen cell (one row of best_cells), in seed order."""
    return runs.merge(chosen[cell], on=cell).sort_values("seed", ignore_index=True)


def best_rate_claims(runs: pd.DataFrame, cells: pd.DataFrame, cell: list[str], dataset: str
                     ) -> list[dict[str, Any]]:
    """Fig. 1's claim "BN beats no BN" with each net at its own best rate, chosen on
    validation and reported on test (BEST_RATE_RULE); [] when the sweep has no cell of Fig.
    1's net (FIG1_NET)."""
    mine = cells[(cells["activation"] == FIG1_NET["activation"])
                 & (cells["dropout"] == FIG1_NET["dropout"])]
    if mine.empty:
        return []
    best = best_cells(mine).set_index("norm")
    rates = sorted(mine["lr"].unique())
    sides, seeds, checks, words = {}, {}, [], []
    for norm, label in (("bn", "with BN"), ("none", "without BN")):
        found = norm in best.index and not pd.isna(best.loc[norm, "score"])
        checks.append((f"the net {label} has a cell with a completed seed", found))
        if not found:
            sides[norm], seeds[norm] = (label, []), []
            continue
        chosen = best.loc[[norm]].reset_index()
        members = chosen_seeds(runs, chosen, cell)
        ended = members["status"].isin(ENDED).all()
        checks.append((f"every seed of the chosen cell {label} ended", bool(ended)))
        lr = float(chosen["lr"].iloc[0])
        checks.append((f"the rate chosen {label} ({lr:g}) is inside the swept rates "
                       f"({', '.join(f'{r:g}' for r in rates)}), not at an end",
                       rates[0] < lr < rates[-1]))
        tuned = ", ".join(f"{k} {chosen[k].iloc[0]}" for k in cell[len(BASE_CELL):])
        test = members["final_test_acc"].where(members["status"] == "completed")
        sides[norm] = (f"{label} (lr {lr:g}{', ' + tuned if tuned else ''})", test.tolist())
        seeds[norm] = members["seed"].tolist()
        lost = int(test.isna().sum())
        words.append(f"{label} lr {lr:g}{' (' + tuned + ')' if tuned else ''}: val "
                     f"{chosen['val'].iloc[0]:.4f}, test {test.mean():.4f} ({test.min():.4f}.."
                     f"{test.max():.4f})" + (f", {lost} of {len(test)} diverged" if lost else ""))
    checks.append((f"the same seeds at both chosen cells ({seeds['bn']} and {seeds['none']})",
                   seeds["bn"] == seeds["none"]))
    result, evidence = compare(sides["bn"], sides["none"], better="higher",
                               preconditions=checks)
    lead = {}  # BN's lead at each rate, the cells at that rate chosen on validation as well
    for lr in rates:
        test = best_cells(mine[mine["lr"] == lr]).set_index("norm")["test"]
        if {"bn", "none"} <= set(test.dropna().index):
            lead[f"{lr:g}"] = round(float(test["bn"] - test["none"]), 4)
    evidence["lead_by_rate"] = lead
    steps = int(runs["max_steps"].max())
    ours = (f"final test acc at step {steps}, chosen on validation, mean (min..max over "
            f"seeds): {'; '.join(words) or 'no cell'}. BN's lead in mean test acc at each "
            f"rate: {', '.join(f'{r}: {v:+.4f}' for r, v in lead.items())}")
    return [{"claim": BEST_RATE_CLAIM, "paper": "Sec. 4.1, Fig. 1(a): \"the batch-normalized "
             "network enjoys the higher test accuracy\" (both nets at one rate, not stated)",
             "ours": ours, "verdict": result, "dataset": dataset, "source": FIG1_SOURCE,
             "evidence": evidence}]


def dataset_sweep(runs: pd.DataFrame, extra: list[str], dataset: str, stem: str
                  ) -> DatasetSweep:
    """One dataset's cells, chosen cells (selection rule: module docstring) and claims."""
    runs = runs.sort_values([*BASE_CELL, *extra, "seed"], ignore_index=True)
    cell = [*BASE_CELL, *extra]
    cells = cell_table(runs, cell)
    return DatasetSweep(dataset, stem, runs, extra, cells, best_cells(cells),
                        best_rate_claims(runs, cells, cell, dataset))


def analyse(sweep_dirs: list[Path], thresholds: Iterable[float] = THRESHOLDS,
            where: Iterable[tuple[str, Any]] = (), name: str | None = None,
            chance_margin: float = CHANCE_MARGIN) -> SweepResult:
    """Every run below `sweep_dirs` that has every `where` (key, value), split by dataset;
    file stems sweep_<dataset>, or `name` (name_<dataset> when there are several datasets).
    SystemExit, before anything is computed, when there is no run or the runs of a dataset
    are different experiments (mixed_experiments_error)."""
    if missing := [str(d) for d in sweep_dirs if not Path(d).is_dir()]:
        raise SystemExit(f"no such folder: {', '.join(missing)}")
    df, curves, configs = collect(sweep_dirs, thresholds)
    if df.empty:
        raise SystemExit(f"no readable runs under {', '.join(map(str, sweep_dirs))}")
    where = list(where)
    df = keep_where(df, configs, where)
    if df.empty:
        raise SystemExit("no run matches " + " ".join(f"--where {k}={v}" for k, v in where))
    datasets = by_dataset(df, configs)  # refuses mixed experiments before anything is written

    def stem(dataset: str) -> str:
        if name:
            return f"{name}_{dataset}" if len(datasets) > 1 else name
        return f"sweep_{dataset}"

    return SweepResult({d: dataset_sweep(runs, extra, d, stem(d))
                        for d, (runs, extra) in datasets.items()},
                       curves, configs, 1 / NUM_CLASSES + chance_margin)


def dataset_figures(sweep: DatasetSweep, result: SweepResult) -> dict[str, plt.Figure]:
    """One dataset's figures: file stem -> the heatmap, the chosen cells' test curves."""
    return {f"{sweep.stem}_heatmap": heatmap_figure(sweep.cells, sweep.best, sweep.extra,
                                                    sweep.dataset, result.no_learn_below),
            f"{sweep.stem}_best_curves": best_curves_figure(sweep.runs, sweep.best,
                                                            result.curves, sweep.cell,
                                                            sweep.dataset)}


def figures(result: SweepResult) -> dict[str, plt.Figure]:
    """File stem -> figure, for every dataset."""
    return {stem: fig for sweep in result.datasets.values()
            for stem, fig in dataset_figures(sweep, result).items()}


def write_dataset(sweep: DatasetSweep, result: SweepResult, out: Path) -> list[Path]:
    """Write one dataset's CSV and figures into `out`; return the paths written."""
    csv = out / f"{sweep.stem}.csv"
    atomic_write(csv, lambda tmp: sweep.runs.to_csv(tmp, index=False))
    paths = [csv]
    for stem, fig in dataset_figures(sweep, result).items():
        paths += atomic_save_figure(fig, out / stem)
        plt.close(fig)
    if sweep.claims:
        paths += write_sweep_claims(sweep, result, out)
    return paths


def write_sweep_claims(sweep: DatasetSweep, result: SweepResult, out: Path) -> list[Path]:
    """<stem>_claims.md and .json: the claims of Fig. 1's net at each net's best rate."""
    name = result.configs[sweep.runs["run_dir"].iloc[0]]["name"]
    mine = sweep.runs[(sweep.runs["activation"] == FIG1_NET["activation"])
                      & (sweep.runs["dropout"] == FIG1_NET["dropout"])]
    rates = ", ".join(f"{lr:g}" for lr in sorted(mine["lr"].unique()))
    setup = (f"{sweep.dataset}, Fig. 1's net (sigmoid, no dropout) in the sweep: "
             f"{int(mine['max_steps'].max())} steps, rates {rates}, "
             f"{mine.groupby(BASE_CELL)['seed'].nunique().max()} seeds per cell")
    title = f"Fig. 1's claim at each net's best rate, checked on {sweep.dataset}"
    md = out / f"{sweep.stem}_claims.md"
    atomic_write_text(md, to_markdown(title, sweep.claims, BEST_RATE_RULE))
    pngs = [f"{sweep.stem}_heatmap.png", f"{sweep.stem}_best_curves.png"]
    return [md, write_claims(out / f"{sweep.stem}_claims.json", sweep.claims, experiment=name,
                             title=title, make=f"make {name.replace('_', '-')}", setup=setup,
                             figures=pngs, verdict_rule=BEST_RATE_RULE,
                             summaries=[read_summary(d) for d in mine["run_dir"]])]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bnrepro.analyse {sweep-mnist,sweep-cifar}",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="folders to search for runs")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(THRESHOLDS),
                        help="validation accuracies for the steps_to_val_acc_<t> columns")
    parser.add_argument("--where", type=parse_where, action="append", default=[],
                        metavar="KEY=VALUE", help="keep only runs whose config has KEY=VALUE "
                        "(VALUE parsed as YAML; repeatable)")
    parser.add_argument("--name", help="file stem instead of sweep_<dataset>")
    parser.add_argument("--chance-margin", type=float, default=CHANCE_MARGIN,
                        help=f"'no learn' = mean val acc below 1/{NUM_CLASSES} + this")
    wandb_figures.add_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    matplotlib.use("Agg")  # files only: no window, whatever backend the environment names
    result = analyse(args.sweep_dirs, args.thresholds, args.where, args.name,
                     args.chance_margin)
    for sweep in result.datasets.values():
        paths = write_dataset(sweep, result, args.out)
        print(f"{sweep.dataset}: {len(sweep.runs)} runs ({status_counts(sweep.runs)})")
        print(best_table_text(sweep.best, sweep.cell))
        print("wrote " + ", ".join(map(str, paths)))
        for claim in sweep.claims:
            print(f"[{claim['verdict']}] {claim['claim']}: {claim['ours']}")
        wandb_figures.publish(args.wandb, result.configs[sweep.runs["run_dir"].iloc[0]],
                              [p for p in paths if p.suffix == ".png"],
                              tables={"runs": sweep.runs.drop(columns="run_dir")},
                              wandb_dir=args.sweep_dirs[0])
    return 0
