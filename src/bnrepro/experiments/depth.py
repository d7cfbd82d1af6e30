"""De & Smith (2020) on our residual nets: accuracy and branch/skip variance vs depth.

    python -m bnrepro.analyse depth runs/depth_<dataset> [--out results]

Reads the run store only (bnrepro.run.runs.find_runs): every run of experiment depth_cifar below
the folder with status completed or diverged, including diverged runs that logged nothing
(their first evaluation already failed); runs with another status are named in a warning and
left out. A run's variant is its config's `variant` (BN, NoNorm, SkipInit), its depth
model.depth; the runs of one (variant, depth) are its seeds.

Definitions (also in the JSON and the claims file):
- Accuracy of a run: test/acc of its evaluation with the highest val/acc among those that
  scored the test set (validation selects, test reports; the CPU profile scores the test set
  at step 0 and at the end only, so this is in practice the final evaluation). A diverged run
  is a failure: it scores CHANCE whatever it logged before. Per (variant, depth): mean and
  min..max over seeds, and the number diverged.
- A run "trains" when it did not diverge and its accuracy exceeds CHANCE + CHANCE_MARGIN.
- Ratio at initialisation: resid/b{l}/var_ratio of a run's step-0 evaluation, block l from 1
  (Var of the branch term alpha_l f(x_l) / Var of the skip term; bnrepro.measures.evaluation).
- Slope of a run: least-squares slope of log(var_ratio_l) on log(l) over its blocks at step 0
  (-1: the ratio falls like 1/l, De & Smith's BN prediction; 0: flat). Claims about the slope
  use the depths with at least MIN_BLOCKS blocks (a fit over fewer says little).
- Ratio over training (figure panel c): resid/b{l}/var_ratio at each evaluated step of the
  deepest depth, mean over the seeds that logged that step.

Claims (results/depth_<dataset>_claims.md), verdicts by VERDICT_RULE:
  1. BN: slope within [SLOPE_LOW, SLOPE_HIGH] at every depth with >= MIN_BLOCKS blocks.
  2. NoNorm: slope above FLAT_SLOPE (the branch is not downscaled) at those depths.
  3. SkipInit trains the deepest net: every seed trains.
  4. NoNorm fails at the deepest depth: every seed fails (diverged or at chance).
  5. BN's largest trainable depth exceeds NoNorm's (largest depth at which every seed trains;
     0 when none does).
For 1-2 "every seed" means every seed at every such depth, "the means" the seed-mean slope at
each depth; for 3-5 the means are seed-mean accuracies (for 5: the largest depth whose
seed-mean accuracy exceeds CHANCE + CHANCE_MARGIN).

Writes to --out: depth_<dataset>.png/.pdf (a: accuracy vs depth; b: ratio at initialisation
vs block, one panel per depth, with the 1/l line; c: ratio over training, deepest net),
depth_<dataset>.csv (one row per variant and depth), depth_<dataset>.json (every number),
depth_<dataset>_claims.md and _claims.json (bnrepro.claims, read by bnrepro.analysis.report). With
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
from matplotlib.figure import Figure

from bnrepro.analysis import command, wandb_figures
from bnrepro.analysis.seeds import differing_keys, flat_config, spread, spread_text
from bnrepro.atomic import atomic_write_json, atomic_write_text
from bnrepro.claims import verdict, write_claims
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
RATIO = re.compile(r"resid/b(\d+)/var_ratio")
# Keys that never change a trajectory, and those the sweep varies: the rest must agree.
IGNORED_KEYS = ("name", "seed", "fresh", "variant", "model.depth", "model.norm",
                "model.residual_scale", "trainer.progress", "trainer.resume",
                "trainer.test_every", "trainer.checkpoint_every", "trainer.device",
                "trainer.threads", "trainer.eval_memory_mb", "dataset.root", "dataset.mirror",
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
    "holds: the claim holds for the seed means AND for every seed; mixed: it holds for the "
    "means but not for every seed; does not hold: it fails for the means; not measured: the "
    "runs it needs are missing.")


class DepthError(command.AnalysisError):
    """Bad input: reported as one `error:` line, exit code 2."""


@dataclass
class Result:
    """What `analyse` found under one run folder."""
    root: Path  # the run folder
    runs: list[dict[str, Any]]  # every run analysed (`load_runs`)
    dataset: str
    depths: list[int]  # sorted
    table: dict[str, dict[int, dict[str, Any]]]  # variant -> depth -> cell (`describe`)
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
        runs.append({"dir": run.dir, "config": config, "summary": run.summary,
                     "metrics": metrics, "variant": config.get("variant"),
                     "depth": int(config["model.depth"]), "seed": config.get("seed"),
                     "status": run.summary["status"]})
    return runs


def check_same_setup(runs: list[dict[str, Any]]) -> None:
    """Refuse runs that are not one experiment: every key but IGNORED_KEYS must agree."""
    if differing := differing_keys([r["config"] for r in runs], IGNORED_KEYS):
        raise DepthError(f"runs differ in {'; '.join(differing)}: not one depth experiment; "
                         "give one experiment's folder")


def accuracy(run: dict[str, Any]) -> float:
    """Test accuracy at the best-validation evaluation among those that scored the test set;
    CHANCE for a diverged run (module docstring)."""
    if run["status"] == "diverged":
        return CHANCE
    m = run["metrics"]
    if "test/acc" not in m or "val/acc" not in m:
        return math.nan
    tested = m.dropna(subset=["test/acc", "val/acc"])
    return float(tested.loc[tested["val/acc"].idxmax(), "test/acc"]) if len(tested) else math.nan


def trains(run: dict[str, Any]) -> bool:
    return run["status"] != "diverged" and accuracy(run) > CHANCE + CHANCE_MARGIN


def ratios_at(metrics: pd.DataFrame, step: int) -> np.ndarray | None:
    """var_ratio per block (index 0 = block 1) of the evaluation at `step`, or None."""
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
                         "accuracy": accuracy(r), "trains": trains(r),
                         "ratio_at_init": None if init is None else init.tolist(),
                         "slope_at_init": math.nan if init is None else slope(init)})
    acc = np.array([s["accuracy"] for s in per_seed], dtype=float)
    slopes = np.array([s["slope_at_init"] for s in per_seed], dtype=float)
    inits = [np.array(s["ratio_at_init"]) for s in per_seed if s["ratio_at_init"] is not None]
    stack = np.stack(inits) if inits and len({len(x) for x in inits}) == 1 else None
    return {
        "seeds": len(per_seed), "diverged": sum(s["status"] == "diverged" for s in per_seed),
        "trained": sum(s["trains"] for s in per_seed), **spread(acc, "accuracy"),
        "seeds_with_ratio_at_init": len(inits),
        "ratio_at_init_mean": None if stack is None else stack.mean(0).tolist(),
        "ratio_at_init_min": None if stack is None else stack.min(0).tolist(),
        "ratio_at_init_max": None if stack is None else stack.max(0).tolist(),
        **spread(slopes, "slope"), "per_seed": per_seed}


def trains_on_mean(cell: dict[str, Any]) -> bool:
    """The seed-mean accuracy of a (variant, depth) exceeds CHANCE + CHANCE_MARGIN."""
    return cell["accuracy_mean"] > CHANCE + CHANCE_MARGIN


def claims(table: dict[str, dict[int, dict[str, Any]]], depths: list[int],
           dataset: str) -> list[dict[str, str]]:
    """The claims of the module docstring, each with its verdict (bnrepro.claims.verdict)."""
    rows: list[dict[str, str]] = []
    deepest = depths[-1]
    slope_depths = [d for d in depths if (d - 2) // 2 >= MIN_BLOCKS]

    def add(key: str, claim: str, ours: str, result: str) -> None:
        rows.append({"key": key, "claim": claim, "paper": PAPER[key],
                     "ours": f"{dataset}: {ours}", "verdict": result, "dataset": dataset,
                     "source": SOURCE})

    def slope_claim(key: str, claim: str, variant: str, ok: Callable[[float], bool]) -> None:
        """Over the depths with >= MIN_BLOCKS blocks whose runs logged step 0 (a run that
        diverged at its first evaluation has no ratios: named, not counted)."""
        cells = {d: table.get(variant, {}).get(d) for d in slope_depths}
        measured = {d: c for d, c in cells.items()
                    if c is not None and c["seeds_with_ratio_at_init"] > 0}
        missing = [str(d) for d in slope_depths if d not in measured]
        if not measured:
            add(key, claim, f"no step-0 ratios of {variant} at depths with >= {MIN_BLOCKS} "
                            "blocks", "not measured")
            return
        means = all(ok(c["slope_mean"]) for c in measured.values())
        every = all(ok(s["slope_at_init"]) for c in measured.values() for s in c["per_seed"]
                    if s["ratio_at_init"] is not None)
        parts = []
        for d, c in measured.items():
            init = c["ratio_at_init_mean"]
            ratio = "" if init is None else \
                f", ratio block 1 -> {len(init)}: {init[0]:.3g} -> {init[-1]:.3g}"
            parts.append(f"depth {d}: slope {spread_text(c, 'slope', '{:.2f}'.format)}{ratio}, "
                         f"n = {c['seeds_with_ratio_at_init']}")
        if missing:
            parts.append(f"no step-0 ratios at depth {', '.join(missing)}")
        add(key, claim, "; ".join(parts), verdict(means, every))

    slope_claim("bn_downscales", "BN: the branch/skip variance ratio at initialisation falls "
                f"like 1/l (log-log slope in [{SLOPE_LOW}, {SLOPE_HIGH}])", "BN",
                lambda s: SLOPE_LOW <= s <= SLOPE_HIGH)
    slope_claim("none_not_downscaled", "No norm: the ratio at initialisation does not fall "
                f"with l (slope > {FLAT_SLOPE})", "NoNorm", lambda s: s > FLAT_SLOPE)

    def deepest_claim(key: str, claim: str, variant: str,
                      judge: Callable[[dict[str, Any]], str]) -> None:
        """A claim about `variant`'s seeds at the deepest depth: judge(its cell)."""
        c = table.get(variant, {}).get(deepest)
        if c is None:
            add(key, claim, f"no {variant} runs at depth {deepest}", "not measured")
            return
        add(key, claim, f"accuracy {spread_text(c, 'accuracy', '{:.4f}'.format)}, "
                        f"{c['diverged']} of {c['seeds']} diverged, {c['trained']} of "
                        f"{c['seeds']} train", judge(c))

    deepest_claim("skipinit_trains", f"SkipInit (no norm) trains the deepest net (depth "
                  f"{deepest})", "SkipInit",
                  lambda c: verdict(trains_on_mean(c), c["trained"] == c["seeds"]))
    deepest_claim("none_fails", f"No norm, no SkipInit: the deepest net (depth {deepest}) "
                  "fails to train", "NoNorm",
                  lambda c: verdict(not trains_on_mean(c), c["trained"] == 0))

    claim = "BN's largest trainable depth exceeds that of the net without norm"
    if any(v not in table for v in ("BN", "NoNorm")):
        add("bn_depth", claim, "no runs of BN or NoNorm", "not measured")
    else:
        def largest(variant: str, every_seed: bool) -> int:
            ok = [d for d, c in table[variant].items()
                  if (c["trained"] == c["seeds"] if every_seed else trains_on_mean(c))]
            return max(ok, default=0)

        strict = [largest(v, True) for v in ("BN", "NoNorm")]
        loose = [largest(v, False) for v in ("BN", "NoNorm")]
        add("bn_depth", claim, f"largest depth at which every seed trains: BN {strict[0]}, "
                               f"NoNorm {strict[1]} (by seed-mean accuracy: BN {loose[0]}, "
                               f"NoNorm {loose[1]}; 0 = none of {depths})",
            verdict(loose[0] > loose[1], strict[0] > strict[1]))
    return rows


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
                                              result.dataset)}


def figure(table: dict[str, dict[int, dict[str, Any]]], curves: dict[str, dict],
           depths: list[int], dataset: str) -> Figure:
    """(a) accuracy vs depth per variant (mean, band min..max, x = diverged seeds at chance);
    (b) per depth, the ratio at initialisation vs block for BN and NoNorm with the 1/l line
    (SkipInit's is 0); (c) per variant, the ratio over training of each block, deepest net."""
    variants = [v for v in VARIANTS if v in table]
    fig = plt.figure(figsize=(4 * max(len(depths), 1 + len(variants)), 9))
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
            if (k := table[v][d]["diverged"]):
                ax.plot(d, CHANCE, "x", color=COLORS[v], ms=9, mew=2)
                ax.annotate(f"{k}/{table[v][d]['seeds']} div.", (d, CHANCE), fontsize=7,
                            color=COLORS[v], textcoords="offset points", xytext=(3, 4))
    ax.axhline(CHANCE, color="0.5", ls=":", lw=1)
    ax.set(xlabel="depth (weight layers)", ylabel="test accuracy at best val evaluation",
           title=f"(a) accuracy vs depth on {dataset}", xticks=depths)
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
        if drawn <= len(series):
            ax.text(0.5, 0.5, "at most one evaluation per block:\nthe seeds diverged early"
                    if table[v].get(deepest, {}).get("diverged") else
                    "at most one evaluation per block", transform=ax.transAxes,
                    ha="center", va="center", fontsize=8, color="0.3")
        ax.set(yscale="log", xlabel="training step",
               ylabel="Var(branch) / Var(skip), seed mean" if j == 0 else None,
               title=f"(c) {v}, depth {deepest}, over training\n"
                     f"blocks 1 (dark) .. {len(series)} (light)")
        ax.grid(alpha=0.3)
    axes_bottom = np.atleast_1d(bottom.subplots(1, len(depths)))
    for ax, d in zip(axes_bottom, depths, strict=True):
        for v in ("BN", "NoNorm"):
            cell = table.get(v, {}).get(d)
            if cell is None or cell["ratio_at_init_mean"] is None:
                continue
            blocks = np.arange(1, len(cell["ratio_at_init_mean"]) + 1)
            ax.plot(blocks, cell["ratio_at_init_mean"], "o-", color=COLORS[v], ms=3,
                    label=f"{v} (slope {cell['slope_mean']:.2f})")
            ax.fill_between(blocks, cell["ratio_at_init_min"], cell["ratio_at_init_max"],
                            color=COLORS[v], alpha=0.15)
            if v == "BN":
                ax.plot(blocks, cell["ratio_at_init_mean"][0] / blocks, "--", color="0.3",
                        lw=1, label="1/l (from BN's block 1)")
        skip = table.get("SkipInit", {}).get(d)
        if skip is not None and skip["ratio_at_init_max"] is not None:
            ax.text(0.02, 0.02, f"SkipInit: max ratio at init {max(skip['ratio_at_init_max']):g}"
                    " (alpha = 0)", transform=ax.transAxes, fontsize=7, color=COLORS["SkipInit"])
        blocks = np.arange(1, (d - 2) // 2 + 1)
        ax.set(xscale="log", yscale="log", xlabel="block l",
               title=f"(b) at initialisation, depth {d}")
        ax.set_xticks(blocks if len(blocks) <= 10 else blocks[::len(blocks) // 8 + 1])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes_bottom[0].set_ylabel("Var(branch) / Var(skip), mean over seeds")
    return fig


def csv_table(table: dict[str, dict[int, dict[str, Any]]]) -> pd.DataFrame:
    rows = []
    for v, by_depth in table.items():
        for d, c in sorted(by_depth.items()):
            row = {"variant": v, "depth": d, "blocks": (d - 2) // 2, "seeds": c["seeds"],
                   "diverged": c["diverged"], "trained": c["trained"]}
            row |= {k: round(c[k], 4) for k in ("accuracy_mean", "accuracy_min",
                                                 "accuracy_max", "slope_mean", "slope_min",
                                                 "slope_max")}
            row |= {f"accuracy_seed{s['seed']}": round(s["accuracy"], 4) for s in c["per_seed"]}
            init = c["ratio_at_init_mean"]
            row["ratio_at_init_first"] = "" if init is None else round(init[0], 4)
            row["ratio_at_init_last"] = "" if init is None else round(init[-1], 4)
            rows.append(row)
    return pd.DataFrame(rows)


def summarise(root: Path) -> tuple[list[dict[str, Any]], str, list[int], dict, dict]:
    """The runs under `root`, their dataset and depths, the table (variant -> depth -> numbers,
    `describe`) and the training curves of the deepest nets (`training_curves`)."""
    runs = load_runs(root)
    if not runs:
        raise DepthError(f"no {EXPERIMENT} runs (completed or diverged) under {root}; train "
                         "them with `python -m bnrepro.train -m experiment=depth_cifar`")
    if unknown := sorted({str(r["variant"]) for r in runs} - set(VARIANTS)):
        raise DepthError(f"unknown variant label(s) {unknown} under {root}; expected {VARIANTS}")
    check_same_setup(runs)
    dataset = runs[0]["config"]["dataset.name"]
    depths = sorted({r["depth"] for r in runs})
    table = {v: {d: describe([r for r in runs if r["variant"] == v and r["depth"] == d])
                 for d in depths if any(r["variant"] == v and r["depth"] == d for r in runs)}
             for v in VARIANTS if any(r["variant"] == v for r in runs)}
    curves = {v: training_curves([r for r in runs if r["variant"] == v
                                  and r["depth"] == depths[-1]]) for v in table}
    return runs, dataset, depths, table, curves


def verdict_rule(depths: list[int]) -> str:
    """VERDICT_RULE with what "trains" and "slope" mean here, for the claims files."""
    return (f"{VERDICT_RULE} A run trains when it did not diverge and its test accuracy (at "
            f"its best-validation evaluation among those that scored the test set) exceeds "
            f"{CHANCE:g} + {CHANCE_MARGIN:g}; a diverged run scores {CHANCE:g}. Slope: "
            f"least-squares slope of log(var_ratio_l) on log(l) over the blocks at step 0, at "
            f"the depths with >= {MIN_BLOCKS} blocks "
            f"({', '.join(str(d) for d in depths if (d - 2) // 2 >= MIN_BLOCKS) or 'none'}).")


def clean(x: Any) -> Any:
    """For JSON: NaN -> null, floats rounded to 6 digits, keys strings."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 6)
    return x


def analyse(root: Path) -> Result:
    """Every number, table and claim of the module docstring from the runs under `root`;
    writes nothing (`write` does)."""
    runs, dataset, depths, table, curves = summarise(root)
    claim_rows = claims(table, depths, dataset)
    numbers = clean({
        "dataset": dataset, "depths": depths,
        "max_steps": int(runs[0]["config"]["trainer.max_steps"]),
        "definitions": {"accuracy": "test/acc at the best-val evaluation among those that "
                                    "scored the test set; a diverged run scores chance",
                        "chance": CHANCE, "chance_margin": CHANCE_MARGIN,
                        "min_blocks": MIN_BLOCKS, "slope_range_bn": [SLOPE_LOW, SLOPE_HIGH],
                        "flat_slope": FLAT_SLOPE, "verdict_rule": VERDICT_RULE},
        "variants": table, "ratio_over_training_deepest": curves, "claims": claim_rows})
    return Result(root=root, runs=runs, dataset=dataset, depths=depths, table=table,
                  curves=curves, claims=claim_rows, rule=verdict_rule(depths), numbers=numbers)


def claims_markdown(result: Result) -> str:
    """depth_<dataset>_claims.md: the claims table and the verdict rule."""
    lines = [f"# De & Smith (2020) claims checked on {result.dataset}", "",
             "| claim | paper | ours | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['ours']} | {c['verdict']} |"
              for c in result.claims]
    return "\n".join([*lines, "", f"Verdict rule: {result.rule}", ""])


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
              f"{config.get('trainer.batch_size')}, lr {config.get('optim.lr')}, "
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
    args = command.parse(parser, argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            result = analyse(args.run_dir)
        except DepthError as err:
            return command.refuse(err)
        write(result, args.out, wandb=args.wandb)
    numbers = result.numbers
    d = numbers["dataset"]
    print(f"wrote {args.out}/depth_{d}.png, .pdf, .csv, .json, depth_{d}_claims.md and .json")
    for v, by_depth in numbers["variants"].items():
        for depth, c in by_depth.items():
            acc, fit = c["accuracy_mean"], c["slope_mean"]
            print(f"  {v:<9} depth {depth:>4}: n={c['seeds']} diverged={c['diverged']} "
                  f"accuracy {'-' if acc is None else f'{acc:.4f}'} slope at init "
                  f"{'-' if fit is None else f'{fit:.2f}'}")
    command.print_claims(numbers["claims"])
    return 0
