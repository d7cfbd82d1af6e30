"""Figures 2 and 3 of Ioffe & Szegedy (2015), Sec. 4.2, from our run store.

    python -m bnrepro.analyse fig2 runs/fig2_<dataset> [--lr-runs runs/fig2_lr_<dataset>]
                                   [--out results] [--wandb]

Reads every run of experiment fig2_cifar below the folder (completed AND diverged; runs with
another status, e.g. failed or still running, are named in a warning and left out). Each run's
config has a `variant` label (Baseline, Baseline-x5, ...); a variant's runs are its seeds.

Definitions (also written into the table caption and the JSON):
- Run length. A variant that decays its rate 6x faster (BN-x5, BN-x30, BN-x5-Sigmoid) stops 6x
  sooner, so every schedule ends at the same fraction of its start; each variant has its own
  max_steps and evaluation grid. Rate left: the share of a run's rate sum (lr_t over its steps)
  that falls in its second half; a claim on end points needs >= SCHEDULE_MIN_SECOND_HALF in
  every schedule it involves, else it is "not measured".
- Curves. Per variant, validation accuracy (val/acc of metrics.jsonl) at each step of its own
  evaluation grid: mean over seeds, band = min..max over seeds. A diverged seed's metrics stop at
  its last good evaluation; for the mean curves and bands it scores chance (CHANCE = 0.1) at
  every later step of its grid.
- Target = the maximum over evaluated steps of the Baseline's seed-mean validation curve (the
  analogue of "Inception's maximum accuracy, 72.2%"). Validation accuracy only, never test.
- Steps to target, per seed: the first evaluated step whose LOGGED val/acc >= target (a diverged
  seed never reaches anything after its last evaluation; a seed that never gets there is
  "never", not 0 or the last step). Per variant: the median over all n seeds with "never"
  counted as slower than any step (so the median is "never" when half or more never get
  there), min..max over the seeds that reach it, and "k of n never".
- Speed-up vs Baseline = Baseline's median steps-to-target / the variant's.
- Max val acc per seed = max over its logged evaluations; the reported test accuracy is the
  test/acc of the evaluation with the best val/acc (validation picks, test reports).
- Plateau check: the Baseline mean curve's gain over the last 25% of steps = its value at
  max_steps minus its (interpolated) value at 0.75 * max_steps; a precondition of the claims
  whose target or comparison is the Baseline's maximum.
- Failed to train, per seed: diverged, or its final val acc <= CHANCE + CHANCE_MARGIN (collapsed
  to chance, or never left it).

Claims (results/fig2_<dataset>_claims.md, and .json for the report in the format of
bnrepro.claims, each row with its evidence): comparisons by bnrepro.claims.compare (the exact
permutation test on per-seed values; "never" counts as the worst), counts (every seed / none /
some) by count_rule; see VERDICT_RULE.

Writes to --out: fig2_<dataset>.png/.pdf (Fig. 2), fig2_<dataset>.csv and .md (Fig. 3 table
and caption), fig2_<dataset>_claims.md and _claims.json, fig2_<dataset>.json (every number the
README quotes), and with --lr-runs fig2_lr_<dataset>.csv (the base-rate candidates). With
--wandb (or BNREPRO_WANDB_FIGURES=1) the figure and claims also go to the runs' wandb group.
Bad input (no fig2 runs, no Baseline, runs of different setups mixed) prints one `error:` line
and exits with 2.

The experiment unit (bnrepro.experiments): `analyse(root, lr_root)` computes everything and
writes nothing, `figures(result)` draws Fig. 2, `write(result, out)` writes the files above and
returns the numbers of fig2_<dataset>.json, and `main(argv)` is the command line.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from bnrepro.analysis import wandb_figures
from bnrepro.atomic import atomic_save_figure, atomic_write_json, atomic_write_text
from bnrepro.claims import compare, to_markdown, write_claims
from bnrepro.config import flatten
from bnrepro.run.store import evaluation_rows, read_config, read_metrics, read_summary

EXPERIMENT, LR_EXPERIMENT = "fig2_cifar", "fig2_cifar_lr"  # config `name` of the runs
VARIANTS = ["Baseline", "BN-Baseline", "BN-x5", "BN-x30", "BN-x5-Sigmoid", "Baseline-x5",
            "Baseline-Sigmoid"]  # the paper's Fig. 3 order (Baseline = its "Inception")
COLORS = dict(zip(VARIANTS, ["black", "tab:blue", "tab:orange", "tab:green", "tab:purple",
                             "tab:red", "tab:brown"], strict=True))
STATUSES = ("completed", "diverged")  # read; any other status is warned about and left out
CHANCE = 0.1  # 1 of 10 classes: a diverged seed's score after its last evaluation
CHANCE_MARGIN = 0.05  # "stays at chance" = max val acc <= CHANCE + CHANCE_MARGIN
FAR_FEWER_FACTOR = 2.0  # "far fewer steps" = a median speed-up of at least this
PLATEAU_MAX_GAIN = 0.01  # "plateaued" = gain over the last 25% of steps below 1 point
PLATEAU_FROM = 0.75  # the plateau check compares the end with this fraction of max_steps
# Keys that never change a trajectory (ignored by the same-setup check); "x." = all under x.
NON_TRAJECTORY_KEYS = ("name", "seed", "fresh", "trainer.progress", "trainer.resume",
                       "trainer.test_every", "trainer.test_examples", "probe.inference_gap",
                       "trainer.checkpoint_every", "trainer.device", "trainer.threads",
                       "trainer.eval_memory_mb", "dataset.root", "dataset.mirror", "logger.",
                       "hydra.", "measures.", "probe.residual_variance")
# Keys a variant sets itself (conf/fig2_variant/): may differ between variants, not within one.
# The run length and its evaluation grid follow the variant's schedule (BN-x5 decays 6x faster
# and stops 6x sooner); SCHEDULE_MIN_SECOND_HALF checks that every schedule has rate left.
VARIANT_KEYS = ("variant", "model.norm", "model.activation", "model.dropout", "optim.",
                "augment.", "trainer.max_steps", "trainer.eval_every", "trainer.test_every")
ALWAYS_CHECKED = ("dataset.name", "model.width_multiplier")
# A claim comparing end points (max accuracy, the target) needs every schedule it involves to
# still train in its second half: at least this share of the run's rate sum (sum over its
# steps of lr_t) falls in its second half. Our 6-halving schedules have 11.1%; BN-x5 decaying
# 6x faster over the Baseline's 1200 steps had 2^-18 of it (its last 1000 steps trained nothing).
SCHEDULE_MIN_SECOND_HALF = 0.05
PAPER = {  # Fig. 3 of the paper (Inception on ImageNet): steps to 72.2%, max val accuracy
    "Baseline": ("31.0M", "72.2%"), "BN-Baseline": ("13.3M", "72.7%"),
    "BN-x5": ("2.1M", "73.0%"), "BN-x30": ("2.7M", "74.8%"),
    "BN-x5-Sigmoid": ("never", "69.8%"),
    "Baseline-x5": ("parameters reached machine infinity", "-"),
    "Baseline-Sigmoid": ("remained at chance", "0.1% (chance, 1000 classes)")}
VERDICT_RULE = (
    "comparisons (bnrepro.claims.compare): holds / does not hold only when the exact one-sided "
    "permutation test of the per-seed values decides that direction at 0.05 (3 vs 3 seeds: "
    "only when the seed ranges do not overlap), else inconclusive; a seed that never reaches "
    "the target, or has no value, counts as the worst. Counts (k of n seeds fail, stay at "
    "chance, plateau): holds when every seed does, does not hold when none does, else "
    "inconclusive. Not measured: a precondition is unmet (a schedule without rate left for "
    "its second half, a Baseline that did not plateau or did not leave chance, missing runs).")
PAPER_SOURCE, OUR_CHECK = "Ioffe & Szegedy (2015)", "ours"  # bnrepro.claims.SOURCES


class Fig2Error(Exception):
    """Bad input: reported as one `error:` line, exit code 2."""


def matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def load_runs(root: Path, experiment: str) -> list[dict[str, Any]]:
    """Every run of `experiment` below root with status in STATUSES, as dicts."""
    runs, skipped = [], []
    for summary_file in sorted(Path(root).rglob("summary.json")):
        run_dir = summary_file.parent
        try:
            summary = read_summary(run_dir)
            config = flatten(OmegaConf.to_container(read_config(run_dir), resolve=True))
            # Evaluations only: a measured step that was not evaluated is no curve point.
            metrics = pd.DataFrame(evaluation_rows(read_metrics(run_dir)))
        except (OSError, ValueError) as err:
            skipped.append(f"{run_dir} (unreadable: {type(err).__name__})")
            continue
        if config.get("name") != experiment:
            continue
        if summary.get("status") not in STATUSES or metrics.empty or "val/acc" not in metrics:
            skipped.append(f"{run_dir} (status {summary.get('status')})")
            continue
        metrics = metrics.sort_values("step").reset_index(drop=True)
        metrics["val/acc"] = metrics["val/acc"].astype(float)
        runs.append({"dir": run_dir, "summary": summary, "config": config, "metrics": metrics,
                     "variant": config.get("variant"), "seed": config.get("seed"),
                     "status": summary["status"]})
    if skipped:
        warnings.warn(f"left out {len(skipped)} run(s): " + "; ".join(skipped), stacklevel=2)
    return runs


def check_same_setup(runs: list[dict[str, Any]]) -> None:
    """Refuse runs of different setups: within a variant every trajectory key but the seed must
    agree; across variants every key but the variant's own (VARIANT_KEYS)."""
    def differing(group: list[dict[str, Any]], ignore: tuple[str, ...]) -> list[str]:
        keys = sorted({k for r in group for k in r["config"]} | set(ALWAYS_CHECKED))
        out = []
        for key in keys:
            if matches(key, NON_TRAJECTORY_KEYS) or (matches(key, ignore)
                                                     and key not in ALWAYS_CHECKED):
                continue
            values = sorted({repr(r["config"].get(key, "(absent)")) for r in group})
            if len(values) > 1:
                out.append(f"{key} ({', '.join(values)})")
        return out

    for variant in sorted({r["variant"] for r in runs}, key=str):
        group = [r for r in runs if r["variant"] == variant]
        if diff := differing(group, ()):
            raise Fig2Error(f"runs of variant {variant} differ in {'; '.join(diff)}: "
                            "they are not seeds of one setup; give one experiment's folder")
    if diff := differing(runs, VARIANT_KEYS):
        raise Fig2Error(f"variants differ in {'; '.join(diff)}: not one fig2 experiment; "
                        "give one experiment's folder")


def steps_to(metrics: pd.DataFrame, target: float) -> float:
    """First evaluated step whose logged val/acc >= target; inf (never) if none."""
    hits = metrics.loc[metrics["val/acc"] >= target, "step"]
    return float(hits.min()) if len(hits) else math.inf


def eval_steps(runs: list[dict[str, Any]]) -> np.ndarray:
    """The evaluation grid of one variant's runs: every eval_every steps from 0 and the last
    step (as the trainer evaluates), with any other step its seeds logged."""
    max_steps = int(runs[0]["config"]["trainer.max_steps"])
    every = int(runs[0]["config"].get("trainer.eval_every") or max_steps or 1)
    grid = set(range(0, max_steps + 1, every)) | {max_steps}
    return np.array(sorted(grid | {int(s) for r in runs for s in r["metrics"]["step"]}))


def rate_share_second_half(config: dict[str, Any]) -> float:
    """The share of a run's rate sum (lr_t summed over its steps, bnrepro.optim's schedule
    lr * lr_decay^((t - 1) / lr_decay_steps)) that falls in its second half."""
    max_steps = max(int(config["trainer.max_steps"]), 1)
    decay = float(config.get("optim.lr_decay") or 1.0)
    every = float(config.get("optim.lr_decay_steps") or 1.0)
    rates = np.exp(np.arange(max_steps) * math.log(decay) / every)
    return float(rates[max_steps // 2:].sum() / rates.sum())


def curve_table(runs: list[dict[str, Any]], steps: np.ndarray) -> pd.DataFrame:
    """val/acc per evaluated step of the variant's grid (rows) and seed (columns); a seed's
    missing values after its last evaluation (diverged) or logged as null score CHANCE."""
    columns = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        series = r["metrics"].set_index("step")["val/acc"]
        columns[r["seed"]] = series.reindex(steps).fillna(CHANCE)
    return pd.DataFrame(columns, index=steps)


def fmt_steps(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:g}"


def describe_variant(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    per_seed = []
    for r in sorted(runs, key=lambda r: r["seed"]):
        m = r["metrics"].dropna(subset=["val/acc"])
        best = m.loc[m["val/acc"].idxmax()] if len(m) else None
        # The reported test number: the best-val evaluation among those that scored the test
        # set (trainer.test_every may skip it); the same row when every evaluation did.
        tested = m.dropna(subset=["test/acc"]) if "test/acc" in m else m.iloc[:0]
        best_tested = tested.loc[tested["val/acc"].idxmax()] if len(tested) else None
        final = float(m["val/acc"].iloc[-1]) if len(m) else math.nan
        per_seed.append({
            "seed": r["seed"], "status": r["status"], "run_dir": str(r["dir"]),
            "final_val_acc": final,
            # Fails to train: diverged, or ends at chance (collapsed to it, or never left it).
            "failed_to_train": r["status"] == "diverged" or not final > CHANCE + CHANCE_MARGIN,
            "diverged_at_step": r["summary"].get("diverged_at_step"),
            "last_step": int(r["metrics"]["step"].max()),
            "steps_to_target": steps_to(r["metrics"], target),
            "max_val_acc": float(best["val/acc"]) if best is not None else math.nan,
            "step_of_max": int(best["step"]) if best is not None else None,
            "test_acc_at_best_val": (float(best_tested["test/acc"]) if best_tested is not None
                                     else math.nan),
            "test_acc_step": int(best_tested["step"]) if best_tested is not None else None})
    steps = np.array([s["steps_to_target"] for s in per_seed])
    reached = steps[np.isfinite(steps)]
    median = float(np.median(steps))  # never = inf: the median of (x, inf) is inf
    acc = np.array([s["max_val_acc"] for s in per_seed])
    test = np.array([s["test_acc_at_best_val"] for s in per_seed])
    config = runs[0]["config"]
    return {
        "seeds": len(per_seed), "diverged": sum(s["status"] == "diverged" for s in per_seed),
        "failed_to_train": sum(s["failed_to_train"] for s in per_seed),
        "max_steps": int(config["trainer.max_steps"]),
        "rate_share_second_half": rate_share_second_half(config),
        "steps_to_target_median": median,
        "steps_to_target_min": float(reached.min()) if len(reached) else math.inf,
        "steps_to_target_max": float(reached.max()) if len(reached) else math.inf,
        "never": int(np.isinf(steps).sum()),
        "max_val_acc_mean": float(np.nanmean(acc)), "max_val_acc_min": float(np.nanmin(acc)),
        "max_val_acc_max": float(np.nanmax(acc)),
        "step_of_max_mean": float(np.mean([s["step_of_max"] for s in per_seed])),
        "test_acc_at_best_val_mean": float(np.nanmean(test)),
        "test_acc_at_best_val_min": float(np.nanmin(test)),
        "test_acc_at_best_val_max": float(np.nanmax(test)),
        "per_seed": per_seed}


def steps_cell(v: dict[str, Any]) -> str:
    if v["never"] == v["seeds"]:
        return "never" if v["seeds"] == 1 else f"never ({v['never']} of {v['seeds']} never)"
    text = f"{fmt_steps(v['steps_to_target_median'])} " \
           f"({v['steps_to_target_min']:g}..{v['steps_to_target_max']:g})"
    return text + (f"; {v['never']} of {v['seeds']} never" if v["never"] else "")


def mean_curve_cell(v: dict[str, Any]) -> str:
    at, speedup = v["mean_curve_first_reaches_target_at"], v["speedup_vs_baseline_mean_curves"]
    return "never" if at is None else f"{at} ({'-' if speedup is None else f'{speedup:.2f}x'})"


def per_seed(v: dict[str, Any], key: str) -> np.ndarray:
    return np.array([s[key] for s in v["per_seed"]], dtype=float)


def steps_for_compare(v: dict[str, Any], factor: float = 1.0) -> list[float]:
    """Per-seed steps to target times `factor`, "never" as NaN: compare counts it as the worst
    value and the claims file stores it as null."""
    return [math.nan if math.isinf(x) else x * factor for x in per_seed(v, "steps_to_target")]


def count_rule(claim: str, paper: str, ours: str, per_seed_rows: list[dict[str, Any]],
               key: str, preconditions: list[tuple[str, bool]]) -> dict[str, Any]:
    """A claim that every seed does something (per_seed_rows[i][key] is True when seed i
    does): holds when all n do, does not hold when none does, else inconclusive; not measured
    when a precondition is unmet. The row, with its evidence."""
    per_seed_rows = [{k: None if isinstance(v, float) and math.isnan(v) else v
                      for k, v in s.items()} for s in per_seed_rows]  # JSON: NaN as null
    k, n = sum(bool(s[key]) for s in per_seed_rows), len(per_seed_rows)
    result = ("not measured" if not n or not all(met for _, met in preconditions) else
              "holds" if k == n else "does not hold" if k == 0 else "inconclusive")
    evidence = {"rule": f"{k} of {n} seeds: holds when all do, does not hold when none does, "
                        "else inconclusive",
                "k": k, "n": n, "seeds": per_seed_rows,
                "preconditions": [{"check": c, "met": bool(m)} for c, m in preconditions]}
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": result,
            "source": PAPER_SOURCE, "evidence": evidence}


def claims(table: dict[str, dict[str, Any]], plateau: dict[str, Any]) -> list[dict[str, Any]]:
    """The claim rows of Sec. 4.2, each with its evidence (module docstring, VERDICT_RULE)."""
    rows: list[dict[str, Any]] = []
    limit = CHANCE + CHANCE_MARGIN

    def add(claim: str, paper: str, ours: str, result: tuple[str, dict[str, Any]],
            source: str = PAPER_SOURCE) -> None:
        rows.append({"claim": claim, "paper": paper, "ours": ours, "verdict": result[0],
                     "source": source, "evidence": result[1]})

    def missing(*names: str) -> list[str]:
        return [n for n in names if n not in table]

    def unmeasured(claim: str, paper: str, names: list[str]) -> None:
        add(claim, paper, f"no runs of {', '.join(names)}", (
            "not measured", {"preconditions": [{"check": f"runs of {n}", "met": False}
                                               for n in names]}))

    def schedules(*names: str) -> tuple[str, bool]:
        shares = {n: table[n]["rate_share_second_half"] for n in names}
        return (f"every schedule has >= {SCHEDULE_MIN_SECOND_HALF:.0%} of its rate sum in its "
                "second half (" + ", ".join(f"{n} {x:.1%}" for n, x in shares.items()) + ")",
                all(x >= SCHEDULE_MIN_SECOND_HALF for x in shares.values()))

    plateaued = (f"the Baseline plateaued (its mean curve gains {plateau['mean_curve_gain']:+.4f}"
                 f" < {PLATEAU_MAX_GAIN:g} over its last {1 - PLATEAU_FROM:.0%} of steps): its "
                 "maximum is the target", plateau["mean_curve_gain"] < PLATEAU_MAX_GAIN)

    def fewer_steps(a: str, b: str, factor: float = 1.0) -> tuple[str, tuple[str, dict]]:
        """a needs fewer steps to the target than b (times `factor`): compare on per-seed
        steps, a's multiplied by the factor."""
        label = a if factor == 1 else f"{a} (steps x {factor:g})"
        return (f"steps to target, median (min..max over seeds): {a} {steps_cell(table[a])} vs "
                f"{b} {steps_cell(table[b])}",
                compare((label, steps_for_compare(table[a], factor)),
                        (b, steps_for_compare(table[b])), better="lower",
                        preconditions=[schedules(a, b), plateaued]))

    def higher_acc(a: str, b: str, *extra: tuple[str, bool]) -> tuple[str, tuple[str, dict]]:
        aa, ab = per_seed(table[a], "max_val_acc"), per_seed(table[b], "max_val_acc")
        return (f"max val acc {a} {table[a]['max_val_acc_mean']:.4f} "
                f"({np.nanmin(aa):.4f}..{np.nanmax(aa):.4f}) vs {b} "
                f"{table[b]['max_val_acc_mean']:.4f} ({np.nanmin(ab):.4f}..{np.nanmax(ab):.4f})",
                compare((a, list(aa)), (b, list(ab)), better="higher",
                        preconditions=[schedules(a, b), *extra]))

    claim, paper = ("BN alone reaches the baseline's accuracy in fewer steps",
                    "13.3M vs 31.0M steps")
    if m := missing("BN-Baseline"):
        unmeasured(claim, paper, m)
    else:
        add(claim, paper, *fewer_steps("BN-Baseline", "Baseline"))

    claim, paper = ("BN-x5 needs far fewer steps than the baseline",
                    "14x fewer (2.1M vs 31.0M)")
    if m := missing("BN-x5"):
        unmeasured(claim, paper, m)
    else:
        ours, result = fewer_steps("BN-x5", "Baseline", FAR_FEWER_FACTOR)
        speedup = table["BN-x5"]["speedup_vs_baseline"]
        curves_speedup = table["BN-x5"]["speedup_vs_baseline_mean_curves"]
        add(claim, paper, f"{ours}; speed-up {'-' if speedup is None else f'{speedup:.2f}x'}"
            f" (mean curves: {'-' if curves_speedup is None else f'{curves_speedup:.2f}x'}); "
            f"far fewer = at least {FAR_FEWER_FACTOR:g}x (BN-x5's steps are multiplied by "
            f"{FAR_FEWER_FACTOR:g} before the test)", result)

    claim, paper = "BN-x30 ends higher than BN-x5", "74.8% vs 73.0% max val acc"
    if m := missing("BN-x30", "BN-x5"):
        unmeasured(claim, paper, m)
    else:
        add(claim, paper, *higher_acc("BN-x30", "BN-x5"))

    for name, theirs in (("BN-x5", "73.0%"), ("BN-x30", "74.8%")):
        claim, paper = f"{name} exceeds the baseline's maximum accuracy", f"{theirs} vs 72.2%"
        if m := missing(name):
            unmeasured(claim, paper, m)
        else:
            add(claim, paper, *higher_acc(name, "Baseline", plateaued))

    claim, paper = ("Baseline-x5 fails to train (diverges, or ends at chance)",
                    "parameters reached machine infinity")
    if m := missing("Baseline-x5"):
        unmeasured(claim, paper, m)
    else:
        v, base = table["Baseline-x5"], table["Baseline"]
        seeds = [{"seed": s["seed"], "status": s["status"], "final_val_acc": s["final_val_acc"],
                  "max_val_acc": s["max_val_acc"], "failed": s["failed_to_train"]}
                 for s in v["per_seed"]]
        trains = bool((per_seed(base, "max_val_acc") > limit).all())
        rows.append(count_rule(
            claim, paper, f"{sum(s['failed'] for s in seeds)} of {v['seeds']} seeds failed "
            f"({v['diverged']} diverged; the others' final val acc "
            + ", ".join(f"{s['final_val_acc']:.4f}" for s in seeds if s["status"] != "diverged")
            + f"); failed = diverged or final val acc <= {limit:g} (chance + margin)",
            seeds, "failed",
            [schedules("Baseline-x5"),
             (f"the Baseline at the base rate trains: every seed's max val acc > {limit:g}",
              trains)]))

    claim, paper = "Sigmoid without BN stays at chance", "Baseline-Sigmoid at chance (0.1%)"
    if m := missing("Baseline-Sigmoid"):
        unmeasured(claim, paper, m)
    else:
        v = table["Baseline-Sigmoid"]
        seeds = [{"seed": s["seed"], "max_val_acc": s["max_val_acc"],
                  "at_chance": not s["max_val_acc"] > limit} for s in v["per_seed"]]
        acc = per_seed(v, "max_val_acc")
        rows.append(count_rule(
            claim, paper, f"max val acc {v['max_val_acc_mean']:.4f} ({np.nanmin(acc):.4f}.."
            f"{np.nanmax(acc):.4f}); {sum(s['at_chance'] for s in seeds)} of {v['seeds']} "
            f"seeds at chance = max val acc <= {limit:g}", seeds, "at_chance",
            [schedules("Baseline-Sigmoid")]))

    claim, paper = ("Sigmoid with BN trains: BN-x5-Sigmoid above Baseline-Sigmoid",
                    "69.8% vs chance (0.1%)")
    if m := missing("Baseline-Sigmoid", "BN-x5-Sigmoid"):
        unmeasured(claim, paper, m)
    else:
        add(claim, paper, *higher_acc("BN-x5-Sigmoid", "Baseline-Sigmoid"))

    gains = plateau["per_seed_gain"]
    seeds = [{"seed": s, "gain": g, "plateaued": g < PLATEAU_MAX_GAIN} for s, g in gains.items()]
    row = count_rule(
        "the baseline plateaus within the run (our check, not a paper claim)", "-",
        f"Baseline mean val acc gain over the last {1 - PLATEAU_FROM:.0%} of steps: "
        f"{plateau['mean_curve_gain']:+.4f} (seeds {min(gains.values()):+.4f}.."
        f"{max(gains.values()):+.4f}); plateaued = gain < {PLATEAU_MAX_GAIN:g}", seeds,
        "plateaued", [schedules("Baseline")])
    rows.append(row | {"source": OUR_CHECK})
    return rows


def plateau_check(curve: pd.DataFrame, max_steps: int) -> dict[str, Any]:
    at = PLATEAU_FROM * max_steps
    steps = curve.index.to_numpy(dtype=float)

    def gain(values: pd.Series) -> float:
        return float(np.interp(max_steps, steps, values) - np.interp(at, steps, values))

    return {"from_step": at, "to_step": max_steps, "mean_curve_gain": gain(curve.mean(axis=1)),
            "per_seed_gain": {str(s): gain(curve[s]) for s in curve.columns}}


def lr_selection(lr_root: Path, dataset: str, base_lr: float
                 ) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
    """The base-rate candidates (one row per lr, sorted; per seed the max val acc over its
    run, the candidate's value their mean), the selection's summary and its claim row (the
    fig2 rate against every other candidate by bnrepro.claims.compare); warns on stderr when
    the fig2 Baseline's rate is not the candidate of highest mean."""
    runs = load_runs(lr_root, LR_EXPERIMENT)
    if not runs:
        raise Fig2Error(f"no {LR_EXPERIMENT} runs under {lr_root}")
    if other := sorted({r["config"]["dataset.name"] for r in runs} - {dataset}):
        raise Fig2Error(f"learning-rate runs under {lr_root} are on dataset.name {other}, "
                        f"the fig2 runs on {dataset}")
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        m = r["metrics"].dropna(subset=["val/acc"])
        best = m.loc[m["val/acc"].idxmax()] if len(m) else None
        by_lr.setdefault(float(r["config"]["optim.lr"]), []).append({
            "seed": r["seed"], "status": r["status"], "run_dir": str(r["dir"]),
            "best_val_acc": math.nan if best is None else float(best["val/acc"]),
            "best_val_step": None if best is None else int(best["step"])})
    rows = [{"lr": lr, "best_val_acc": float(np.nanmean([s["best_val_acc"] for s in seeds])),
             "best_val_step": float(np.mean([s["best_val_step"] or 0 for s in seeds])),
             "status": "; ".join(sorted({s["status"] for s in seeds})), "seeds": len(seeds),
             "best_val_acc_min": float(np.nanmin([s["best_val_acc"] for s in seeds])),
             "best_val_acc_max": float(np.nanmax([s["best_val_acc"] for s in seeds])),
             "best_val_acc_per_seed": " ".join(f"{s['best_val_acc']:.4f}" for s in seeds),
             "run_dir": " ".join(s["run_dir"] for s in seeds)}
            for lr, seeds in sorted(by_lr.items())]
    df = pd.DataFrame(rows)
    mine = df[np.isclose(df["lr"], base_lr, rtol=1e-9, atol=0)]
    winner = df.loc[df["best_val_acc"].idxmax()]
    if len(mine) and mine["best_val_acc"].iloc[0] >= winner["best_val_acc"]:
        winner = mine.iloc[0]  # a tie with the fig2 rate is no reason to change it
    ok = math.isclose(base_lr, winner["lr"], rel_tol=1e-9)
    if not ok:
        print(f"WARNING: the fig2 Baseline runs use optim.lr={base_lr:g}, but the learning-rate "
              f"candidate with the highest mean max validation accuracy is lr={winner['lr']:g} "
              f"({winner['best_val_acc']:.4f}); fix fig2_baseline.lr", file=sys.stderr)
    info = {"candidates": rows, "per_seed": by_lr, "best_lr": float(winner["lr"]),
            "best_val_acc": float(winner["best_val_acc"]), "fig2_baseline_lr": base_lr,
            "base_lr_is_best": ok}
    ours = next((lr for lr in by_lr if math.isclose(lr, base_lr, rel_tol=1e-9)), None)

    def values(lr: float) -> list[float]:
        return [s["best_val_acc"] for s in by_lr[lr]]

    tests = [compare((f"lr {ours:g}", values(ours)), (f"lr {lr:g}", values(lr)), "higher")
             for lr in by_lr if ours is not None and lr != ours]
    results = [v for v, _ in tests]
    result = ("not measured" if ours is None or not tests else
              "holds" if all(v == "holds" for v in results) else
              "does not hold" if "does not hold" in results else "inconclusive")
    evidence = {"rule": "the fig2 rate's per-seed max val acc against each other candidate's "
                        "(compare): holds when every test holds, does not hold when any "
                        "decides against it, else inconclusive",
                "comparisons": [e | {"verdict": v} for v, e in tests],
                "preconditions": [{"check": f"the fig2 Baseline's rate {base_lr:g} is a "
                                            "candidate", "met": ours is not None}]}
    row = {"claim": "base lr is the baseline's best candidate",
           "paper": "Inception's rate 0.0015 (its own choice)",
           "ours": f"fig2 Baseline lr {base_lr:g}; best candidate (mean over seeds) lr "
                   f"{winner['lr']:g} (max val acc {winner['best_val_acc']:.4f}) of "
                   + ", ".join(f"{r['lr']:g} ({r['best_val_acc']:.4f}, {r['seeds']} seeds)"
                               for r in rows),
           "verdict": result, "source": OUR_CHECK, "evidence": evidence}
    return info, row, df


def add_speedups(table: dict[str, dict[str, Any]], curves: dict[str, pd.DataFrame],
                 target: float, target_step: int) -> None:
    """Add to each variant's row of `table` its speed-up over the Baseline in median steps to
    target, the step where its mean curve first reaches the target, and that speed-up."""
    base_median = table["Baseline"]["steps_to_target_median"]
    for variant, v in table.items():
        m = v["steps_to_target_median"]
        v["speedup_vs_baseline"] = (base_median / m if math.isfinite(base_median)
                                    and math.isfinite(m) and m > 0 else None)
        v["mean_curve_first_reaches_target_at"] = None
        mean = curves[variant].mean(axis=1)
        if (hit := mean[mean >= target]).size:
            v["mean_curve_first_reaches_target_at"] = int(hit.index[0])
        at = v["mean_curve_first_reaches_target_at"]
        v["speedup_vs_baseline_mean_curves"] = target_step / at if at else None


def figure(curves: dict[str, pd.DataFrame], table: dict[str, dict[str, Any]], target: float,
           dataset: str) -> plt.Figure:
    """Fig. 2: per variant the validation accuracy over steps, mean over seeds (band
    min..max), a marker where the mean first reaches the target, the target as a line."""
    fig, ax = plt.subplots(figsize=(11, 5))
    for variant, curve in curves.items():
        v, color = table[variant], COLORS.get(variant)
        mean = curve.mean(axis=1)
        ax.plot(curve.index, mean, color=color, lw=1.5,
                label=f"{variant} ({v['seeds']} seed{'s' * (v['seeds'] != 1)}, "
                      f"{v['diverged']} diverged, {v['failed_to_train']} failed to train)")
        ax.fill_between(curve.index, curve.min(axis=1), curve.max(axis=1), color=color,
                        alpha=0.15)
        if (hit := mean[mean >= target]).size:
            ax.plot(hit.index[0], hit.iloc[0], "o", color=color, ms=7, mec="white", zorder=5)
    ax.axhline(target, color="0.4", ls="--", lw=1,
               label=f"target {target:.4f} (Baseline's max mean val acc)")
    ax.set(xlabel="training steps", ylabel="validation accuracy",
           title=f"Fig. 2 on {dataset}: validation accuracy vs training steps")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              title="mean over seeds, band min..max;\no = mean first reaches the target;\n"
                    f"diverged seeds score {CHANCE:g} after divergence;\nfailed = diverged "
                    f"or final val acc <= {CHANCE + CHANCE_MARGIN:g}", title_fontsize=7)
    fig.tight_layout()
    return fig


def csv_table(table: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for variant, v in table.items():
        row = {"variant": variant, "seeds": v["seeds"], "diverged": v["diverged"],
               "failed_to_train": v["failed_to_train"], "max_steps": v["max_steps"],
               "rate_share_second_half": round(v["rate_share_second_half"], 4),
               "steps_to_target_median": fmt_steps(v["steps_to_target_median"]),
               "steps_to_target_min": fmt_steps(v["steps_to_target_min"]),
               "steps_to_target_max": fmt_steps(v["steps_to_target_max"]),
               "seeds_never": v["never"]}
        row |= {f"steps_to_target_seed{s['seed']}": fmt_steps(s["steps_to_target"])
                for s in v["per_seed"]}
        row |= {k: round(v[k], 4) for k in (
            "max_val_acc_mean", "max_val_acc_min", "max_val_acc_max", "step_of_max_mean",
            "test_acc_at_best_val_mean", "test_acc_at_best_val_min", "test_acc_at_best_val_max")}
        speedup = v["speedup_vs_baseline"]
        row["speedup_vs_baseline"] = "" if speedup is None else round(speedup, 3)
        at, speedup = (v["mean_curve_first_reaches_target_at"],
                       v["speedup_vs_baseline_mean_curves"])
        row["mean_curve_reaches_target_at"] = "never" if at is None else at
        row["speedup_vs_baseline_mean_curves"] = "" if speedup is None else round(speedup, 3)
        row["paper_imagenet_steps_to_72.2"], row["paper_imagenet_max_acc"] = PAPER.get(
            variant, ("", ""))
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: dict[str, dict[str, Any]], target: float, target_step: int, dataset: str,
             max_steps: int) -> str:
    head = ["Variant", "seeds (n)", "diverged (k)", "steps to target: median (min..max)",
            "max val acc: mean (min..max)", "step of max (mean)",
            "test acc at best val: mean (min..max)", "speed-up vs Baseline",
            "mean curve reaches target at (speed-up)", "failed to train (k)",
            "steps run (rate sum in 2nd half)",
            "paper (ImageNet): steps to 72.2%", "paper (ImageNet): max val acc"]
    lines = [f"# Fig. 3 on {dataset}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for variant, v in table.items():
        speedup = v["speedup_vs_baseline"]
        cells = [variant, str(v["seeds"]), str(v["diverged"]), steps_cell(v),
                 f"{v['max_val_acc_mean']:.4f} ({v['max_val_acc_min']:.4f}.."
                 f"{v['max_val_acc_max']:.4f})", f"{v['step_of_max_mean']:.0f}",
                 f"{v['test_acc_at_best_val_mean']:.4f} ({v['test_acc_at_best_val_min']:.4f}.."
                 f"{v['test_acc_at_best_val_max']:.4f})",
                 "-" if speedup is None else f"{speedup:.2f}x", mean_curve_cell(v),
                 str(v["failed_to_train"]),
                 f"{v['max_steps']} ({v['rate_share_second_half']:.1%})",
                 *PAPER.get(variant, ("", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", caption(target, target_step, dataset, max_steps), ""]
    return "\n".join(lines)


def caption(target: float, target_step: int, dataset: str, max_steps: int) -> str:
    return (
        f"Our {dataset} runs (the Baseline's {max_steps} steps; a variant that decays its rate 6x "
        "faster stops 6x sooner, so that every schedule ends at the same fraction of its start: "
        "steps run, and the share of the run's rate sum in its second half) beside the paper's "
        f"Inception/ImageNet numbers. Target = {target:.4f}: the maximum over evaluated steps "
        "of the Baseline's "
        f"seed-mean validation accuracy curve (reached by the mean at step {target_step}); "
        "validation accuracy only. Steps to target: per seed the first evaluated step whose "
        "logged validation accuracy is >= the target; median over all n seeds, a seed that "
        "never gets there counting as slower than any (so \"never\" when half or more never "
        "do), min..max over the seeds that reach it, \"k of n never\" for those that do not. "
        "A diverged seed's metrics stop at its last good evaluation: it never reaches anything "
        f"later, and in the figure's mean curves and bands it scores chance ({CHANCE:g}) after "
        "that. Max val acc: per seed the maximum over its evaluations; step of max: its mean "
        "over seeds; test acc at best val: the test accuracy of each seed's best-validation "
        "evaluation among those that scored the test set (all of them unless trainer.test_every "
        "skips some; the reported number; test never selects). Speed-up = Baseline's median "
        "steps to target / the variant's (\"-\" where either is never); the mean-curve column "
        "gives the first step at which the variant's seed-mean curve (the figure's marker) "
        "reaches the target, and Baseline's such step / the variant's. Failed to train: seeds "
        f"that diverged or end at chance (final val acc <= {CHANCE + CHANCE_MARGIN:g}). Paper "
        "columns: Fig. 3 "
        "(Inception = our Baseline).")


def analyse(root: Path, lr_root: Path | None = None) -> dict[str, Any]:
    """Everything Figs. 2-3 and the claims are made of, computed from the runs below root
    (and the base-rate runs below lr_root), writing nothing: runs, dataset, max_steps, eval
    steps, variants (in VARIANTS order), per-variant curves (val/acc per step x seed) and
    table (describe_variant + speed-ups), target and the step where the Baseline mean reaches
    it, plateau check, claim rows (with dataset), the verdict rule with its thresholds, with
    lr_root the lr selection (info, candidates table), and root itself (the wandb folder).
    Fig2Error on bad input."""
    runs = load_runs(root, EXPERIMENT)
    if not runs:
        raise Fig2Error(f"no {EXPERIMENT} runs (completed or diverged) under {root}; train "
                        "them with `python -m bnrepro.train -m experiment=fig2_cifar`")
    if unknown := sorted({str(r["variant"]) for r in runs} - set(VARIANTS)):
        raise Fig2Error(f"unknown variant label(s) {unknown} under {root}; expected {VARIANTS}")
    if not any(r["variant"] == "Baseline" for r in runs):
        raise Fig2Error(f"no Baseline runs under {root}: the target is the Baseline's maximum "
                        "validation accuracy")
    check_same_setup(runs)
    dataset = runs[0]["config"]["dataset.name"]
    order = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in order}
    # The Baseline's run length (a variant with a faster schedule stops sooner: VARIANT_KEYS).
    max_steps = int(by_variant["Baseline"][0]["config"]["trainer.max_steps"])
    curves = {v: curve_table(rs, eval_steps(rs)) for v, rs in by_variant.items()}
    steps = np.array(sorted({int(s) for c in curves.values() for s in c.index}))
    base_mean = curves["Baseline"].mean(axis=1)
    target, target_step = float(base_mean.max()), int(base_mean.idxmax())
    table = {v: describe_variant(rs, target) for v, rs in by_variant.items()}
    add_speedups(table, curves, target, target_step)
    plateau = plateau_check(curves["Baseline"], max_steps)
    claim_rows = claims(table, plateau)
    lr_info = lr_candidates = None
    if lr_root is not None:
        base_lrs = {float(r["config"]["optim.lr"]) for r in by_variant["Baseline"]}
        lr_info, row, lr_candidates = lr_selection(lr_root, dataset, base_lrs.pop())
        claim_rows.append(row)
    for row in claim_rows:
        row["dataset"] = dataset
    rule = (f"{VERDICT_RULE} Thresholds: chance = {CHANCE:g} + margin {CHANCE_MARGIN:g}; far "
            f"fewer steps = {FAR_FEWER_FACTOR:g}x fewer steps (a variant's steps times "
            f"{FAR_FEWER_FACTOR:g} tested against the Baseline's); rate left = >= "
            f"{SCHEDULE_MIN_SECOND_HALF:.0%} of a run's rate sum in its second half; plateaued "
            f"= Baseline mean gain over the last {1 - PLATEAU_FROM:.0%} of steps < "
            f"{PLATEAU_MAX_GAIN:g}. Target "
            f"= {target:.4f} (max over steps of the Baseline's seed-mean validation curve).")
    return {"root": root, "runs": runs, "dataset": dataset, "max_steps": max_steps, "steps": steps,
            "variants": order, "by_variant": by_variant, "curves": curves, "table": table,
            "target": target, "target_step": target_step, "plateau": plateau,
            "claims": claim_rows, "verdict_rule": rule, "lr_info": lr_info,
            "lr_candidates": lr_candidates}


def figures(result: dict[str, Any]) -> dict[str, plt.Figure]:
    """Fig. 2 of `result` (analyse()), under its file stem fig2_<dataset>."""
    return {f"fig2_{result['dataset']}": figure(result["curves"], result["table"],
                                                 result["target"], result["dataset"])}


def numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of fig2_<dataset>.json (every number the README quotes) of `result`."""
    def clean(x: Any) -> Any:  # JSON: inf -> "never", NaN -> null
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if isinstance(x, float):
            return "never" if math.isinf(x) else None if math.isnan(x) else round(x, 6)
        return x

    r = result
    written = clean({
        "dataset": r["dataset"], "max_steps": r["max_steps"],
        "eval_steps": [int(s) for s in r["steps"]],
        "target": r["target"], "target_step_of_baseline_mean": r["target_step"],
        "definitions": {"target": "max over evaluated steps of the Baseline's seed-mean "
                                  "validation accuracy curve",
                        "caption": caption(r["target"], r["target_step"], r["dataset"],
                                           r["max_steps"]),
                        "verdict_rule": VERDICT_RULE,
                        "chance": CHANCE, "chance_margin": CHANCE_MARGIN,
                        "far_fewer_factor": FAR_FEWER_FACTOR,
                        "plateau_max_gain": PLATEAU_MAX_GAIN,
                        "schedule_min_second_half": SCHEDULE_MIN_SECOND_HALF},
        "max_steps_per_variant": {v: t["max_steps"] for v, t in r["table"].items()},
        "plateau": r["plateau"], "variants": r["table"],
        "mean_curves": {v: {str(k): float(x) for k, x in c.mean(axis=1).items()}
                        for v, c in r["curves"].items()},
        "lr_selection": r["lr_info"],
        "paper_imagenet": {k: {"steps_to_72.2": a, "max_acc": b} for k, (a, b) in PAPER.items()}})
    # The claim rows as the claims file has them (their evidence unrounded: recomputable).
    return written | {"claims": r["claims"]}


def setup_words(result: dict[str, Any]) -> str:
    """The claims file's `setup`: the runs' profile in words."""
    seeds = sorted({len(rs) for rs in result["by_variant"].values()})
    lengths: dict[int, list[str]] = {}
    for v, t in result["table"].items():
        lengths.setdefault(t["max_steps"], []).append(v)
    return (f"{result['dataset']}, steps per run "
            + "; ".join(f"{n} ({', '.join(vs)})" for n, vs in lengths.items())
            + ", width multiplier "
            f"{result['runs'][0]['config'].get('model.width_multiplier')}, "
            f"{'/'.join(map(str, seeds))} seeds per variant, variants "
            f"{', '.join(result['variants'])}")


def write(result: dict[str, Any], out: Path, wandb: bool = False) -> dict[str, Any]:
    """Write `result` (analyse()) to `out`: the files of the module docstring; with `wandb`,
    also log the figure and claims to the runs' wandb group (bnrepro.analysis.wandb_figures).
    Returns numbers(result), the content of fig2_<dataset>.json."""
    dataset, table, claim_rows = result["dataset"], result["table"], result["claims"]
    out.mkdir(parents=True, exist_ok=True)
    if result["lr_candidates"] is not None:
        atomic_write_text(out / f"fig2_lr_{dataset}.csv",
                          result["lr_candidates"].to_csv(index=False))
    for name, fig in figures(result).items():
        atomic_save_figure(fig, out / name)
        plt.close(fig)
    stem = out / f"fig2_{dataset}"
    atomic_write_text(Path(f"{stem}.csv"), csv_table(table).to_csv(index=False))
    atomic_write_text(Path(f"{stem}.md"), markdown(table, result["target"], result["target_step"],
                                                   dataset, result["max_steps"]))
    atomic_write_text(out / f"fig2_{dataset}_claims.md", to_markdown(
        f"Claims of Sec. 4.2 (Figs. 2-3) checked on {dataset}", claim_rows,
        result["verdict_rule"], paper_header="paper (ImageNet)"))
    write_claims(
        out / f"fig2_{dataset}_claims.json", claim_rows, experiment=EXPERIMENT,
        title=f"Figs. 2-3: accelerating BN networks (Sec. 4.2), on {dataset}", make="make fig2",
        setup=setup_words(result), figures=[f"fig2_{dataset}.png"],
        verdict_rule=result["verdict_rule"], summaries=[r["summary"] for r in result["runs"]])
    written = numbers(result)
    atomic_write_json(Path(f"{stem}.json"), written)
    wandb_figures.publish(wandb, result["runs"][0]["config"], [Path(f"{stem}.png")],
                          claims=claim_rows, wandb_dir=result["root"])
    return written


def print_summary(written: dict[str, Any], out: Path) -> None:
    """What main prints of `written` (numbers()): the files written, the target and the
    plateau, then one line per variant and per claim."""
    d = written["dataset"]
    print(f"wrote {out}/fig2_{d}.png, .pdf, .csv, .md, .json, fig2_{d}_claims.md and .json"
          + (f", fig2_lr_{d}.csv" if written["lr_selection"] else ""))
    print(f"target {written['target']:.4f} (max of the Baseline's seed-mean val acc, step "
          f"{written['target_step_of_baseline_mean']}); Baseline gain over the last "
          f"{1 - PLATEAU_FROM:.0%} of steps {written['plateau']['mean_curve_gain']:+.4f}")
    for variant, v in written["variants"].items():
        median = v["steps_to_target_median"]
        median = median if median == "never" else f"{median:g}"
        print(f"  {variant:<16} n={v['seeds']} diverged={v['diverged']} steps to target "
              f"{median} ({v['never']} never) max val acc "
              f"{v['max_val_acc_mean']:.4f} test@best val {v['test_acc_at_best_val_mean']:.4f}")
    for c in written["claims"]:
        print(f"  [{c['verdict']}] {c['claim']}")


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring): 0, or 2 with one `error:` line on bad input."""
    parser = argparse.ArgumentParser(prog="python -m bnrepro.analyse fig2",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="the fig2 run store, runs/fig2_<dataset>")
    parser.add_argument("--lr-runs", type=Path, default=None,
                        help="the base-rate selection runs, runs/fig2_lr_<dataset>")
    parser.add_argument("--out", type=Path, default=Path("results"))
    wandb_figures.add_flag(parser)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only; not at import, where it would take a notebook's backend
    try:
        written = write(analyse(args.run_dir, args.lr_runs), args.out, wandb=args.wandb)
    except Fig2Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_summary(written, args.out)
    return 0
