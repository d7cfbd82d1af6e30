"""Figure 1 of Ioffe & Szegedy (2015) from our run store.

(a) test accuracy vs training steps, with and without BN (mean over seeds, band = min..max);
(b, c) 15/50/85th percentiles of the input to one tracked sigmoid of the last hidden layer,
without and with BN, over training: solid, the network as it predicts (BN with Alg. 2
statistics) on fixed validation images; dashed, the training network (each mini-batch of 60
training images normalised by its own statistics). Writes results/fig1_mnist.{png,pdf}, the
same percentiles for every hidden layer in fig1_mnist_layers.{png,pdf}, where the runs log the
distributional-shift measures (bnrepro.measures.shift) fig1_mnist_shift{,_train}.{png,pdf},
a JSON of the numbers quoted in the README, and the claims of Sec. 4.1 with verdicts computed
from the runs (fig1_mnist_claims.md, and .json for the report):

- "BN helps the network achieve higher accuracy": per seed the test accuracy at the last
  evaluation; with BN vs without.
- "BN helps the network train faster": target = the final value of the seed-mean test
  accuracy curve WITHOUT BN; per seed the first evaluated step whose test accuracy >= target
  (never = slower than any step: the worst value).
- "BN makes the distribution (of the input to a sigmoid) more stable": per seed the drift of
  the tracked unit of the last hidden layer (inference network, the figure's solid lines) =
  the mean over its logged 15/50/85th percentiles of (max - min over all evaluations); the
  drift of the 50th percentile alone is reported beside it.
Verdicts follow VERDICT_RULE: bnrepro.claims.compare on the per-seed values (a diverged seed,
or one that never reaches the target, is the worst value), after the preconditions (both nets
on the same seeds, every run ended).

    python -m bnrepro.analyse fig1 runs/fig1_mnist [--out results] [--wandb]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bnrepro.analysis import wandb_figures
from bnrepro.atomic import atomic_save_figure, atomic_write_json, atomic_write_text
from bnrepro.claims import compare, to_markdown, write_claims
from bnrepro.measures.evaluation import SHIFT_PREFIX
from bnrepro.run.runs import Run, find_runs

PAPER_ACC_RANGE = (0.7, 1.0)  # Fig. 1(a)'s y axis
STYLE = {"none": ("Without BN", "tab:red"), "bn": ("With BN", "tab:blue")}
# probe key prefix -> (label, line style, colour of the 15/85th and of the 50th percentile)
NETWORKS = {"act": ("inference net, validation images", "-", "0.55", "0.0"),
            "act_train": ("training net, mini-batches of 60", "--", "tab:cyan", "tab:blue")}
# distributional shift (bnrepro.measures.shift): key prefix -> network, the trainer's prefixes
# for the probe sets above (evaluation.SHIFT_PREFIX: shift/ is the training network); measure
# -> what it compares
SHIFT_NETWORKS = {SHIFT_PREFIX[probe]: label for probe, (label, *_) in NETWORKS.items()}
SHIFT_MEASURES = {"w1_init": "W1 to step 0", "w1_prev": "W1 to the previous evaluation",
                  "w1_init_rel": "W1 to step 0 / spread", "w1_prev_rel": "W1 to previous / spread"}
SOURCE = "Ioffe & Szegedy (2015)"  # bnrepro.claims.SOURCES
ENDED = ("completed", "diverged")  # a run that ended: a diverged seed is the worst, not absent
TARGET_ABOVE_CHANCE = 0.2  # "train faster" needs a target above chance (0.1) + 0.1
VERDICT_RULE = (
    "bnrepro.claims.compare on per-seed values, with BN vs without: holds when the exact "
    "one-sided permutation test of rank sums decides for BN at 0.05 (with 3 seeds a side: only "
    "when the seed ranges do not overlap), does not hold when it decides against BN, else "
    "inconclusive; not measured when runs with or without BN are missing, the two nets ran "
    "other seeds, a run did not end, or (train faster) the target does not leave chance. A seed "
    "that never reaches the target (stored as null) or diverged counts as the worst value.")


def metric_table(runs: list[Run], column: str) -> pd.DataFrame:
    """A logged metric per (norm, step), one column per seed (steps where no run logged it
    are left out)."""
    frames = [r.metrics[["step", column]].assign(norm=r.config.model.norm, seed=r.config.seed)
              for r in runs]
    return pd.concat(frames).pivot_table(index=["norm", "step"], columns="seed", values=column)


def accuracy_table(runs: list[Run]) -> pd.DataFrame:
    """Test accuracy per (norm, step), one column per seed."""
    return metric_table(runs, "test/acc")


def layer_quantiles(run: Run, layer: int, prefix: str = "act", pooled: bool = False
                    ) -> tuple[pd.DataFrame, list[str]]:
    """Hidden layer `layer`'s (1-based) logged percentiles (q15, q50, q85) per step: of the
    tracked unit, or with `pooled` of all the layer's units together (all_q15, ...)."""
    head = f"{prefix}/h{layer}/{'all_' * pooled}q"
    columns = sorted(c for c in run.metrics.columns
                     if c.startswith(head) and c[len(head):].isdigit())
    return run.metrics.set_index("step")[columns], columns


def last_layer_quantiles(run: Run, prefix: str = "act") -> tuple[pd.DataFrame, list[str]]:
    """The tracked unit's logged percentiles (q15, q50, q85) in the last hidden layer."""
    return layer_quantiles(run, len(run.config.model.hidden), prefix)


def seed0_runs(runs: list[Run]) -> dict[str, Run]:
    """norm -> its run of the lowest seed (seed 0 in a full store): the 'typical unit' runs."""
    return {r.config.model.norm: r for r in sorted(runs, key=lambda r: r.config.seed)[::-1]}


def first_step_at(run: Run, target: float) -> float:
    """First evaluated step whose test accuracy >= target; inf if none."""
    hits = run.metrics.loc[run.metrics["test/acc"].astype(float) >= target, "step"]
    return float(hits.min()) if len(hits) else math.inf


def drift(run: Run, columns: list[str]) -> float:
    """Mean over `columns` (the tracked unit's percentiles) of (max - min over evaluations)."""
    values = run.metrics[columns].astype(float)
    return float((values.max() - values.min()).mean())


def seed_table(runs: list[Run], target: float) -> pd.DataFrame:
    """One row per run: norm, seed, final test accuracy, steps to `target`, drift of the
    tracked unit (all its percentiles, and the 50th alone)."""
    rows = []
    for run in runs:
        if run.summary.get("status") != "completed":  # diverged: the worst value (NaN)
            reached = first_step_at(run, target) if "test/acc" in run.metrics else math.inf
            rows.append({"norm": run.config.model.norm, "seed": run.config.seed,
                         "final_test_acc": math.nan, "steps_to_target": reached,
                         "drift": math.nan, "median_drift": math.nan})
            continue
        columns = last_layer_quantiles(run)[1]
        ordered = run.metrics.sort_values("step")
        rows.append({"norm": run.config.model.norm, "seed": run.config.seed,
                     "final_test_acc": float(ordered["test/acc"].iloc[-1]),
                     "steps_to_target": first_step_at(run, target),
                     "drift": drift(run, columns),
                     "median_drift": drift(run, [c for c in columns if c.endswith("q50")])})
    columns = ["norm", "seed", "final_test_acc", "steps_to_target", "drift", "median_drift"]
    return pd.DataFrame(rows, columns=columns).sort_values(["norm", "seed"], ignore_index=True)


def spread(values: pd.Series, fmt: str = ".4f") -> str:
    """Mean (min..max) over the seeds with a value; how many have none (diverged)."""
    lost = int(values.isna().sum())
    return (f"{values.mean():{fmt}} ({values.min():{fmt}}..{values.max():{fmt}})"
            + (f"; {lost} of {len(values)} diverged" if lost else ""))


def steps_text(values: pd.Series) -> str:
    finite = values[np.isfinite(values)]
    never = int((~np.isfinite(values)).sum())
    median = float(np.median(values))
    text = "never" if math.isinf(median) else f"{median:g}"
    if len(finite):
        text += f" ({finite.min():g}..{finite.max():g})"
    return text + (f"; {never} of {len(values)} never" if never else "")


def preconditions(runs: list[Run]) -> list[tuple[str, bool]]:
    """The checks every claim of Sec. 4.1 needs before its runs can decide it: both nets
    trained, on the same seeds, each run to its end (completed, or diverged: a diverged seed
    counts as the worst value, never as absent)."""
    seeds = {norm: sorted(r.config.seed for r in runs if r.config.model.norm == norm)
             for norm in ("bn", "none")}
    ended = [r for r in runs if r.summary.get("status") in ENDED]
    return [("runs with and without BN are present", all(seeds.values())),
            (f"the same seeds with and without BN (with: {seeds['bn']}, without: "
             f"{seeds['none']}), each run to its end", seeds["bn"] == seeds["none"]
             and len(ended) == len(runs))]


def claims(runs: list[Run], acc: pd.DataFrame) -> list[dict[str, Any]]:
    """The three claims of Sec. 4.1 with verdicts computed from the runs by the one rule
    (bnrepro.claims.compare on per-seed values; module docstring and VERDICT_RULE)."""
    papers = [("BN helps the network achieve higher test accuracy",
               "Fig. 1(a): \"the batch-normalized network enjoys the higher test accuracy\" "
               "(curves only, no number)"),
              ("BN helps the network train faster",
               "Fig. 1(a): \"helps the network train faster\" (curves only)"),
              ("BN makes the distribution of a sigmoid's input more stable",
               "Fig. 1(b,c): without BN it \"changes significantly over time, both in mean and "
               "variance\"; with BN \"much more stable\" (plots only)")]
    dataset = str(runs[0].config.dataset.name)
    checks = preconditions(runs)
    norms = set(acc.index.get_level_values(0))
    target = float(acc.loc["none"].mean(axis=1).iloc[-1]) if "none" in norms else math.nan
    table = seed_table(runs, target)
    bn, none = table[table["norm"] == "bn"], table[table["norm"] == "none"]
    rows = []

    def add(index: int, column: str, better: str, ours: str,
            extra: tuple[tuple[str, bool], ...] = ()) -> None:
        claim, paper = papers[index]
        def seeds(side: pd.DataFrame) -> list[float]:  # never reached: null, the worst
            return side[column].replace([np.inf, -np.inf], np.nan).tolist()

        result, evidence = compare(("with BN", seeds(bn)), ("without BN", seeds(none)),
                                   better=better,
                                   preconditions=[*checks, *extra])
        if not all(met for _, met in checks):
            ours = "; ".join(check for check, met in checks if not met) + " (unmet)"
        rows.append({"claim": claim, "paper": paper, "ours": ours, "verdict": result,
                     "dataset": dataset, "source": SOURCE, "evidence": evidence})

    a, b = bn["final_test_acc"], none["final_test_acc"]
    add(0, "final_test_acc", "higher", f"final test acc, mean (min..max over seeds): with BN "
        f"{spread(a)} vs without {spread(b)}")
    a, b = bn["steps_to_target"], none["steps_to_target"]
    add(1, "steps_to_target", "lower", f"steps to {target:.4f} (the final seed-mean test acc "
        f"without BN), median (min..max over seeds): with BN {steps_text(a)} vs without "
        f"{steps_text(b)}", ((f"the target leaves chance ({target:.4f} >= "
                              f"{TARGET_ABOVE_CHANCE:g})", target >= TARGET_ABOVE_CHANCE),))
    a, b = bn["drift"], none["drift"]
    add(2, "drift", "lower", f"drift of the tracked unit, last hidden layer (mean over its "
        f"15/50/85th percentiles of max - min over training), mean (min..max over seeds): "
        f"with BN {spread(a, '.3f')} vs without {spread(b, '.3f')}; 50th percentile alone: "
        f"with BN {spread(bn['median_drift'], '.3f')} vs without "
        f"{spread(none['median_drift'], '.3f')}")
    return rows


def fig1_figure(runs: list[Run]) -> plt.Figure:
    """Fig. 1: (a) test accuracy per norm, mean over seeds, band min..max; (b, c) the last
    hidden layer's tracked unit, 15/50/85th percentiles, without and with BN (lowest seed)."""
    acc = accuracy_table(runs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    ax = axes[0]
    for norm in ("none", "bn"):
        if norm not in acc.index.get_level_values(0):
            continue
        label, color = STYLE[norm]
        table = acc.loc[norm]
        ax.plot(table.index, table.mean(axis=1), color=color,
                label=f"{label} ({table.shape[1]} seed{'s' * (table.shape[1] > 1)})")
        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2)
    # The paper's range, 0.7..1; short runs that never get there keep the data's own range.
    if acc.mean(axis=1).max() > PAPER_ACC_RANGE[0]:  # a seed-mean curve gets there
        ax.set_ylim(PAPER_ACC_RANGE)
    ax.set(xlabel="training steps", ylabel="test accuracy", title="(a) MNIST test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")

    # (b, c): one typical unit, as in the paper: the tracked unit of seed 0's network.
    seed0 = seed0_runs(runs)
    for ax, norm, letter in ((axes[1], "none", "b"), (axes[2], "bn", "c")):
        if norm not in seed0:
            ax.set_visible(False)
            continue
        run = seed0[norm]
        for prefix, (label, style, outer, middle) in NETWORKS.items():
            quantiles, columns = last_layer_quantiles(run, prefix)
            for col, shade in zip(columns, (outer, middle, outer), strict=False):
                ax.plot(quantiles.index, quantiles[col], color=shade, ls=style,
                        lw=1.2 if style == "-" else 0.9,
                        label=f"{label}" if col.endswith("q50") else None)
        ax.set(title=f"({letter}) {STYLE[norm][0]}: input to a sigmoid",
               xlabel="training steps", ylim=(-2.5, 2.5))
        ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    axes[1].set_ylabel(f"last hidden layer, unit {runs[0].config.probe.unit} (seed 0)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    handles, labels = axes[2 if axes[2].get_visible() else 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.66, 0.0), ncols=2,
               fontsize=8, title="(b, c): 15th, 50th (dark) and 85th percentiles",
               title_fontsize=8, frameon=False)
    return fig


def layers_figure(runs: list[Run], prefix: str = "act") -> plt.Figure:
    """Every hidden layer, not only the last: one panel per (norm, layer) for the lowest
    seed's run. Lines: the tracked unit's 15th, 50th (dark) and 85th percentiles; shaded: the
    15th..85th percentiles of all the layer's units pooled (`prefix`: act = the inference
    network on validation images, act_train = the training network on its mini-batches)."""
    seed0 = seed0_runs(runs)
    norms = [n for n in STYLE if n in seed0]
    layers = len(runs[0].config.model.hidden)
    fig, axes = plt.subplots(len(norms), layers, figsize=(3.6 * layers, 2.8 * len(norms)),
                             sharex=True, sharey=True, squeeze=False)
    for row, norm in enumerate(norms):
        run = seed0[norm]
        for layer in range(1, layers + 1):
            ax = axes[row, layer - 1]
            pooled, columns = layer_quantiles(run, layer, prefix, pooled=True)
            if len(columns) == 3:  # all_q15, all_q50, all_q85 (older runs lack them)
                ax.fill_between(pooled.index, pooled[columns[0]], pooled[columns[2]],
                                color=STYLE[norm][1], alpha=0.2, lw=0,
                                label="all units: 15th..85th")
            tracked, columns = layer_quantiles(run, layer, prefix)
            for col, shade in zip(columns, ("0.55", "0.0", "0.55"), strict=True):
                ax.plot(tracked.index, tracked[col], color=shade, lw=1.1,
                        label=f"unit {run.config.probe.unit}: 15th, 50th, 85th"
                        if col.endswith("q50") else None)
            ax.axhline(0, color="0.85", lw=0.8, zorder=0)
            ax.set_title(f"{STYLE[norm][0]}: hidden layer {layer}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("training steps")
    for ax in axes[:, 0]:
        ax.set_ylabel("input to the sigmoid")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Percentiles of each layer's sigmoid input ({NETWORKS[prefix][0]}, seed "
                 f"{min(r.config.seed for r in seed0.values())})", fontsize=10)
    fig.tight_layout()
    return fig


def shift_layers(runs: list[Run], prefix: str = "shift") -> dict[str, list[int]]:
    """measure (of SHIFT_MEASURES) -> the hidden layers for which every run logged
    `<prefix>/h{i}/<measure>`; measures logged for no layer are left out."""
    layers = range(1, len(runs[0].config.model.hidden) + 1)
    logged = {m: [i for i in layers if all(f"{prefix}/h{i}/{m}" in r.metrics for r in runs)]
              for m in SHIFT_MEASURES}
    return {m: ls for m, ls in logged.items() if ls}


def shift_table(runs: list[Run], prefix: str = "shift") -> pd.DataFrame:
    """One row per (measure, layer, norm) logged under `prefix`: the seed-mean curve's mean
    over the evaluations that logged it (w1_prev: all but step 0) and its last value."""
    rows = []
    for measure, layers in shift_layers(runs, prefix).items():
        for layer in layers:
            values = metric_table(runs, f"{prefix}/h{layer}/{measure}")
            for norm in values.index.get_level_values(0).unique():
                mean = values.loc[norm].dropna(how="all").mean(axis=1)
                rows.append({"network": prefix, "measure": measure, "layer": layer,
                             "norm": norm, "mean_over_evaluations": float(mean.mean()),
                             "at_last_evaluation": float(mean.iloc[-1])})
    return pd.DataFrame(rows, columns=["network", "measure", "layer", "norm",
                                       "mean_over_evaluations", "at_last_evaluation"])


def shift_figure(runs: list[Run], prefix: str = "shift") -> plt.Figure | None:
    """Distributional shift of each hidden layer's input to the sigmoid (logged under
    `prefix`; see bnrepro.measures.shift): one row per logged measure, one column per layer, a
    line per norm (mean over seeds, band min..max). None if the runs logged none."""
    logged = shift_layers(runs, prefix)
    if not logged:
        return None
    layers = sorted({i for ls in logged.values() for i in ls})
    fig, axes = plt.subplots(len(logged), len(layers), squeeze=False, sharex=True,
                             figsize=(3.8 * len(layers), 2.6 * len(logged)))
    for row, (measure, measured) in enumerate(logged.items()):
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            if layer not in measured:
                ax.set_visible(False)
                continue
            values = metric_table(runs, f"{prefix}/h{layer}/{measure}")
            for norm in values.index.get_level_values(0).unique():
                label, color = STYLE.get(norm, (norm, None))
                v = values.loc[norm].dropna(how="all")
                ax.plot(v.index, v.mean(axis=1), color=color, label=label)
                ax.fill_between(v.index, v.min(axis=1), v.max(axis=1), color=color, alpha=0.2)
            ax.set_title(f"hidden layer {layer}: {SHIFT_MEASURES[measure]}", fontsize=9)
        axes[row, 0].set_ylabel(measure)
    for ax in axes[-1]:
        ax.set_xlabel("training steps")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{runs[0].config.dataset.name}: distributional shift of each layer's sigmoid "
                 f"input ({SHIFT_NETWORKS[prefix]}; mean over seeds, band min..max)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def fig1_numbers(runs: list[Run]) -> dict:
    """The numbers the README quotes: final test accuracy per norm (mean, min, max over
    seeds), at fixed steps, the tracked unit's percentiles, and BN's lead over no BN."""
    acc, seed0 = accuracy_table(runs), seed0_runs(runs)
    numbers = {}
    for norm in acc.index.get_level_values(0).unique():
        table = acc.loc[norm]
        numbers[norm] = {
            "seeds": int(table.shape[1]),
            "final_step": int(table.index.max()),
            "final_test_acc_mean": round(float(table.iloc[-1].mean()), 4),
            "final_test_acc_min": round(float(table.iloc[-1].min()), 4),
            "final_test_acc_max": round(float(table.iloc[-1].max()), 4),
            "test_acc_mean_at": {int(s): round(float(table.loc[s].mean()), 4)
                                 for s in (5000, 10000, 20000, 50000) if s in table.index},
        }
        numbers[norm]["tracked_unit_quantiles_seed0"] = {}
        for prefix in NETWORKS:
            q, columns = last_layer_quantiles(seed0[norm], prefix)
            numbers[norm]["tracked_unit_quantiles_seed0"][prefix] = {
                col: {name: round(float(value), 3) for name, value in
                      (("first", q[col].iloc[0]), ("last", q[col].iloc[-1]),
                       ("min", q[col].min()), ("max", q[col].max()))}
                for col in columns}
    if {"bn", "none"} <= numbers.keys():
        gap = (acc.loc["bn"].mean(axis=1) - acc.loc["none"].mean(axis=1)).drop(0, errors="ignore")
        numbers["bn_minus_none"] = {"min": round(float(gap.min()), 4),
                                    "max": round(float(gap.max()), 4),
                                    "fraction_of_evals_bn_ahead": round(float((gap > 0).mean()), 4)}
    return numbers


@dataclass
class Fig1Result:
    """What the runs say: the README's numbers (fig1_numbers), the shift measures of every
    network (shift_table; empty if the runs logged none) and the claims of Sec. 4.1; the runs
    and their accuracy table, which the figures and the setup line read."""
    runs: list[Run]
    accuracy: pd.DataFrame  # accuracy_table
    numbers: dict[str, Any]
    shift: pd.DataFrame
    claims: list[dict[str, Any]]


def analyse(runs: list[Run]) -> Fig1Result:
    """The numbers, shift measures and claims of the fig1_mnist runs `runs` (completed or
    diverged: the figures and numbers show the completed ones, the claims count a diverged
    seed as the worst value)."""
    completed = [r for r in runs if r.summary.get("status") == "completed"]
    acc = accuracy_table(completed)
    shift = pd.concat([shift_table(completed, p) for p in SHIFT_NETWORKS], ignore_index=True)
    return Fig1Result(completed, acc, fig1_numbers(completed), shift, claims(runs, acc))


def figures(result: Fig1Result) -> dict[str, plt.Figure]:
    """File stem -> figure: Fig. 1, every layer's percentiles, and the shift figure of each
    network whose shift measures the runs logged."""
    runs = result.runs
    drawn = {"fig1_mnist": fig1_figure(runs), "fig1_mnist_layers": layers_figure(runs)}
    drawn |= {f"fig1_mnist_{p}": shift_figure(runs, p) for p in SHIFT_NETWORKS}
    return {stem: fig for stem, fig in drawn.items() if fig is not None}


def numbers_json(result: Fig1Result, pngs: list[str]) -> dict[str, Any]:
    """fig1_mnist.json: the README's numbers, the PNGs written ("figures"), the shift measures
    (where logged) and the claims."""
    numbers = result.numbers | {"figures": pngs}
    if len(result.shift):
        numbers["shift"] = result.shift.round(6).to_dict("records")
    return numbers | {"claims": result.claims}


def setup_text(result: Fig1Result) -> str:
    """The profile the runs used, in words (the claims file's `setup`)."""
    config, acc = result.runs[0].config, result.accuracy
    return (f"{config.dataset.name}, {int(acc.index.get_level_values(1).max())} steps of "
            f"{config.trainer.batch_size}, lr {config.optim.lr:g}, {acc.columns.size} seeds "
            "per net")


def write(result: Fig1Result, out_dir: Path) -> list[str]:
    """Write the figures (module docstring), fig1_mnist.json and the claims; return the PNGs
    written."""
    pngs = []
    for stem, fig in figures(result).items():
        atomic_save_figure(fig, out_dir / stem)
        plt.close(fig)
        pngs.append(f"{stem}.png")
    atomic_write_json(out_dir / "fig1_mnist.json", numbers_json(result, pngs))
    title = "Claims of Sec. 4.1 (Fig. 1) checked on mnist"
    atomic_write_text(out_dir / "fig1_mnist_claims.md",
                      to_markdown(title, result.claims, VERDICT_RULE))
    write_claims(out_dir / "fig1_mnist_claims.json", result.claims, experiment="fig1_mnist",
                 title="Fig. 1: MNIST with and without BN (Sec. 4.1)", make="make fig1",
                 setup=setup_text(result), figures=pngs, verdict_rule=VERDICT_RULE,
                 summaries=[r.summary for r in result.runs])
    return pngs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnrepro.analyse fig1",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run-store folders to search")
    parser.add_argument("--out", type=Path, default=Path("results"))
    wandb_figures.add_flag(parser)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only: no window, whatever backend the environment names
    runs = [r for r in find_runs(args.run_dirs, statuses=ENDED, keep_empty=True)
            if r.config.name == "fig1_mnist"]
    if not any(r.summary.get("status") == "completed" for r in runs):
        raise SystemExit(f"no completed fig1_mnist runs under {', '.join(map(str, args.run_dirs))}"
                         "; train them with `python -m bnrepro.train -m experiment=fig1_mnist`")
    result = analyse(runs)
    pngs = write(result, args.out)
    wandb_figures.publish(args.wandb, runs[0].config, [args.out / p for p in pngs],
                          claims=result.claims, wandb_dir=args.run_dirs[0])
    print(f"wrote {', '.join(str(args.out / p) for p in pngs)} (and .pdf), fig1_mnist.json, "
          f"fig1_mnist_claims.md and .json from {len(runs)} runs")
    for norm in ("none", "bn"):
        if norm in result.numbers:
            n = result.numbers[norm]
            print(f"  {STYLE[norm][0]:<11} final test acc {n['final_test_acc_mean']:.4f} "
                  f"(min {n['final_test_acc_min']:.4f}, max {n['final_test_acc_max']:.4f})")
    for c in result.claims:
        print(f"  [{c['verdict']}] {c['claim']}")
    return 0
