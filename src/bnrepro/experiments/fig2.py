"""Figures 2 and 3 of Ioffe & Szegedy (2015), Sec. 4.2, from our run store.

    python -m bnrepro.analyse fig2 runs/fig2_<dataset> [--lr-runs runs/fig2_lr_<dataset>]
                                   [--out results] [--wandb]

Reads every run of experiment fig2_cifar below the folder (completed AND diverged; runs with
another status, e.g. failed or still running, are named in a warning and left out). Each run's
config has a `variant` label (Baseline, Baseline-x5, ...); a variant's runs are its seeds.

Definitions (also written into the table caption and the JSON):
- Curves. Per variant, validation accuracy (val/acc of metrics.jsonl) at each evaluated step:
  mean over seeds, band = min..max over seeds. A diverged seed's metrics stop at its last good
  evaluation; for the mean curves and bands it scores chance (CHANCE = 0.1) at every later step.
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
  max_steps minus its (interpolated) value at 0.75 * max_steps.

Claims (results/fig2_<dataset>_claims.md, and .json for scripts/report.py in the format of
bnrepro.claims): verdicts are computed, see VERDICT_RULE.

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
from bnrepro.claims import to_markdown, verdict, worst, write_claims
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
VARIANT_KEYS = ("variant", "model.norm", "model.activation", "model.dropout", "optim.",
                "augment.")
ALWAYS_CHECKED = ("dataset.name", "trainer.max_steps", "model.width_multiplier",
                  "trainer.eval_every")
PAPER = {  # Fig. 3 of the paper (Inception on ImageNet): steps to 72.2%, max val accuracy
    "Baseline": ("31.0M", "72.2%"), "BN-Baseline": ("13.3M", "72.7%"),
    "BN-x5": ("2.1M", "73.0%"), "BN-x30": ("2.7M", "74.8%"),
    "BN-x5-Sigmoid": ("never", "69.8%"),
    "Baseline-x5": ("parameters reached machine infinity", "-"),
    "Baseline-Sigmoid": ("remained at chance", "0.1% (chance, 1000 classes)")}
VERDICT_RULE = (
    "holds: the comparison holds for the seed means (medians for steps) AND the seed ranges "
    "do not overlap (for per-seed conditions: every seed satisfies it); mixed: it holds for "
    "the means but the ranges overlap (not every seed); does not hold: it fails for the "
    "means. A seed that never reaches the target counts as infinitely many steps. A claim "
    "about two variants takes the worse of the two verdicts.")
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


def curve_table(runs: list[dict[str, Any]], steps: np.ndarray) -> pd.DataFrame:
    """val/acc per evaluated step (rows) and seed (columns); a seed's missing values after its
    last evaluation (diverged) or logged as null score CHANCE."""
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
        per_seed.append({
            "seed": r["seed"], "status": r["status"], "run_dir": str(r["dir"]),
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
    return {
        "seeds": len(per_seed), "diverged": sum(s["status"] == "diverged" for s in per_seed),
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


def claims(table: dict[str, dict[str, Any]], plateau: dict[str, Any]) -> list[dict[str, str]]:
    rows = []

    def add(claim: str, paper: str, ours: str, result: str, source: str = PAPER_SOURCE) -> None:
        rows.append({"claim": claim, "paper": paper, "ours": ours, "verdict": result,
                     "source": source})

    def missing(*names: str) -> list[str]:
        return [n for n in names if n not in table]

    def fewer_steps(a: str, b: str, factor: float = 1.0) -> tuple[str, str]:
        """a needs fewer steps (by `factor`, medians) than b; ranges: a's slowest < b's fastest."""
        sa, sb = per_seed(table[a], "steps_to_target"), per_seed(table[b], "steps_to_target")
        ma, mb = table[a]["steps_to_target_median"], table[b]["steps_to_target_median"]
        means = math.isfinite(ma) and ma * factor <= mb and ma < mb
        ranges = bool(np.isfinite(sa).all() and sa.max() < sb.min())
        return verdict(means, ranges), (f"steps to target, median (min..max over seeds): {a} "
                                         f"{steps_cell(table[a])} vs {b} {steps_cell(table[b])}")

    def higher_acc(a: str, b: str) -> tuple[str, str]:
        aa, ab = per_seed(table[a], "max_val_acc"), per_seed(table[b], "max_val_acc")
        means = table[a]["max_val_acc_mean"] > table[b]["max_val_acc_mean"]
        return (verdict(means, bool(aa.min() > ab.max())),
                f"{a} {table[a]['max_val_acc_mean']:.4f} ({aa.min():.4f}..{aa.max():.4f}) vs "
                f"{b} {table[b]['max_val_acc_mean']:.4f} ({ab.min():.4f}..{ab.max():.4f})")

    def unmeasured(claim: str, paper: str, names: list[str]) -> None:
        add(claim, paper, f"no runs of {', '.join(names)}", "not measured")

    claim, paper = ("BN alone reaches the baseline's accuracy in fewer steps",
                    "13.3M vs 31.0M steps")
    if m := missing("BN-Baseline"):
        unmeasured(claim, paper, m)
    else:
        add(claim, paper, *reversed(fewer_steps("BN-Baseline", "Baseline")))

    claim, paper = ("BN-x5 needs far fewer steps than the baseline",
                    "14x fewer (2.1M vs 31.0M)")
    if m := missing("BN-x5"):
        unmeasured(claim, paper, m)
    else:
        result, ours = fewer_steps("BN-x5", "Baseline", FAR_FEWER_FACTOR)
        speedup = table["BN-x5"]["speedup_vs_baseline"]
        curves_speedup = table["BN-x5"]["speedup_vs_baseline_mean_curves"]
        add(claim, paper, f"{ours}; speed-up {'-' if speedup is None else f'{speedup:.2f}x'}"
            f" (mean curves: {'-' if curves_speedup is None else f'{curves_speedup:.2f}x'}); "
            f"far fewer = at least {FAR_FEWER_FACTOR:g}x", result)

    claim, paper = "BN-x30 ends higher than BN-x5", "74.8% vs 73.0% max val acc"
    if m := missing("BN-x30", "BN-x5"):
        unmeasured(claim, paper, m)
    else:
        add(claim, paper, *reversed(higher_acc("BN-x30", "BN-x5")))

    claim, paper = ("BN-x5 and BN-x30 exceed the baseline's maximum accuracy",
                    "73.0% and 74.8% vs 72.2%")
    if m := missing("BN-x5", "BN-x30"):
        unmeasured(claim, paper, m)
    else:
        (v5, o5), (v30, o30) = higher_acc("BN-x5", "Baseline"), higher_acc("BN-x30", "Baseline")
        add(claim, paper, f"max val acc {o5}; {o30}", worst(v5, v30))

    claim, paper = "Baseline-x5 diverges", "parameters reached machine infinity"
    if m := missing("Baseline-x5"):
        unmeasured(claim, paper, m)
    else:
        v = table["Baseline-x5"]
        add(claim, paper, f"{v['diverged']} of {v['seeds']} seeds diverged",
            verdict(v["diverged"] > 0, v["diverged"] == v["seeds"]))

    claim = "Sigmoid without BN stays at chance, with BN it trains"
    paper = "Baseline-Sigmoid at chance (0.1%); BN-x5-Sigmoid 69.8%"
    if m := missing("Baseline-Sigmoid", "BN-x5-Sigmoid"):
        unmeasured(claim, paper, m)
    else:
        limit = CHANCE + CHANCE_MARGIN
        plain, bn = table["Baseline-Sigmoid"], table["BN-x5-Sigmoid"]
        sp, sb = per_seed(plain, "max_val_acc"), per_seed(bn, "max_val_acc")
        means = plain["max_val_acc_mean"] <= limit < bn["max_val_acc_mean"]
        add(claim, paper, f"max val acc {plain['max_val_acc_mean']:.4f} "
            f"({sp.min():.4f}..{sp.max():.4f}) vs {bn['max_val_acc_mean']:.4f} "
            f"({sb.min():.4f}..{sb.max():.4f}); at chance = <= {limit:g}",
            verdict(means, bool(sp.max() <= limit < sb.min())))

    gains = np.array(list(plateau["per_seed_gain"].values()))
    add("the baseline plateaus within the run (our check, not a paper claim)", "-",
        f"Baseline mean val acc gain over the last {1 - PLATEAU_FROM:.0%} of steps: "
        f"{plateau['mean_curve_gain']:+.4f} (seeds {gains.min():+.4f}..{gains.max():+.4f}); "
        f"plateaued = gain < {PLATEAU_MAX_GAIN:g}",
        verdict(plateau["mean_curve_gain"] < PLATEAU_MAX_GAIN,
                bool((gains < PLATEAU_MAX_GAIN).all())), OUR_CHECK)
    return rows


def plateau_check(curve: pd.DataFrame, max_steps: int) -> dict[str, Any]:
    at = PLATEAU_FROM * max_steps
    steps = curve.index.to_numpy(dtype=float)

    def gain(values: pd.Series) -> float:
        return float(np.interp(max_steps, steps, values) - np.interp(at, steps, values))

    return {"from_step": at, "to_step": max_steps, "mean_curve_gain": gain(curve.mean(axis=1)),
            "per_seed_gain": {str(s): gain(curve[s]) for s in curve.columns}}


def lr_selection(lr_root: Path, dataset: str, base_lr: float
                 ) -> tuple[dict[str, Any], dict[str, str], pd.DataFrame]:
    """The base-rate candidates (one row per lr, sorted), the selection's summary and its
    claim row; warns on stderr when the fig2 Baseline's rate is not the best candidate."""
    runs = load_runs(lr_root, LR_EXPERIMENT)
    if not runs:
        raise Fig2Error(f"no {LR_EXPERIMENT} runs under {lr_root}")
    if other := sorted({r["config"]["dataset.name"] for r in runs} - {dataset}):
        raise Fig2Error(f"learning-rate runs under {lr_root} are on dataset.name {other}, "
                        f"the fig2 runs on {dataset}")
    rows = []
    for r in runs:
        m = r["metrics"].dropna(subset=["val/acc"])
        best = m.loc[m["val/acc"].idxmax()]
        rows.append({"lr": float(r["config"]["optim.lr"]), "best_val_acc": float(best["val/acc"]),
                     "best_val_step": int(best["step"]), "status": r["status"],
                     "run_dir": str(r["dir"])})
    df = pd.DataFrame(rows).sort_values("lr")
    winner = df.loc[df["best_val_acc"].idxmax()]
    ok = math.isclose(base_lr, winner["lr"], rel_tol=1e-9)
    if not ok:
        print(f"WARNING: the fig2 Baseline runs use optim.lr={base_lr:g}, but the learning-rate "
              f"candidate with the highest max validation accuracy is lr={winner['lr']:g} "
              f"({winner['best_val_acc']:.4f}); fix fig2_baseline.lr", file=sys.stderr)
    info = {"candidates": rows, "best_lr": float(winner["lr"]),
            "best_val_acc": float(winner["best_val_acc"]), "fig2_baseline_lr": base_lr,
            "base_lr_is_best": ok}
    row = {"claim": "base lr is the baseline's best candidate",
           "paper": "Inception's rate 0.0015 (its own choice)",
           "ours": f"fig2 Baseline lr {base_lr:g}; best candidate lr {winner['lr']:g} "
                   f"(max val acc {winner['best_val_acc']:.4f}) of "
                   f"{', '.join(f'{x:g}' for x in df['lr'])}",
           "verdict": "holds" if ok else "does not hold", "source": OUR_CHECK}
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
                      f"{v['diverged']} diverged)")
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
                    f"diverged seeds score {CHANCE:g} after divergence", title_fontsize=7)
    fig.tight_layout()
    return fig


def csv_table(table: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for variant, v in table.items():
        row = {"variant": variant, "seeds": v["seeds"], "diverged": v["diverged"],
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
            "mean curve reaches target at (speed-up)",
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
                 *PAPER.get(variant, ("", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", caption(target, target_step, dataset, max_steps), ""]
    return "\n".join(lines)


def caption(target: float, target_step: int, dataset: str, max_steps: int) -> str:
    return (
        f"Our {dataset} runs ({max_steps} steps each) beside the paper's Inception/ImageNet "
        f"numbers. Target = {target:.4f}: the maximum over evaluated steps of the Baseline's "
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
        "reaches the target, and Baseline's such step / the variant's. Paper columns: Fig. 3 "
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
    max_steps = int(runs[0]["config"]["trainer.max_steps"])
    steps = np.array(sorted({int(s) for r in runs for s in r["metrics"]["step"]}))
    order = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in order}
    curves = {v: curve_table(rs, steps) for v, rs in by_variant.items()}
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
            f"fewer steps = median speed-up >= {FAR_FEWER_FACTOR:g}x; plateaued = Baseline mean "
            f"gain over the last {1 - PLATEAU_FROM:.0%} of steps < {PLATEAU_MAX_GAIN:g}. Target "
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
    return clean({
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
                        "plateau_max_gain": PLATEAU_MAX_GAIN},
        "plateau": r["plateau"], "variants": r["table"],
        "mean_curves": {v: {str(k): float(x) for k, x in c.mean(axis=1).items()}
                        for v, c in r["curves"].items()}, "claims": r["claims"],
        "lr_selection": r["lr_info"],
        "paper_imagenet": {k: {"steps_to_72.2": a, "max_acc": b} for k, (a, b) in PAPER.items()}})


def setup_words(result: dict[str, Any]) -> str:
    """The claims file's `setup`: the runs' profile in words."""
    seeds = sorted({len(rs) for rs in result["by_variant"].values()})
    return (f"{result['dataset']}, {result['max_steps']} steps per run, width multiplier "
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
