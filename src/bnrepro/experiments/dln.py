"""Santurkar et al.'s deep linear network (Figs. 3b and 10): ICS and the loss landscape, from
our run store (`python -m bnrepro.train_dln`, `make dln`).

One row per learning rate: the training loss; gradient ICS of two layers, l2 difference and
cosine (Def. 2.1); variation of the loss along the gradient, gradient predictiveness (the l2
change of the gradient along it), "effective" beta-smoothness (bnrepro.analysis.measures_figure:
lines are the mean over seeds, bands min..max over seeds; the loss and gradient change are drawn
as the paper's shaded ranges over step lengths).
Writes results/dln.{png,pdf,csv} and dln_claims.{json,md}.

Verdicts (VERDICT_RULE), at each rate (Fig. 3b shows 1e-6 and 1e-7): one number per seed
(the final loss, or a measure's median over the measured steps, non-finite steps and diverged
runs counting as the worst value), BN against the standard net by bnrepro.claims.compare, per
measured layer for ICS; "the standard net has almost no ICS" by its own rule (sign_rule). ICS
and landscape comparisons are "not measured" at a rate where both nets train at the edge of
stability of full-batch GD (beta x lr >= EDGE), the standard net's ICS where it does: there
the rate, not the net, decides them (docs/experiments/dln.md).

    python -m bnrepro.analyse dln runs/dln [--out results] [--wandb]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bnrepro.analysis import wandb_figures
from bnrepro.analysis.measures_figure import ics_layers, measures_figure, median_per_seed
from bnrepro.atomic import atomic_save_figure, atomic_write_text
from bnrepro.claims import ALPHA, compare, to_markdown, write_claims
from bnrepro.run.runs import Run, find_runs

DATASET = "gaussian-linear (synthetic, App. A.1)"
STYLE = {"none": ("Standard", "tab:red"), "bn": ("Standard + BatchNorm", "tab:blue")}
SOURCE = "Santurkar et al. (2018)"
# "Almost no ICS" (Sec. 2.2), made explicit: cos(G, G') >= this at every measured step.
NO_ICS_COS = 0.9
# The edge of stability of full-batch gradient descent: along a direction of curvature beta
# it stops descending at beta = 2 / lr. A net whose median "effective" beta is at least half
# that (beta * lr >= 1) trains at the edge: there the rate, not the net, sets beta, and the
# oscillation across the sharpest direction flips G' against G.
EDGE = 1.0
LANDSCAPE = (("landscape/loss_range", "variation of the loss along the gradient",
              "Fig. 10a: a clear improvement ... with BatchNorm"),
             ("landscape/grad_change_max", "gradient change along the gradient "
              "(predictiveness)", "Fig. 10b"),
             ("landscape/beta", '"effective" beta-smoothness', "Fig. 10c"))
VERDICT_RULE = (
    "per rate, one number per seed (the final training loss; for a measure its median over "
    "the measured steps, a non-finite step counting as the worst value: +inf, -1 for a "
    "cosine; a diverged run is the worst value). Comparisons (BN vs standard): "
    "bnrepro.claims.compare, the exact one-sided permutation test at 0.05: holds / does not "
    "hold when it decides that way, else inconclusive. 'The standard net has almost no ICS': "
    f"per seed the lowest cos(G, G') over the measured steps; holds when every seed's is >= "
    f"{NO_ICS_COS:g}, does not hold when every seed's is below, each only when the one-sided "
    "sign test 0.5^seeds <= 0.05 (5 seeds or more), else inconclusive. Not measured: a "
    "(norm, rate) lacks seeds, or a net trains at the edge of stability (median over seeds of its "
    f"median beta x lr >= {EDGE:g}): BN vs standard (ICS, landscape) when both do, the "
    "standard's ICS when it does")


def group(runs: list[Run], norm: str, lr: float) -> list[Run]:
    return [r for r in runs if r.config.norm == norm and r.config.lr == lr]


def diverged(run: Run) -> bool:
    return run.summary.get("status") == "diverged"


def per_seed(runs: list[Run], key: str, worst: float = math.inf) -> list[float]:
    """Per run: its median of `key` over the measured steps (median_per_seed: a non-finite
    step counts as `worst`), `worst` for a diverged run; a run that never measured `key` is
    left out (a missing seed: a precondition says so)."""
    values = []
    for run in runs:
        values += [worst] if diverged(run) else median_per_seed([run], key, worst)
    return values


def lowest(runs: list[Run], key: str, worst: float = -1.0) -> list[float]:
    """Per run: its lowest `key` over the measured steps (non-finite: `worst`)."""
    values = []
    for run in runs:
        measured = [worst if v is None else float(v) for v in run.measured(key)]
        values += [worst] if diverged(run) else [min(measured)] if measured else []
    return values


def final_loss(run: Run) -> float:
    """The last logged training loss; NaN (the worst, for compare) for a diverged run."""
    if diverged(run) or run.metrics.empty:
        return math.nan
    return float(run.metrics["train/loss"].iloc[-1])


def spread(values: list[float], fmt: str = ".3g") -> str:
    """Median (min..max) over seeds; an infinite value shows as inf."""
    if not values:
        return "no runs"
    s = pd.Series(values)
    return f"{s.median():{fmt}} ({s.min():{fmt}}..{s.max():{fmt}})"


def edge(runs: list[Run], lr: float) -> float:
    """The median over seeds of each run's median beta x lr (>= EDGE: at the edge)."""
    values = per_seed(runs, "landscape/beta")
    return float(np.median(values)) * lr if values else math.nan


def sign_rule(seeds: list[float], threshold: float, preconditions: list[tuple[str, bool]]
              ) -> tuple[str, dict[str, Any]]:
    """A claim that every seed is at least `threshold`: holds when all are, does not hold when
    none is, each only when the one-sided sign test (0.5^seeds) is <= 0.05; else inconclusive;
    not measured when a precondition is unmet or there are no seeds. Evidence as compare's."""
    above = sum(v >= threshold for v in seeds)
    p = 0.5 ** len(seeds)
    evidence = {"seeds": seeds, "threshold": threshold, "at_or_above": above,
                "rule": f"{above} of {len(seeds)} seeds >= {threshold:g}; one-sided sign test "
                        f"p = 0.5^{len(seeds)} = {p:.3g} when all agree",
                "preconditions": [{"check": c, "met": bool(m)} for c, m in preconditions]}
    if not seeds or not all(m for _, m in preconditions):
        return "not measured", evidence
    decided = p <= ALPHA
    result = ("holds" if decided and above == len(seeds) else
              "does not hold" if decided and above == 0 else "inconclusive")
    return result, evidence


def claims(runs: list[Run], lrs: list[float], layers: list[int]) -> list[dict[str, Any]]:
    """Every claim at every rate (Fig. 3b shows both): BN's loss, ICS of each measured layer
    (BN's cos below the standard's; the standard's near 1), the landscape measures."""
    rows = []
    seeds = sorted({int(r.config.seed) for r in runs})

    def row(claim: str, paper: str, ours: str, decided: tuple[str, dict[str, Any]]) -> None:
        rows.append({"claim": claim, "paper": paper, "ours": ours, "verdict": decided[0],
                     "dataset": DATASET, "source": SOURCE, "evidence": decided[1]})

    for lr in lrs:
        bn_runs, std_runs = group(runs, "bn", lr), group(runs, "none", lr)
        steps = int(runs[0].config.steps)
        complete = (f"every seed {seeds} of both nets trained at lr {lr:g} (BN "
                    f"{len(bn_runs)}, standard {len(std_runs)} runs)",
                    len(bn_runs) == len(std_runs) == len(seeds))
        bn, std = [final_loss(r) for r in bn_runs], [final_loss(r) for r in std_runs]
        row(f"BN trains the deep linear net to a lower loss (lr {lr:g})",
            'Sec. 2.2: "BatchNorm networks continue to perform drastically better in terms of '
            'attained accuracy and loss" (10,000 steps)',
            f"training loss at step {steps}, median (min..max over seeds): BN {spread(bn)} vs "
            f"standard {spread(std)}",
            compare(("BN", bn), ("standard", std), "lower", preconditions=[complete]))

        edges = {"BN": edge(bn_runs, lr), "standard": edge(std_runs, lr)}
        at_edge = f"median beta x lr: BN {edges['BN']:.3g}, standard {edges['standard']:.3g}"
        # Both at the edge: both betas are the rate's 2 / lr and G' flips in both; nothing
        # left to compare. One at the edge: its numbers are the rate's, the comparison stands.
        not_both = (f"not both nets at the edge of stability at lr {lr:g} (beta x lr >= "
                    f"{EDGE:g}; {at_edge}): there the rate, not the net, sets beta and G'",
                    any(v < EDGE for v in edges.values()))
        standard_below = (f"the standard net below the edge of stability at lr {lr:g} (beta x "
                          f"lr < {EDGE:g}; {at_edge}): at the edge its G' flips with the "
                          "oscillation the rate sets", edges["standard"] < EDGE)
        for layer in layers:
            key = f"ics/h{layer}/cos"
            b, s = per_seed(bn_runs, key, -1.0), per_seed(std_runs, key, -1.0)
            measured = (f"every run measured {key}", len(b) == len(bn_runs) and
                        len(s) == len(std_runs))
            row(f"BN does not reduce gradient ICS: cos(G, G') is lower with BN (layer "
                f"{layer}, lr {lr:g})",
                'Sec. 2.2 / Fig. 3b: "for BatchNorm it appears that G and G\' are almost '
                'uncorrelated"',
                f"median cos(G, G') over the measured steps, median (min..max over seeds): "
                f"BN {spread(b, '.3f')} vs standard {spread(s, '.3f')}",
                compare(("BN", b), ("standard", s), "lower",
                        preconditions=[complete, measured, not_both]))
            low = lowest(std_runs, key)
            row(f"The standard net has almost no ICS: cos(G, G') >= {NO_ICS_COS:g} at every "
                f"measured step (layer {layer}, lr {lr:g})",
                'Sec. 2.2 / Fig. 3b: "the standard network experiences almost no ICS for the '
                'entirety of training"',
                f"the standard net's lowest cos(G, G') over the measured steps, median "
                f"(min..max over seeds): {spread(low, '.3f')}",
                sign_rule(low, NO_ICS_COS, [complete, (f"every standard run measured {key}",
                                                       len(low) == len(std_runs)), standard_below]))

        for key, name, quote in LANDSCAPE:
            b, s = per_seed(bn_runs, key), per_seed(std_runs, key)
            measured = (f"every run measured {key}", len(b) == len(bn_runs) and
                        len(s) == len(std_runs))
            row(f"BN makes the landscape smoother: smaller {name} (lr {lr:g})",
                f"{quote} (step lengths 1/100 to 30 x the rate)",
                f"median over the measured steps, median (min..max over seeds): BN "
                f"{spread(b)} vs standard {spread(s)}",
                compare(("BN", b), ("standard", s), "lower",
                        preconditions=[complete, measured, not_both]))
    return rows


def figure(runs: list[Run]) -> plt.Figure:
    """Figs. 3b and 10 analog: one row per learning rate (bnrepro.analysis.measures_figure)."""
    rows = [(f"lr {rate:g}", {norm: [r for r in runs if r.config.norm == norm
                                     and r.config.lr == rate] for norm in STYLE})
            for rate in learning_rates(runs)]
    return measures_figure(rows, STYLE, f"Deep linear network, {runs[0].config.depth} layers, "
                           f"full-batch GD ({DATASET}): mean over seeds, bands min..max over "
                           "seeds", lead=("train/loss", "training loss", True))


def load_runs(root: Path | str) -> list[Run]:
    """The finished runs under `root`, diverged ones too: each is its side's worst value, never
    a missing seed."""
    return find_runs([root], statuses=("completed", "diverged"), keep_empty=True)


def learning_rates(runs: list[Run]) -> list[float]:
    """The runs' rates, largest first: the first is the paper's 1e-6 in conf/dln.yaml."""
    return sorted({float(r.config.lr) for r in runs}, reverse=True)


def run_row(run: Run) -> dict[str, Any]:
    """One run's numbers: its final loss and the median over the measured steps of every
    measure (median_per_seed: non-finite steps count as the worst value, -1 for a cosine),
    with the scale of its beta: beta x lr (>= EDGE: at the edge of stability) and the median
    of beta x ||g|| (the gradient change per unit of step size rather than per unit of
    distance moved: what Fig. 10c would show if it divided by the step size)."""
    keys = sorted({k for row in run.measure_rows for k in row if k != "step" and "/x" not in k})
    row = {"norm": run.config.norm, "lr": run.config.lr, "seed": run.config.seed,
           "status": run.summary.get("status"), "final_loss": final_loss(run)}
    for key in keys:
        (row[key],) = per_seed([run], key, -1.0 if key.endswith("/cos") else math.inf) or \
            [math.nan]
    row["beta_x_lr"] = row.get("landscape/beta", math.nan) * float(run.config.lr)
    per_size = [math.inf if r["landscape/beta"] is None or r["landscape/grad_norm"] is None
                else r["landscape/beta"] * r["landscape/grad_norm"]
                for r in run.measure_rows if "landscape/beta" in r]
    row["beta_per_step_size"] = float(np.median(per_size)) if per_size else math.nan
    return row


def analyse(runs: list[Run]) -> dict[str, Any]:
    """The runs' numbers (one row per run: "table"), claims at every rate ("lrs") over the
    measured ICS layers ("layers"), and the setup in words."""
    lrs = learning_rates(runs)
    layers = ics_layers(runs)
    table = pd.DataFrame([run_row(r) for r in runs])
    cfg = runs[0].config
    setup = (f"{DATASET}, {cfg.depth} layers of {cfg.dim}x{cfg.dim}, {cfg.samples} samples, "
             f"full-batch GD on the summed squared error for {cfg.steps} steps (the paper: "
             f"10,000) at lr {', '.join(f'{x:g}' for x in lrs)}, "
             f"{len({r.config.seed for r in runs})} seeds")
    return {"runs": runs, "lrs": lrs, "layers": layers,
            "table": table.sort_values(["norm", "lr", "seed"]),
            "claims": claims(runs, lrs, layers), "setup": setup}


def figures(result: dict[str, Any]) -> dict[str, plt.Figure]:
    return {"dln": figure(result["runs"])}


def write(result: dict[str, Any], out: Path) -> None:
    """The table and the claims files into `out`."""
    atomic_write_text(out / "dln.csv", result["table"].to_csv(index=False))
    write_claims(out / "dln_claims.json", result["claims"], experiment="dln",
                 title="Deep linear network: ICS and landscape (Santurkar et al. Figs. 3b, 10)",
                 make="make dln", setup=result["setup"], figures=["dln.png"],
                 verdict_rule=VERDICT_RULE, summaries=[r.summary for r in result["runs"]])
    atomic_write_text(out / "dln_claims.md", to_markdown(
        "Deep linear network (Santurkar et al. 2018)", result["claims"], VERDICT_RULE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnrepro.analyse dln",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results"))
    wandb_figures.add_flag(parser)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only, no display
    runs = load_runs(args.runs)
    if not runs:
        print(f"error: no finished deep-linear-net runs under {args.runs}; run `make dln` "
              "(python -m bnrepro.train_dln) first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result = analyse(runs)
    for name, fig in figures(result).items():
        atomic_save_figure(fig, args.out / name)
        plt.close(fig)
    write(result, args.out)
    wandb_figures.publish(args.wandb, {"name": "dln", "logger": {"group": "dln"}},
                          [args.out / "dln.png"], claims=result["claims"], wandb_dir=args.runs)
    for c in result["claims"]:
        print(f"{c['verdict']:>14}  {c['claim']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
