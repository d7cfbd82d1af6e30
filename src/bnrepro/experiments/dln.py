"""Santurkar et al.'s deep linear network (Figs. 3b and 10): ICS and the loss landscape, from
our run store (`python -m bnrepro.train_dln`, `make dln`).

One row per learning rate: the training loss; gradient ICS of two layers, l2 difference and
cosine (Def. 2.1); variation of the loss along the gradient, gradient predictiveness (the l2
change of the gradient along it), "effective" beta-smoothness (bnrepro.analysis.measures_figure:
lines are the mean over seeds, bands min..max over seeds; the loss and gradient change are drawn
as the paper's shaded ranges over step lengths).
Writes results/dln.{png,pdf,csv} and dln_claims.{json,md}.

Verdicts (all at the paper's rate, the first of `lrs`): a per-seed number for BN and for the
standard net (the median over the measured steps, or the final loss); "holds" when every BN
seed is on the side the paper states of every standard seed, "does not hold" when every one
is on the other side, "mixed" when the seeds' ranges overlap. ICS is decided per measured
layer: holds when BN's cosine is below the standard net's in every layer (it "does not
reduce" ICS), does not hold when it is above in every layer.

    python -m bnrepro.analyse dln runs/dln [--out results] [--wandb]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from bnrepro.analysis import wandb_figures
from bnrepro.analysis.measures_figure import ics_layers, measures_figure
from bnrepro.atomic import atomic_save_figure, atomic_write_text
from bnrepro.claims import to_markdown, write_claims
from bnrepro.run.runs import Run, find_runs

DATASET = "gaussian-linear (synthetic, App. A.1)"
STYLE = {"none": ("Standard", "tab:red"), "bn": ("Standard + BatchNorm", "tab:blue")}
SOURCE = "Santurkar et al. (2018)"
VERDICT_RULE = (
    "per seed, the median over the measured steps (or the final loss); holds when every BN "
    "seed lies on the paper's side of every standard seed, does not hold when every one lies "
    "on the other side, mixed otherwise; ICS: per measured layer, holds in every layer = holds")


def per_seed(runs: list[Run], norm: str, lr: float, value: Callable[[Run], float]
             ) -> list[float]:
    return [value(r) for r in runs if r.config.norm == norm and r.config.lr == lr]


def median_measure(key: str) -> Callable[[Run], float]:
    def value(run: Run) -> float:
        return float(run.measures[key].median()) if key in run.measures else float("nan")
    return value


def final_loss(run: Run) -> float:
    return float(run.metrics["train/loss"].iloc[-1])


def spread(values: list[float], fmt: str = ".3g") -> str:
    s = pd.Series(values)
    return f"{s.mean():{fmt}} ({s.min():{fmt}}..{s.max():{fmt}})"


def separated(bn: list[float], standard: list[float]) -> str:
    """'holds' when every BN value is below every standard one, 'does not hold' when every
    one is above, else 'mixed' (also when a side has no values)."""
    if not bn or not standard:
        return "not measured"
    if max(bn) < min(standard):
        return "holds"
    if min(bn) > max(standard):
        return "does not hold"
    return "mixed"


def claims(runs: list[Run], lr: float, layers: list[int]) -> list[dict[str, str]]:
    rows = []

    def row(claim: str, paper: str, ours: str, verdict: str) -> None:
        rows.append({"claim": claim, "paper": paper, "ours": ours, "verdict": verdict,
                     "dataset": DATASET, "source": SOURCE})

    bn, std = per_seed(runs, "bn", lr, final_loss), per_seed(runs, "none", lr, final_loss)
    row("BN trains the deep linear net to a lower loss",
        'Sec. 2.2: "BatchNorm networks continue to perform drastically better in terms of '
        'attained accuracy and loss"',
        f"final training loss at lr {lr:g}, mean (min..max over seeds): BN {spread(bn)} vs "
        f"standard {spread(std)}", separated(bn, std))

    cos_verdicts, parts = [], []
    for layer in layers:
        key = f"ics/h{layer}/cos"
        b, s = (per_seed(runs, n, lr, median_measure(key)) for n in ("bn", "none"))
        cos_verdicts.append(separated(b, s))
        parts.append(f"layer {layer}: BN {spread(b, '.3f')} vs standard {spread(s, '.3f')}")
    # not bnrepro.claims.worst: layers that disagree make the claim mixed; it does not hold
    # only when every layer is against the paper
    ics_verdict = ("holds" if all(v == "holds" for v in cos_verdicts) else
                   "does not hold" if all(v == "does not hold" for v in cos_verdicts) else
                   "mixed")
    row("BN does not reduce gradient ICS: cos(G, G') is lower with BN",
        'Sec. 2.2 / Fig. 3b: "the standard network experiences almost no ICS for the entirety '
        'of training, whereas for BatchNorm it appears that G and G\' are almost uncorrelated"',
        "median cos(G, G') over the measured steps, mean (min..max over seeds): "
        + "; ".join(parts), ics_verdict if layers else "not measured")

    for key, name, quote in (
            ("landscape/loss_range", "variation of the loss along the gradient",
             "Fig. 10a: a clear improvement ... with BatchNorm"),
            ("landscape/grad_change_max", "gradient change along the gradient (predictiveness)",
             "Fig. 10b"),
            ("landscape/beta", '"effective" beta-smoothness', "Fig. 10c")):
        b, s = (per_seed(runs, n, lr, median_measure(key)) for n in ("bn", "none"))
        row(f"BN makes the landscape smoother: smaller {name}",
            f"{quote} (step lengths 1/100 to 30 x the rate)",
            f"median over the measured steps, mean (min..max over seeds): BN {spread(b)} vs "
            f"standard {spread(s)}", separated(b, s))
    return rows


def figure(runs: list[Run]) -> plt.Figure:
    """Figs. 3b and 10 analog: one row per learning rate (bnrepro.analysis.measures_figure)."""
    rows = [(f"lr {rate:g}", {norm: [r for r in runs if r.config.norm == norm
                                     and r.config.lr == rate] for norm in STYLE})
            for rate in learning_rates(runs)]
    return measures_figure(rows, STYLE, f"Deep linear network, {runs[0].config.depth} layers, "
                           f"full-batch GD ({DATASET}): mean over seeds, bands min..max over "
                           "seeds", lead=("train/loss", "training loss", True))


def learning_rates(runs: list[Run]) -> list[float]:
    """The runs' rates, largest first: the first is the paper's 1e-6 in conf/dln.yaml."""
    return sorted({float(r.config.lr) for r in runs}, reverse=True)


def analyse(runs: list[Run]) -> dict[str, Any]:
    """The runs' numbers (one row per run: "table"), claims at the paper's rate ("lr", the
    largest) over the measured ICS layers ("layers"), and the setup in words."""
    lrs = learning_rates(runs)
    layers = ics_layers(runs)
    table = pd.DataFrame([{"norm": r.config.norm, "lr": r.config.lr, "seed": r.config.seed,
                           "final_loss": final_loss(r),
                           **{k: float(r.measures[k].median()) for k in r.measures.columns
                              if k != "step" and "/x" not in k}} for r in runs])
    cfg = runs[0].config
    setup = (f"{DATASET}, {cfg.depth} layers of {cfg.dim}x{cfg.dim}, {cfg.samples} samples, "
             f"full-batch GD for {cfg.steps} steps at lr {', '.join(f'{x:g}' for x in lrs)}, "
             f"{len({r.config.seed for r in runs})} seeds")
    return {"runs": runs, "lr": lrs[0], "layers": layers,
            "table": table.sort_values(["norm", "lr", "seed"]),
            "claims": claims(runs, lrs[0], layers), "setup": setup}


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
    runs = find_runs([args.runs])
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
