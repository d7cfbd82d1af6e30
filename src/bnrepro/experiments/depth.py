"""De & Smith (2020) on our residual nets: accuracy and branch/skip variance vs depth.

    python -m bnrepro.analyse depth runs/depth_<dataset> [--out results]

Reads the run store only (bnrepro.run.runs.find_runs): every run of experiment depth_cifar below
the folder with status completed or diverged, including diverged runs that logged nothing
(their first evaluation already failed); runs with another status are named in a warning and
left out. A run's variant is its config's `variant` (BN, NoNorm, SkipInit), its depth
model.depth; the runs of one (variant, depth) are its seeds.

Each (variant, depth) trains at a grid of learning rates (optim.lr, issue 26: one untuned
rate decided which nets "train"), 3 seeds each; it is judged at its best rate.

Definitions (also in the JSON and the claims file):
- Accuracy of a run: test/acc of its evaluation with the highest val/acc among those that
  scored the test set (validation selects, test reports); its validation score: that
  evaluation's val/acc. A diverged run is a failure: it scores CHANCE on both.
- Best rate of a (variant, depth): the rate with the highest seed-mean validation score (ties:
  the smaller rate). The table, the figure's panel (a) and the training claims use its seeds.
- A run "trains" when it did not diverge and its accuracy exceeds CHANCE + CHANCE_MARGIN; a
  (variant, depth) trains ("yes") when every seed at its best rate trains, fails ("no") when
  none does, else "undecided".
- Ratio at initialisation (`init_sweep`): fresh nets of every depth in INIT_DEPTHS (up to
  110; forward passes only, no training), each variant and seed of the runs, built from the
  runs' own config and measured on the probe images a run's step-0 evaluation uses
  (bnrepro.measures.evaluation): per block l, Var(branch alpha_l f(x_l)) / Var(skip), both
  pooled (resid/b{l}/var_ratio) and per channel (var_ratio_channel, De & Smith's:
  bnrepro.models.residual_variance).
- Slope: least-squares slope of log(ratio_l) on log(l) over a net's blocks (-1: the ratio
  falls like 1/l, De & Smith's BN prediction; 0: flat), per seed and depth with at least
  MIN_BLOCKS blocks (a fit over fewer says little).
- Ratio over training (figure panel c): resid/b{l}/var_ratio at each evaluated step of the
  deepest trained depth at its best rate, mean over the seeds that logged that step.

Claims (results/depth_<dataset>_claims.md) and their rules (each row's "evidence" holds the
numbers and the rule):
  1. BN: slope within [SLOPE_LOW, SLOPE_HIGH]. 2. NoNorm: slope above FLAT_SLOPE. Over every
     seed and depth of the init sweep with >= MIN_BLOCKS blocks, for each of the two measures:
     holds when every slope is in the range, does not hold when none is; the verdict holds
     (does not hold) only when both measures say so (the measure's definition must not decide
     it), else inconclusive.
  3. SkipInit trains the deepest trained net at its best rate: holds when every seed trains,
     does not hold when none does, else inconclusive; not measured when BN does not train at
     that depth (the grid then trains no deep net at all) or the grid is incomplete.
  4. NoNorm fails at the deepest depth at the rates at which BN trains there: holds when no
     NoNorm seed trains at any such rate, does not hold when every NoNorm seed trains at one of
     them, else inconclusive; not measured when BN trains at none of the rates.
  5. BN's largest trainable depth exceeds NoNorm's: holds when there is a depth at which BN
     trains and NoNorm fails at it and at every deeper depth tried; does not hold when NoNorm
     trains at every depth at which BN trains and BN fails at the deepest depth; not measured
     when both train at the deepest depth tried (both largest trainable depths lie beyond the
     grid: capped) or a grid is incomplete; else inconclusive.

Writes to --out: depth_<dataset>.png/.pdf (a: accuracy vs depth at the best rate; b: ratio at
initialisation vs block, one panel per init-sweep depth, per channel (solid) and pooled
(dashed), with the 1/l line; c: ratio over training, deepest net),
depth_<dataset>.csv (one row per variant and depth), depth_<dataset>.json (every number),
depth_<dataset>_claims.md and _claims.json (bnrepro.claims, read by bnrepro.report). With
--wandb (or BNREPRO_WANDB_FIGURES=1) the figure and claims also go to the runs' wandb group.
Bad input prints one `error:` line and exits with 2.

In Python: `analyse(root) -> Result` (every number, table and claim; writes nothing),
`figures(result)` ({file stem: figure}), `write(result, out)` (the files above).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from bnrepro.analysis import command, wandb_figures
from bnrepro.analysis.seeds import differing_keys, flat_config, spread, spread_text
from bnrepro.atomic import atomic_write_json, atomic_write_text
from bnrepro.claims import to_markdown, write_claims
from bnrepro.data.datasets import InputTransform, load_dataset
from bnrepro.data.sampling import validation_split
from bnrepro.measures.evaluation import Evaluator
from bnrepro.models import build_model
from bnrepro.run.runs import find_runs

EXPERIMENT = "depth_cifar"
SOURCE = "De & Smith (2020)"  # bnrepro.claims.SOURCES
VARIANTS = ["BN", "NoNorm", "SkipInit"]
COLORS = {"BN": "tab:blue", "NoNorm": "tab:red", "SkipInit": "tab:green"}
STATUSES = ("completed", "diverged")
CHANCE = 0.1  # 1 of 10 classes: a diverged run's accuracy
CHANCE_MARGIN = 0.05  # "trains" = not diverged and accuracy > CHANCE + CHANCE_MARGIN
MIN_BLOCKS = 6  # slope claims use depths with at least this many blocks (depth >= 14)
SLOPE_LOW, SLOPE_HIGH = -1.5, -0.5  # "falls like 1/l": slope of log ratio on log l in here
FLAT_SLOPE = -0.5  # "not downscaled": slope above this
INIT_DEPTHS = (8, 14, 20, 32, 56, 110)  # the init sweep (forward passes only)
MEASURES = {"channel": "_channel", "pooled": ""}  # the ratio's two forms: key suffixes
RATIO = re.compile(r"resid/b(\d+)/var_ratio")
# Keys that never change a trajectory, and those the sweep varies: the rest must agree.
IGNORED_KEYS = ("name", "seed", "fresh", "variant", "model.depth", "model.norm",
                "model.residual_scale", "trainer.progress", "trainer.resume",
                "trainer.test_every", "trainer.checkpoint_every", "trainer.device",
                "trainer.threads", "trainer.eval_memory_mb", "dataset.root", "dataset.mirror",
                "optim.lr",
                "probe.residual_variance", "logger.", "hydra.")
PAPER = {
    "bn_downscales": '"at initialization, batch normalization downscales the residual branch '
                     'relative to the skip connection, by a normalizing factor on the order of '
                     'the square root of the network depth" (abstract): variance ratio ~ 1/l',
    "none_not_downscaled": "(paraphrase of Sec. 2) without normalization the skip path's "
                           "variance grows with the branch's (it doubles per block with He "
                           "init): the branch is not downscaled",
    "skipinit_trains": '"a simple initialization scheme that can train deep residual networks '
                       'without normalization" (abstract; SkipInit)',
    "none_fails": "(paraphrase) unnormalized deep residual networks without SkipInit cannot "
                  "be trained at large depth (at the rates that train normalized ones)",
    "bn_depth": '"Batch normalization dramatically increases the largest trainable depth of '
                'residual networks" (abstract)'}
VERDICT_RULE = (
    "each claim's own rule, stated in its evidence: holds only when every seed (at every depth "
    "it covers) says so, does not hold only when every seed says the opposite, else "
    "inconclusive; not measured when a precondition is unmet (runs or rates missing, the "
    "comparison capped by the depths tried), with the reason.")


class DepthError(command.AnalysisError):
    """Bad input: reported as one `error:` line, exit code 2."""


@dataclass
class Result:
    """What `analyse` found under one run folder."""
    root: Path  # the run folder
    runs: list[dict[str, Any]]  # every run analysed (`load_runs`)
    dataset: str
    depths: list[int]  # sorted
    table: dict[str, dict[int, dict[str, Any]]]  # variant -> depth -> cell at the best rate
    rates: list[float]  # the grid
    init: dict[str, dict[int, dict[str, Any]]]  # variant -> depth -> `init_sweep` cell
    curves: dict[str, dict[str, dict[int, float]]]  # variant -> deepest net's ratio curves
    claims: list[dict[str, str]]
    rule: str  # the claims' verdict rule in words, with this experiment's numbers
    numbers: dict[str, Any]  # depth_<dataset>.json


def load_runs(root: Path) -> list[dict[str, Any]]:
    """The depth_cifar runs below `root` (completed or diverged, logged or not) as dicts."""
    runs = []
    for run in find_runs([root], STATUSES, keep_empty=True):
        config = flat_config(run)
        if config.get("name") != EXPERIMENT:
            continue
        metrics = run.metrics.sort_values("step").reset_index(drop=True) \
            if "step" in run.metrics else run.metrics
        runs.append({"dir": run.dir, "config": config, "cfg": run.config,
                     "summary": run.summary, "metrics": metrics,
                     "variant": config.get("variant"), "depth": int(config["model.depth"]),
                     "lr": float(config["optim.lr"]), "seed": config.get("seed"),
                     "status": run.summary["status"]})
    return runs


def check_same_setup(runs: list[dict[str, Any]]) -> None:
    """Refuse runs that are not one experiment: every key but IGNORED_KEYS must agree."""
    if differing := differing_keys([r["config"] for r in runs], IGNORED_KEYS):
        raise DepthError(f"runs differ in {'; '.join(differing)}: not one depth experiment; "
                         "give one experiment's folder")


def selected(run: dict[str, Any], key: str) -> float:
    """`key` (test/acc or val/acc) at the best-validation evaluation among those that scored
    the test set; CHANCE for a diverged run (module docstring)."""
    if run["status"] == "diverged":
        return CHANCE
    m = run["metrics"]
    if "test/acc" not in m or "val/acc" not in m:
        return math.nan
    tested = m.dropna(subset=["test/acc", "val/acc"])
    return float(tested.loc[tested["val/acc"].idxmax(), key]) if len(tested) else math.nan


def accuracy(run: dict[str, Any]) -> float:
    return selected(run, "test/acc")


def trains(run: dict[str, Any]) -> bool:
    return run["status"] != "diverged" and accuracy(run) > CHANCE + CHANCE_MARGIN


def ratios_at(metrics: pd.DataFrame, step: int) -> np.ndarray | None:
    """var_ratio (pooled) per block (index 0 = block 1) of the evaluation at `step`, or None."""
    if metrics.empty or "step" not in metrics:
        return None
    rows = metrics[metrics["step"] == step]
    if rows.empty:
        return None
    blocks = sorted(int(RATIO.fullmatch(c)[1]) for c in metrics.columns if RATIO.fullmatch(c))
    if not blocks:
        return None
    values = rows.iloc[-1][[f"resid/b{b}/var_ratio" for b in blocks]].to_numpy(dtype=float)
    return None if np.isnan(values).any() else values


def slope(ratios: np.ndarray) -> float:
    """Least-squares slope of log ratio on log block index (1-based); NaN if a ratio <= 0."""
    if len(ratios) < 2 or (ratios <= 0).any():
        return math.nan
    return float(np.polyfit(np.log(np.arange(1, len(ratios) + 1)), np.log(ratios), 1)[0])


def describe(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One (variant, depth): accuracies, divergences, ratios at init and slopes per seed."""
    per_seed = []
    for r in sorted(runs, key=lambda r: r["seed"]):
        init = ratios_at(r["metrics"], 0)
        per_seed.append({"seed": r["seed"], "status": r["status"], "run_dir": str(r["dir"]),
                         "diverged_at_step": r["summary"].get("diverged_at_step"),
                         "accuracy": accuracy(r), "validation": selected(r, "val/acc"),
                         "trains": trains(r),
                         "ratio_at_init": None if init is None else init.tolist(),
                         "slope_at_init": math.nan if init is None else slope(init)})
    acc = np.array([s["accuracy"] for s in per_seed], dtype=float)
    slopes = np.array([s["slope_at_init"] for s in per_seed], dtype=float)
    inits = [np.array(s["ratio_at_init"]) for s in per_seed if s["ratio_at_init"] is not None]
    stack = np.stack(inits) if inits and len({len(x) for x in inits}) == 1 else None
    return {
        "seeds": len(per_seed), "diverged": sum(s["status"] == "diverged" for s in per_seed),
        "trained": sum(s["trains"] for s in per_seed), **spread(acc, "accuracy"),
        **spread([s["validation"] for s in per_seed], "validation"),
        "seeds_with_ratio_at_init": len(inits),
        "ratio_at_init_mean": None if stack is None else stack.mean(0).tolist(),
        "ratio_at_init_min": None if stack is None else stack.min(0).tolist(),
        "ratio_at_init_max": None if stack is None else stack.max(0).tolist(),
        **spread(slopes, "slope"), "per_seed": per_seed}


def decided(cell: dict[str, Any] | None) -> str:
    """Whether a (variant, depth) trains at its best rate: "yes" when every seed trains, "no"
    when none does, "undecided" otherwise, "missing" without runs."""
    if cell is None or not cell["seeds"]:
        return "missing"
    return "yes" if cell["trained"] == cell["seeds"] else "no" if cell["trained"] == 0 else \
        "undecided"


def all_or_none(flags: list[bool]) -> str:
    """holds when every flag is set, does not hold when none is, else inconclusive."""
    return "holds" if all(flags) else "does not hold" if not any(flags) else "inconclusive"


def slope_verdict(init: dict[int, dict[str, Any]], ok: Callable[[float], bool]
                  ) -> tuple[str, dict[str, Any]]:
    """Claims 1-2 (module docstring): every seed's slope at every depth of the init sweep with
    >= MIN_BLOCKS blocks, per measure; the verdict only where both measures agree."""
    depths = [d for d in sorted(init) if (d - 2) // 2 >= MIN_BLOCKS]
    per_measure = {}
    for measure in MEASURES:
        slopes = [x for d in depths for x in init[d][f"slope_{measure}"]]
        per_measure[measure] = {
            "slopes": {str(d): init[d][f"slope_{measure}"] for d in depths},
            "verdict": all_or_none([not math.isnan(x) and ok(x) for x in slopes])
            if slopes else "not measured"}
    found = {m["verdict"] for m in per_measure.values()}
    result = "not measured" if not depths or "not measured" in found else \
        found.pop() if len(found) == 1 else "inconclusive"
    return result, {"rule": "per measure: holds when every seed's slope at every depth with "
                            f">= {MIN_BLOCKS} blocks passes, does not hold when none does; the "
                            "verdict where the per-channel and pooled measures agree, else "
                            "inconclusive", "depths": depths, "measures": per_measure,
                    "preconditions": [{"check": f"init-sweep depths with >= {MIN_BLOCKS} "
                                                "blocks", "met": bool(depths)}]}


def claims(table: dict[str, dict[int, dict[str, Any]]], depths: list[int], dataset: str,
           init: dict[str, dict[int, dict[str, Any]]],
           grid: dict[str, dict[int, dict[float, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The claims of the module docstring, each with its verdict and evidence."""
    rows: list[dict[str, Any]] = []
    deepest = depths[-1]

    def add(key: str, claim: str, ours: str, result: str, evidence: dict[str, Any]) -> None:
        rows.append({"key": key, "claim": claim, "paper": PAPER[key],
                     "ours": f"{dataset}: {ours}", "verdict": result, "dataset": dataset,
                     "source": SOURCE, "evidence": evidence})

    def slope_claim(key: str, claim: str, variant: str, ok: Callable[[float], bool]) -> None:
        cells = init.get(variant, {})
        result, evidence = slope_verdict(cells, ok)
        parts = [f"depth {d}: slope per channel {fmt_slopes(cells[d]['slope_channel'])}, "
                 f"pooled {fmt_slopes(cells[d]['slope_pooled'])}" for d in evidence["depths"]]
        add(key, claim, "; ".join(parts) or f"no init-sweep depth with >= {MIN_BLOCKS} blocks",
            result, evidence)

    slope_claim("bn_downscales", "BN: the branch/skip variance ratio at initialisation falls "
                f"like 1/l (log-log slope in [{SLOPE_LOW}, {SLOPE_HIGH}])", "BN",
                lambda x: SLOPE_LOW <= x <= SLOPE_HIGH)
    slope_claim("none_not_downscaled", "No norm: the ratio at initialisation does not fall "
                f"with l (slope > {FLAT_SLOPE})", "NoNorm", lambda x: x > FLAT_SLOPE)

    complete = {v: all(c["grid_complete"] for c in table.get(v, {}).values()) for v in VARIANTS}
    bn_deep = decided(table.get("BN", {}).get(deepest))

    def state(variant: str, d: int) -> str:
        cell = table.get(variant, {}).get(d)
        return "missing" if cell is None else \
            f"{decided(cell)} (best rate {cell['rate']:g}: {cell['trained']}/{cell['seeds']} " \
            f"train, accuracy {spread_text(cell, 'accuracy', '{:.3f}'.format)})"

    pre_grid = [("every rate of the grid ran for every seed", complete["SkipInit"]
                 and complete["BN"] and "SkipInit" in table),
                (f"BN trains at depth {deepest} at its best rate (else the grid trains no deep "
                 "net)", bn_deep == "yes")]
    cell = table.get("SkipInit", {}).get(deepest)
    result = "not measured" if cell is None or not all(m for _, m in pre_grid) else \
        all_or_none([s["trains"] for s in cell["per_seed"]])
    # The claim's text names no depth (it is in `ours`), so that the tiers' claims, whose
    # deepest nets differ, are the same claim side by side in the report.
    add("skipinit_trains", "SkipInit (no norm) trains the deepest net tried at its best rate",
        f"depth {deepest}: SkipInit {state('SkipInit', deepest)}; BN {state('BN', deepest)}",
        result,
        {"rule": "holds when every seed at the best rate trains, does not hold when none does",
         "trains": None if cell is None else [s["trains"] for s in cell["per_seed"]],
         "preconditions": [{"check": c, "met": bool(m)} for c, m in pre_grid]})

    bn_rates = [lr for lr, c in grid.get("BN", {}).get(deepest, {}).items()
                if c["trained"] == c["seeds"] > 0]
    nonorm = grid.get("NoNorm", {}).get(deepest, {})
    at = {lr: nonorm[lr]["trained"] for lr in bn_rates if lr in nonorm}
    pre = [("NoNorm ran at every rate of the grid", complete["NoNorm"] and "NoNorm" in table),
           (f"BN trains (every seed) at some rate at depth {deepest}", bool(bn_rates))]
    result = "not measured" if not all(m for _, m in pre) else \
        "holds" if not any(at.values()) else \
        "does not hold" if any(k == nonorm[lr]["seeds"] for lr, k in at.items()) else \
        "inconclusive"
    add("none_fails", "No norm, no SkipInit: the deepest net tried fails to train at the rates "
        "at which BN trains it", f"depth {deepest}: NoNorm seeds that train per rate where BN "
        "trains: "
        + (", ".join(f"lr {lr:g}: {k}/{nonorm[lr]['seeds']}" for lr, k in at.items()) or "-")
        + f"; at its best rate NoNorm {state('NoNorm', deepest)}", result,
        {"rule": "holds when no NoNorm seed trains at any rate at which every BN seed trains, "
                 "does not hold when every NoNorm seed trains at one of them",
         "bn_rates": bn_rates, "nonorm_trained_at_bn_rates": {str(k): v for k, v in at.items()},
         "preconditions": [{"check": c, "met": bool(m)} for c, m in pre]})

    claim = "BN's largest trainable depth exceeds that of the net without norm"
    states = {v: {d: decided(table.get(v, {}).get(d)) for d in depths} for v in ("BN", "NoNorm")}
    bn, no = states["BN"], states["NoNorm"]
    capped = bn[deepest] == no[deepest] == "yes"
    pre = [("BN and NoNorm ran every rate of the grid at every depth",
            complete["BN"] and complete["NoNorm"] and "missing" not in {*bn.values(),
                                                                        *no.values()}),
           (f"not both train at the deepest depth tried ({deepest}): else both largest "
            "trainable depths lie beyond the grid (capped)", not capped)]
    apart = any(bn[d] == "yes" and all(no[e] == "no" for e in depths if e >= d) for d in depths)
    reversed_ = bn[deepest] == "no" and no[deepest] == "yes"
    result = "not measured" if not all(m for _, m in pre) else "holds" if apart else \
        "does not hold" if reversed_ else "inconclusive"
    add("bn_depth", claim, "trains at its best rate (every seed / none / undecided): "
        + "; ".join(f"{v} " + ", ".join(f"{d}: {x}" for d, x in states[v].items())
                    for v in states), result,
        {"rule": "holds when BN trains at a depth where NoNorm fails, and NoNorm fails at every "
                 "deeper depth tried; does not hold when BN fails at the deepest depth tried "
                 "while NoNorm trains there",
         "trains": states, "preconditions": [{"check": c, "met": bool(m)} for c, m in pre]})
    return rows


def fmt_slopes(slopes: list[float]) -> str:
    finite = [x for x in slopes if not math.isnan(x)]
    if not finite:
        return "-"
    return f"{np.mean(finite):.2f} ({min(finite):.2f}..{max(finite):.2f})" + \
        (f", {len(slopes) - len(finite)} undefined" if len(finite) < len(slopes) else "")


@torch.no_grad()
def init_sweep(runs: list[dict[str, Any]], depths: tuple[int, ...] = INIT_DEPTHS
               ) -> dict[str, dict[int, dict[str, Any]]]:
    """Per variant and depth: the branch/skip variance ratios of fresh nets (module docstring),
    one per seed of the runs, from a run's own config with model.depth replaced, measured by
    the evaluation's own probe (Evaluator.residual_variances: the probe images of step 0)."""
    seeds = sorted({r["seed"] for r in runs})
    configs = {}
    for r in runs:
        configs.setdefault(r["variant"], r["cfg"])
    cfg = next(iter(configs.values()))
    ds = load_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.mirror)
    transform = InputTransform(ds, cfg.dataset.binarize, cfg.dataset.standardize)
    train_index, val_index = validation_split(len(ds.train_labels), cfg.dataset.val_size)
    probe = Evaluator(cfg, ds, transform, train_index, val_index, seeds)
    result: dict[str, dict[int, dict[str, Any]]] = {}
    for variant in [v for v in VARIANTS if v in configs]:
        for depth in depths:
            cfgs = [OmegaConf.merge(configs[variant], {"seed": s, "model": {"depth": depth}})
                    for s in seeds]
            rows = probe.residual_variances(build_model(cfgs, ds.image_shape).eval())
            cell: dict[str, Any] = {"seeds": seeds}
            for measure, suffix in MEASURES.items():
                ratios = [np.array([row[f"resid/b{b}/var_ratio{suffix}"]
                                    for b in range(1, (depth - 2) // 2 + 1)]) for row in rows]
                cell[f"ratio_{measure}"] = [x.tolist() for x in ratios]
                cell[f"ratio_{measure}_mean"] = np.mean(ratios, 0).tolist()
                cell[f"slope_{measure}"] = [slope(x) for x in ratios]
            result.setdefault(variant, {})[depth] = cell
    return result


def training_curves(runs: list[dict[str, Any]]) -> dict[str, dict[int, list[float]]]:
    """Per block l: var_ratio at each evaluated step, mean over the seeds that logged it."""
    frames = [r["metrics"] for r in runs if not r["metrics"].empty]
    if not frames:
        return {}
    columns = sorted({c for f in frames for c in f.columns if RATIO.fullmatch(c)},
                     key=lambda c: int(RATIO.fullmatch(c)[1]))
    both = pd.concat([f[["step", *[c for c in columns if c in f]]] for f in frames])
    mean = both.groupby("step").mean()
    return {c: {int(s): float(v) for s, v in mean[c].dropna().items()} for c in columns}


def figures(result: Result) -> dict[str, Figure]:
    """depth_<dataset> -> its figure (`figure`)."""
    return {f"depth_{result.dataset}": figure(result.table, result.curves, result.depths,
                                              result.dataset, result.init)}


def figure(table: dict[str, dict[int, dict[str, Any]]], curves: dict[str, dict],
           depths: list[int], dataset: str, init: dict[str, dict[int, dict[str, Any]]]
           ) -> Figure:
    """(a) accuracy vs depth per variant at its best rate (mean, band min..max, x = diverged
    seeds at chance, the best rate written by each point); (b) per init-sweep depth, the ratio
    at initialisation vs block for BN and NoNorm, per channel (solid) and pooled (dashed), with
    the 1/l line (SkipInit's is 0); (c) per variant, the ratio over training of each block,
    deepest net at its best rate."""
    variants = [v for v in VARIANTS if v in table]
    init_depths = sorted({d for cells in init.values() for d in cells})
    fig = plt.figure(figsize=(4 * max(len(init_depths), 1 + len(variants)), 9))
    top, bottom = fig.subfigures(2, 1)
    for sub in (top, bottom):  # fixed margins: constrained layout doubled the drawing time
        sub.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.86, wspace=0.3)
    axes_top = np.atleast_1d(top.subplots(1, 1 + len(variants)))
    ax = axes_top[0]
    for v in variants:
        ds = sorted(table[v])
        mean = [table[v][d]["accuracy_mean"] for d in ds]
        ax.plot(ds, mean, "o-", color=COLORS[v], label=v)
        ax.fill_between(ds, [table[v][d]["accuracy_min"] for d in ds],
                        [table[v][d]["accuracy_max"] for d in ds], color=COLORS[v], alpha=0.15)
        for d in ds:
            ax.annotate(f"{table[v][d]['rate']:g}", (d, table[v][d]["accuracy_mean"]),
                        fontsize=7, color=COLORS[v], textcoords="offset points", xytext=(4, -9))
            if (k := table[v][d]["diverged"]):
                ax.plot(d, CHANCE, "x", color=COLORS[v], ms=9, mew=2)
                ax.annotate(f"{k}/{table[v][d]['seeds']} div.", (d, CHANCE), fontsize=7,
                            color=COLORS[v], textcoords="offset points", xytext=(3, 4))
    ax.axhline(CHANCE, color="0.5", ls=":", lw=1)
    ax.set(xlabel="depth (weight layers)", ylabel="test accuracy at best val evaluation",
           title=f"(a) accuracy vs depth on {dataset},\nat each one's best rate (written)",
           xticks=depths)
    ax.legend(fontsize=8, title="mean, band min..max;\nx = diverged (scores chance)",
              title_fontsize=7)
    ax.grid(alpha=0.3)
    deepest = depths[-1]
    for j, (ax, v) in enumerate(zip(axes_top[1:], variants, strict=True)):
        series = curves.get(v, {})
        cmap = plt.get_cmap("viridis")
        drawn = 0
        for b, values in enumerate(series.values()):
            positive = {s: x for s, x in values.items() if x > 0}  # SkipInit starts at 0
            if positive:  # markers: a run that diverged early logged one step only
                ax.plot(list(positive), list(positive.values()), "o-", ms=2,
                        color=cmap(b / max(1, len(series) - 1)), lw=1)
                drawn += len(positive)
        zero_at = sorted({s for values in series.values() for s, x in values.items() if x <= 0})
        if drawn <= len(series):
            why = ("the seeds diverged early" if table[v].get(deepest, {}).get("diverged") else
                   f"the ratio is 0 at step {zero_at[0]} (alpha = 0),\noff the log axis, and "
                   "the run evaluates once after it" if zero_at else
                   "the run evaluates only once")
            ax.text(0.5, 0.5, f"at most one point per block:\n{why}", transform=ax.transAxes,
                    ha="center", va="center", fontsize=8, color="0.3")
        elif zero_at:
            ax.text(0.02, 0.02, f"ratio 0 at step {zero_at[0]} (alpha = 0): off the log axis",
                    transform=ax.transAxes, fontsize=7, color="0.3")
        ax.set(yscale="log", xlabel="training step",
               ylabel="Var(branch) / Var(skip), seed mean" if j == 0 else None,
               title=f"(c) {v}, depth {deepest}, over training\n"
                     f"blocks 1 (dark) .. {len(series)} (light)")
        ax.grid(alpha=0.3)
    axes_bottom = np.atleast_1d(bottom.subplots(1, len(init_depths)))
    for ax, d in zip(axes_bottom, init_depths, strict=True):
        blocks = np.arange(1, (d - 2) // 2 + 1)
        for v in ("BN", "NoNorm"):
            cell = init.get(v, {}).get(d)
            if cell is None:
                continue
            for measure, style in (("channel", "o-"), ("pooled", "--")):
                slopes = [x for x in cell[f"slope_{measure}"] if not math.isnan(x)]
                ax.plot(blocks, cell[f"ratio_{measure}_mean"], style, color=COLORS[v], ms=2,
                        lw=1.2 if measure == "channel" else 0.8,
                        label=f"{v} {measure} (slope {np.mean(slopes):.2f})" if slopes else
                        f"{v} {measure}")
            if v == "BN":
                ax.plot(blocks, cell["ratio_channel_mean"][0] / blocks, ":", color="0.3",
                        lw=1, label="1/l (from BN's block 1)")
        skip = init.get("SkipInit", {}).get(d)
        if skip is not None:  # its ratios are 0 at init: off the log axis, so in the legend
            ax.plot([], [], " ", label=f"SkipInit: max ratio at init "
                    f"{max(max(r) for r in skip['ratio_channel']):g} (alpha = 0)")
        ax.set(xscale="log", yscale="log", xlabel="block l",
               title=f"(b) fresh nets, depth {d}")
        # at most ~6 ticks, spread evenly on the log axis (every block's would overlap)
        ax.set_xticks(blocks if len(blocks) <= 8 else
                      np.unique(np.round(np.geomspace(1, len(blocks), 6)).astype(int)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes_bottom[0].set_ylabel("Var(branch) / Var(skip) at init, mean over seeds")
    return fig


def csv_table(table: dict[str, dict[int, dict[str, Any]]]) -> pd.DataFrame:
    rows = []
    for v, by_depth in table.items():
        for d, c in sorted(by_depth.items()):
            row = {"variant": v, "depth": d, "blocks": (d - 2) // 2, "best_rate": c["rate"],
                   "seeds": c["seeds"], "diverged": c["diverged"], "trained": c["trained"]}
            row |= {k: round(c[k], 4) for k in ("accuracy_mean", "accuracy_min",
                                                 "accuracy_max", "slope_mean", "slope_min",
                                                 "slope_max")}
            row |= {f"validation_mean_lr{lr:g}": round(x["validation_mean"], 4)
                    for lr, x in c["rates"].items()}
            row |= {f"accuracy_seed{s['seed']}": round(s["accuracy"], 4) for s in c["per_seed"]}
            init = c["ratio_at_init_mean"]
            row["ratio_at_init_first"] = "" if init is None else round(init[0], 4)
            row["ratio_at_init_last"] = "" if init is None else round(init[-1], 4)
            rows.append(row)
    return pd.DataFrame(rows)


def best_rate(by_rate: dict[float, dict[str, Any]]) -> float:
    """The rate with the highest seed-mean validation score (NaN: the worst; ties: the
    smaller rate)."""
    def score(lr: float) -> float:
        value = by_rate[lr]["validation_mean"]
        return -math.inf if math.isnan(value) else value
    return max(sorted(by_rate), key=score)


def summarise(root: Path) -> tuple[list[dict[str, Any]], str, list[int], list[float], dict,
                                   dict, dict]:
    """The runs under `root`, their dataset, depths and rates, the grid (variant -> depth ->
    rate -> `describe`), the table (variant -> depth -> the cell at its best rate, with
    "rate", "grid_complete" and "rates": the grid's numbers) and the training curves of the
    deepest nets at their best rate (`training_curves`)."""
    runs = load_runs(root)
    if not runs:
        raise DepthError(f"no {EXPERIMENT} runs (completed or diverged) under {root}; train "
                         "them with `python -m bnrepro.train -m experiment=depth_cifar`")
    if unknown := sorted({str(r["variant"]) for r in runs} - set(VARIANTS)):
        raise DepthError(f"unknown variant label(s) {unknown} under {root}; expected {VARIANTS}")
    check_same_setup(runs)
    dataset = runs[0]["config"]["dataset.name"]
    depths = sorted({r["depth"] for r in runs})
    rates = sorted({r["lr"] for r in runs})
    seeds = {r["seed"] for r in runs}
    grid: dict[str, dict[int, dict[float, dict[str, Any]]]] = {}
    for r in runs:
        grid.setdefault(r["variant"], {}).setdefault(r["depth"], {}).setdefault(r["lr"], [])
        grid[r["variant"]][r["depth"]][r["lr"]].append(r)
    grid = {v: {d: {lr: describe(grid[v][d][lr]) for lr in sorted(grid[v][d])}
                for d in sorted(grid[v])} for v in VARIANTS if v in grid}
    table = {}
    for v, by_depth in grid.items():
        table[v] = {}
        for d, by_rate in by_depth.items():
            lr = best_rate(by_rate)
            table[v][d] = by_rate[lr] | {
                "rate": lr, "grid_complete": set(by_rate) == set(rates) and all(
                    {s["seed"] for s in c["per_seed"]} == seeds for c in by_rate.values()),
                "rates": {rate: {k: c[k] for k in ("validation_mean", "accuracy_mean",
                                                   "trained", "diverged", "seeds")}
                          for rate, c in by_rate.items()}}
    curves = {v: training_curves([r for r in runs if r["variant"] == v
                                  and r["depth"] == depths[-1]
                                  and r["lr"] == table[v].get(depths[-1], {}).get("rate")])
              for v in table}
    return runs, dataset, depths, rates, grid, table, curves


def verdict_rule(rates: list[float], init_depths: list[int]) -> str:
    """VERDICT_RULE with what "trains" and "slope" mean here, for the claims files."""
    return (f"{VERDICT_RULE} Each variant and depth trains at the rates "
            f"{', '.join(f'{r:g}' for r in rates)} and is judged at its best rate on "
            f"validation. A run trains when it did not diverge and its test accuracy (at its "
            f"best-validation evaluation among those that scored the test set) exceeds "
            f"{CHANCE:g} + {CHANCE_MARGIN:g}; a diverged run scores {CHANCE:g}. Slope: "
            f"least-squares slope of log(ratio_l) on log(l) over the blocks of fresh nets "
            f"(init sweep, depths {', '.join(map(str, init_depths))}), at the depths with >= "
            f"{MIN_BLOCKS} blocks, per channel (De & Smith's) and pooled.")


def clean(x: Any) -> Any:
    """For JSON: NaN -> null, floats rounded to 6 digits, keys strings."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 6)
    return x


def analyse(root: Path, init_depths: tuple[int, ...] = INIT_DEPTHS) -> Result:
    """Every number, table and claim of the module docstring from the runs under `root` (and
    the init sweep's fresh nets of `init_depths`); writes nothing (`write` does)."""
    runs, dataset, depths, rates, grid, table, curves = summarise(root)
    init = init_sweep(runs, tuple(init_depths))
    claim_rows = claims(table, depths, dataset, init, grid)
    numbers = clean({
        "dataset": dataset, "depths": depths,
        "max_steps": int(runs[0]["config"]["trainer.max_steps"]),
        "definitions": {"accuracy": "test/acc at the best-val evaluation among those that "
                                    "scored the test set; a diverged run scores chance",
                        "chance": CHANCE, "chance_margin": CHANCE_MARGIN,
                        "min_blocks": MIN_BLOCKS, "slope_range_bn": [SLOPE_LOW, SLOPE_HIGH],
                        "flat_slope": FLAT_SLOPE, "verdict_rule": VERDICT_RULE},
        "rates": rates, "init_depths": list(init_depths),
        "variants": table, "grid": grid, "init_sweep": init,
        "ratio_over_training_deepest": curves, "claims": claim_rows})
    return Result(root=root, runs=runs, dataset=dataset, depths=depths, table=table,
                  rates=rates, init=init, curves=curves, claims=claim_rows,
                  rule=verdict_rule(rates, list(init_depths)), numbers=numbers)


def claims_markdown(result: Result) -> str:
    """depth_<dataset>_claims.md: the claims table, its tests and the verdict rule."""
    return to_markdown(f"De & Smith (2020) claims checked on {result.dataset}", result.claims,
                       result.rule)


def write(result: Result, out: Path, wandb: bool = False) -> None:
    """The files of the module docstring, into `out`; with `wandb` the figure and claims also
    go to the runs' wandb group (bnrepro.analysis.wandb_figures)."""
    out.mkdir(parents=True, exist_ok=True)
    command.save_figures(figures(result), out)
    dataset, depths, table = result.dataset, result.depths, result.table
    stem = out / f"depth_{dataset}"
    atomic_write_text(Path(f"{stem}.csv"), csv_table(table).to_csv(index=False))
    atomic_write_text(out / f"depth_{dataset}_claims.md", claims_markdown(result))
    seeds = sorted({c["seeds"] for by_depth in table.values() for c in by_depth.values()})
    config = result.runs[0]["config"]
    write_claims(
        out / f"depth_{dataset}_claims.json", result.claims, experiment=EXPERIMENT,
        title=f"Residual depth: BN, no norm, SkipInit (De & Smith 2020), on {dataset}",
        make="make depth",
        setup=f"{dataset}, pre-activation ResNets of depth {', '.join(map(str, depths))}, width "
              f"multiplier {config.get('model.width_multiplier')}, "
              f"{config.get('trainer.max_steps')} steps of batch "
              f"{config.get('trainer.batch_size')}, lr {', '.join(f'{r:g}' for r in result.rates)}"
              f" (each judged at its best on validation), init sweep of fresh nets at depths "
              f"{', '.join(map(str, sorted({d for c in result.init.values() for d in c})))}, "
              f"{'/'.join(map(str, seeds))} seeds per variant and depth",
        figures=[f"depth_{dataset}.png"], verdict_rule=result.rule,
        summaries=[r["summary"] for r in result.runs])
    atomic_write_json(Path(f"{stem}.json"), result.numbers)
    wandb_figures.publish(wandb, config, [Path(f"{stem}.png")], claims=result.claims,
                          wandb_dir=result.root)


def main(argv: list[str] | None = None) -> int:
    """`python -m bnrepro.analyse depth runs/depth_<dataset> [--out results]`."""
    parser = command.parser("depth", __doc__)
    parser.add_argument("run_dir", type=Path, help="the depth run store, runs/depth_<dataset>")
    parser.add_argument("--init-depths", default=",".join(map(str, INIT_DEPTHS)),
                        help="depths of the init sweep's fresh nets, comma-separated")
    args = command.parse(parser, argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            result = analyse(args.run_dir, tuple(int(d) for d in args.init_depths.split(",")))
        except DepthError as err:
            return command.refuse(err)
        write(result, args.out, wandb=args.wandb)
    numbers = result.numbers
    d = numbers["dataset"]
    print(f"wrote {args.out}/depth_{d}.png, .pdf, .csv, .json, depth_{d}_claims.md and .json")
    for v, by_depth in numbers["variants"].items():
        for depth, c in by_depth.items():
            acc, fit = c["accuracy_mean"], c["slope_mean"]
            print(f"  {v:<9} depth {depth:>4}: best lr {c['rate']:g} n={c['seeds']} "
                  f"diverged={c['diverged']} accuracy {'-' if acc is None else f'{acc:.4f}'} "
                  f"slope at init {'-' if fit is None else f'{fit:.2f}'}")
    command.print_claims(numbers["claims"])
    return 0
