"""Santurkar et al. (2018), "How Does Batch Normalization Help Optimization?", from our run
store: Sec. 2.1 (Figs. 1-2: standard vs BN vs "noisy" BN, accuracy and the distributions of
layer inputs, with the distributional shift behind them) and Sec. 3.3 (Figs. 5-6: l_p
normalisations).

    python -m bnrepro.analyse santurkar runs/santurkar_mnist [runs/santurkar_cifar10-jpeg ...]
                                        [--out results] [--no-figures] [--wandb]

Reads every run of experiments santurkar_mnist / santurkar_cifar below the folders with
bnrepro.run.runs.find_runs (completed AND diverged; runs of other statuses are named in a warning
and left out), grouped by dataset (its `dataset.name`, written exactly: cifar10-jpeg is the
JPEG mirror, not CIFAR-10), learning rate and norm. A (dataset, lr, norm)'s runs are its seeds.

Definitions (also in the JSON):
- Nets: model.norm none is the paper's "Standard"; bn, noisy_bn (App. A.2.1 Alg. 1), noise_only
  (that noise without BN), lp1 / lp2 / lpinf (Sec. 3.3).
- Training accuracy of a seed (Figs. 1a, 2, 5): the mean over its evaluations after step 0 of
  train/acc (the accuracy of the training mini-batches since the previous evaluation, in the
  training network: the noisy nets with their noise), i.e. the area under its training curve
  per step: speed and level in one number. A diverged seed scores chance (CHANCE) at every
  evaluation after its last one.
- Final test accuracy: test/acc at the last step (chance for a diverged seed). Max validation
  accuracy: over the seed's evaluations.
- Shift (Figs. 2, 6, 8; src/bnrepro/measures/shift.py): shift/h{i}/w1_step_rel, the per-unit
  Wasserstein-1 distance of hidden layer i's inputs to the nonlinearity between two successive
  training steps (after step t - 1 and after step t, t an evaluated step: Fig. 8's "between
  two successive steps"), on the training network's fixed probe images (each step's own noise
  for a noisy net), summed over units and divided by the summed per-unit standard deviations at
  t - 1. A seed's shift of layer i is its mean over the evaluations after step 0 that it
  logged. Drawn and tabled, never compared: w1_prev_rel (the drift between consecutive
  evaluations, eval_every steps apart: it grows with that interval for a drifting net, not
  for noise injected afresh at every step) and w1_init_rel (since step 0); the CSV and JSON
  hold them all, raw and relative.
- Fig. 2 analog: per net and layer, the logged quantiles (act_train/h{i}/q05..q95) of the
  tracked unit ("a random input", Sec. 2) of the lowest seed, over training: shaded fans.

Claims (results/santurkar_claims.md, and .json for the report, bnrepro.report, in
the format of bnrepro.claims: each claim with its dataset and source): one block per dataset
and learning rate (the rate is named in the claim), verdicts by bnrepro.claims.compare
(VERDICT_RULE, with the margins and preconditions of claims_rule()); each row carries its
evidence.

Writes to --out, per dataset: santurkar_<dataset>.png/.pdf (Figs. 1-2: accuracy and shift),
santurkar_<dataset>_distributions.png/.pdf (Fig. 2), santurkar_<dataset>_lp.png/.pdf and
santurkar_<dataset>_lp_distributions.png/.pdf (Figs. 5-6), santurkar_<dataset>.csv (one row
per lr and norm) and santurkar_<dataset>.json; and santurkar_claims.md and .json over all
datasets. Bad input prints one `error:` line and exits with 2.

Sec. 2.2 and 3.1 (Figs. 3-4: gradient ICS and the loss landscape, BN vs standard; the deep
linear net's are bnrepro.experiments.dln), from the runs' measures (conf/measures/, on in both
experiments): santurkar_<dataset>_measures.png/.pdf (bnrepro.analysis.measures_figure), and
claims per rate: a seed's number is the median of the measure over its measured steps;
gradient ICS per measured layer in cos(G, G') and ||G - G'|| (Definition 2.1 defines both),
landscape claims gated on the standard net being off chance (claims_rule()).

Extending: add a Section to SECTIONS: its `numbers` takes one dataset's Groups (one per
learning rate) and returns its numbers, with its claim rows under "groups"[i]["claims"] (rows:
bnrepro.claims fields); its `figures` takes the same Groups and returns figures by file stem.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from bnrepro.analysis import wandb_figures
from bnrepro.analysis.measures_figure import ics_layers, measures_figure, median_per_seed
from bnrepro.atomic import atomic_save_figure, atomic_write_json, atomic_write_text
from bnrepro.claims import compare, evidence_text, worst, write_claims
from bnrepro.config import flatten
from bnrepro.run.runs import Run, find_runs

EXPERIMENTS = ("santurkar_mnist", "santurkar_cifar")  # config `name` of the runs read
STATUSES = ("completed", "diverged")
NETS = {  # model.norm -> (label as in the paper, colour)
    "none": ("Standard", "black"), "bn": ("Standard + BatchNorm", "tab:blue"),
    "noisy_bn": ('Standard + "Noisy" BatchNorm', "tab:orange"),
    "noise_only": ("Standard + noise (no BN)", "tab:brown"),
    "lp1": ("Standard + L1", "tab:green"), "lp2": ("Standard + L2", "tab:purple"),
    "lpinf": ("Standard + Linf", "tab:red")}
SEC21_NETS, LP_NETS = ("none", "bn", "noisy_bn", "noise_only"), ("none", "bn", "lp1", "lp2",
                                                                  "lpinf")
LP_NORMS = ("lp1", "lp2", "lpinf")
# The training network's probes (shift/..., act_train/...; the inference network's are
# shift_inference/..., act/...): the network that trains, noise included.
SHIFT = "w1_step_rel"  # the claims' shift: between two successive steps (module docstring)
DRIFT = "w1_prev_rel"  # drawn and tabled: the drift between evaluations (eval_every steps)
SHIFT_MEASURES = ("w1_step_rel", "w1_step", "w1_prev_rel", "w1_prev", "w1_init_rel", "w1_init")
CHANCE = 0.1  # 1 of 10 classes: a diverged seed's accuracy after its last evaluation
CHANCE_MARGIN = 0.05  # "does not train at all" = max val acc <= CHANCE + CHANCE_MARGIN
ABOUT_AS_WELL = 0.01  # "about as well" / "comparably" = within 1 accuracy point (run mean)
MARGINAL = 0.5  # "marginal difference" in shift = BN's within 0.5..2 x the standard's
FAN = ((5, 95, 0.15), (15, 85, 0.25), (25, 75, 0.35))  # (low q, high q, alpha) of the fans
VERDICT_RULE = (
    "bnrepro.claims.compare, the one rule: a comparison holds when the exact one-sided "
    "permutation test of the seeds' rank sums decides for it at 0.05 (with 3 seeds a side: "
    "only when the seed ranges do not overlap), does not hold when the same test decides "
    "against it, and is inconclusive otherwise; not measured when a precondition is unmet "
    "(a net missing, a measure not logged, the reference net at chance). Non-finite per-seed "
    "values count as the worst value. A claim over several layers, l_p norms or bounds takes "
    "the worst of their verdicts (holds < inconclusive < does not hold < not measured); a "
    "claim whose variant nets (noisy BN, noise only, l_p) have no runs at a rate is not "
    "listed for it.")
# Keys that must agree between all runs of one dataset (else: not one experiment).
SAME_SETUP = ("name", "trainer.max_steps", "trainer.eval_every", "trainer.batch_size",
              "model.kind", "model.activation", "model.hidden", "model.width_multiplier",
              "optim.momentum", "optim.weight_decay", "probe.num_examples")


SANTURKAR, IOFFE = "Santurkar et al. (2018)", "Ioffe & Szegedy (2015)"  # bnrepro.claims SOURCES
IOFFE_CLAIMS = ("BN reduces internal covariate shift (distributional shift) vs standard",)
TITLE = "Internal covariate shift on trial: Santurkar et al. (2018), Sec. 2.1 and 3.3"


class SanturkarError(Exception):
    """Bad input: reported as one `error:` line, exit code 2."""


@dataclass
class Group:
    """The runs of one dataset at one learning rate: norm -> seeds, every evaluated step, and
    the hidden layers with shift keys."""

    dataset: str
    lr: float
    nets: dict[str, list[Run]]
    steps: np.ndarray
    layers: list[int]

    @property
    def label(self) -> str:
        return f"{self.dataset}, lr {self.lr:g}"

    @property
    def config(self):
        """The config of one of its runs (the experiment, dataset and wandb group)."""
        return next(r for runs in self.nets.values() for r in runs).config


def seed_of(run: Run) -> int:
    return int(run.config.seed)


def load_groups(roots: Sequence[Path]) -> dict[str, list[Group]]:
    runs = [r for r in find_runs(roots, STATUSES) if r.config.get("name") in EXPERIMENTS]
    if not runs:
        raise SanturkarError(f"no {' / '.join(EXPERIMENTS)} runs (completed or diverged) under "
                             f"{', '.join(map(str, roots))}; train them with `make santurkar`")
    by_dataset: dict[str, list[Run]] = {}
    for r in runs:
        by_dataset.setdefault(str(r.config.dataset.name), []).append(r)
    groups = {}
    for dataset, members in sorted(by_dataset.items()):
        check_same_setup(dataset, members)
        steps = np.array(sorted({int(s) for r in members for s in r.metrics["step"]}))
        columns = {c for r in members for c in r.metrics.columns}
        layers = sorted({int(m[1]) for c in columns
                         if (m := re.fullmatch(rf"shift/h(\d+)/({SHIFT}|{DRIFT})", c))})
        groups[dataset] = []
        for lr in sorted({float(r.config.optim.lr) for r in members}, reverse=True):
            nets: dict[str, list[Run]] = {}
            for r in sorted(members, key=seed_of):
                if float(r.config.optim.lr) == lr:
                    nets.setdefault(str(r.config.model.norm), []).append(r)
            order = [n for n in NETS if n in nets] + sorted(set(nets) - set(NETS))
            groups[dataset].append(Group(dataset, lr, {n: nets[n] for n in order}, steps, layers))
    return groups


def check_same_setup(dataset: str, runs: list[Run]) -> None:
    configs = [flatten(OmegaConf.to_container(r.config, resolve=True)) for r in runs]
    differing = []
    for key in SAME_SETUP:
        values = sorted({repr(c.get(key, "(absent)")) for c in configs})
        if len(values) > 1:
            differing.append(f"{key} ({', '.join(values)})")
    if differing:
        raise SanturkarError(f"runs on {dataset} differ in {'; '.join(differing)}: not one "
                             "experiment; give one experiment's folder")


# ---- numbers ----

def curve(runs: list[Run], key: str, steps: np.ndarray, after_divergence: float = math.nan
          ) -> pd.DataFrame:
    """`key` per evaluated step (rows) and seed (columns); a diverged seed's steps after its
    last evaluation get `after_divergence`."""
    columns = {}
    for r in runs:
        series = r.metrics.set_index("step")[key] if key in r.metrics else pd.Series(dtype=float)
        series = series.reindex(steps).astype(float)
        if r.summary.get("status") == "diverged":
            series[series.index > r.metrics["step"].max()] = after_divergence
        columns[seed_of(r)] = series
    return pd.DataFrame(columns, index=steps)


def shift_key(layer: int, measure: str = SHIFT) -> str:
    return f"shift/h{layer}/{measure}"


def spread(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    if not np.isfinite(v).any():
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(np.nanmean(v)), "min": float(np.nanmin(v)),
            "max": float(np.nanmax(v))}


def describe_net(runs: list[Run], group: Group) -> dict[str, Any]:
    """Per seed and over seeds: training accuracy, final test, max validation accuracy and
    the shift per layer (module docstring)."""
    steps, later = group.steps, group.steps > 0
    seeds = []
    for r in runs:
        train = curve([r], "train/acc", steps, CHANCE).iloc[:, 0]
        test = curve([r], "test/acc", steps, CHANCE).iloc[:, 0].dropna()
        val = curve([r], "val/acc", steps).iloc[:, 0]
        seed = {"seed": seed_of(r), "status": r.summary.get("status"), "run_dir": str(r.dir),
                "train_acc": float(train[later].mean()),
                "final_train_acc": float(train.iloc[-1]),
                "final_test_acc": float(test.iloc[-1]) if len(test) else math.nan,
                "max_val_acc": float(val.max())}
        for layer in group.layers:
            for measure in SHIFT_MEASURES:
                values = curve([r], shift_key(layer, measure), steps).iloc[:, 0]
                seed[f"h{layer}/{measure}"] = float(values[later].mean()) \
                    if values[later].notna().any() else math.nan
                seed[f"h{layer}/{measure}_final"] = float(values.dropna().iloc[-1]) \
                    if values.notna().any() else math.nan
        seeds.append(seed)
    keys = [k for k in seeds[0] if k not in ("seed", "status", "run_dir")]
    return {"seeds": len(seeds), "diverged": sum(s["status"] == "diverged" for s in seeds),
            **{k: spread([s[k] for s in seeds]) for k in keys}, "per_seed": seeds}


# ---- verdicts (bnrepro.claims.compare: the one rule; a claim over layers or norms takes the
# worst of its parts' verdicts) ----

Verdict = tuple[str, dict[str, Any]]  # (verdict, evidence) as bnrepro.claims.compare returns


def cell(stat: dict[str, float], digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}f} ({stat['min']:.{digits}f}..{stat['max']:.{digits}f})"


def per_seed(net: dict[str, Any], key: str) -> list[float]:
    """A net's per-seed values of `key` (describe_net), NaN where a seed has none."""
    return [s[key] for s in net["per_seed"]]


def label(norm: str) -> str:
    return NETS.get(norm, (norm,))[0]


def combine(parts: dict[str, Verdict], what: str) -> Verdict:
    """A claim made for every part (layer, l_p norm, bound): the worst part's verdict
    (bnrepro.claims.RANK), with every part's evidence."""
    if not parts:
        return "not measured", {"rule": f"no {what} measured", "parts": {}}
    return worst(*(v for v, _ in parts.values())), {
        "rule": f"worst of the verdicts per {what} ({', '.join(parts)})",
        "parts": {name: {"verdict": v, **e} for name, (v, e) in parts.items()}}


def left_chance(net: dict[str, Any]) -> bool:
    """Every seed's max validation accuracy is above chance + CHANCE_MARGIN."""
    return all(v > CHANCE + CHANCE_MARGIN for v in per_seed(net, "max_val_acc"))


def left_chance_check(norm: str, net: dict[str, Any]) -> tuple[str, bool]:
    return (f"{label(norm)} left chance (every seed's max validation accuracy above "
            f"{CHANCE + CHANCE_MARGIN:g})", left_chance(net))


def shift_parts(a: str, b: str, table: dict[str, dict], layers: list[int], better: str
                ) -> dict[str, Verdict]:
    """Per layer: compare `a`'s successive-step shift with `b`'s (`better`: which way the
    claim says `a` differs: "higher" = more shift)."""
    return {f"h{i}": compare((label(a), per_seed(table[a], f"h{i}/{SHIFT}")),
                             (label(b), per_seed(table[b], f"h{i}/{SHIFT}")), better)
            for i in layers}


def shift_cells(norms: Sequence[str], table: dict[str, dict], layers: list[int]) -> str:
    return "; ".join(f"h{i} " + " vs ".join(f"{label(n)} {cell(table[n][f'h{i}/{SHIFT}'], 3)}"
                                            for n in norms) for i in layers)


def claims(group: Group, table: dict[str, dict]) -> list[dict[str, Any]]:
    """The claims of Sec. 2.1 and 3.3 this group's runs decide (see VERDICT_RULE)."""
    rows = []
    shift_layers = [i for i in group.layers
                    if any(not math.isnan(v) for net in table.values()
                           for v in per_seed(net, f"h{i}/{SHIFT}"))]

    def add(claim: str, paper: str, ours: str, result: Verdict) -> None:
        source = IOFFE if claim in IOFFE_CLAIMS else SANTURKAR
        rows.append({"claim": f"{claim} (lr {group.lr:g})", "paper": paper, "ours": ours,
                     "verdict": result[0], "dataset": group.dataset, "source": source,
                     "evidence": result[1]})

    def needs(claim: str, paper: str, *norms: str, shift: bool = False) -> bool:
        variants = [n for n in norms if n not in ("none", "bn")]
        if variants and not any(n in table for n in variants):
            return False  # no net of the claim at this rate (the CIFAR one runs them at 0.1)
        missing = [n for n in norms if n not in table]
        if missing or (shift and not shift_layers):
            why = f"no runs of {', '.join(missing)}" if missing else \
                f"no {SHIFT} logged (probe.shift.successive=false?)"
            add(claim, paper, why, ("not measured", {"rule": why, "preconditions": [
                {"check": "every net of the claim has runs that logged what it needs",
                 "met": False}]}))
            return False
        return True

    acc = "train_acc"  # mean training accuracy over the run

    def acc_cell(*norms: str) -> str:
        return "training accuracy, run mean: " + "; ".join(
            f"{label(n)} {cell(table[n][acc])}" for n in norms)

    def trains_better(better: str, worse: str, margin: float = 0.0,
                      preconditions: Sequence[tuple[str, bool]] = ()) -> Verdict:
        return compare((label(better), per_seed(table[better], acc)),
                       (label(worse), per_seed(table[worse], acc)), "higher", margin,
                       preconditions)

    claim = "BN trains faster than standard"
    paper = ('"a drastic improvement, both in terms of optimization and generalization '
             'performance, for networks trained with BatchNorm layers" (Sec. 2, Fig. 1)')
    if needs(claim, paper, "bn", "none"):
        add(claim, paper, acc_cell("bn", "none"), trains_better("bn", "none"))

    claim = "noisy BN trains about as well as BN"
    paper = ('"the performance difference between models with BatchNorm layers, and '
             '\'noisy\' BatchNorm layers is almost non-existent" (Sec. 2.1, Fig. 2)')
    if needs(claim, paper, "noisy_bn", "bn"):
        bn_trains = [left_chance_check("bn", table["bn"])]
        noisy, bn = per_seed(table["noisy_bn"], acc), per_seed(table["bn"], acc)
        add(claim, paper, acc_cell("noisy_bn", "bn") + f"; about as well = within "
            f"{ABOUT_AS_WELL:g} of BN", combine({  # an equivalence: both bounds
                "not below": trains_better("noisy_bn", "bn", -ABOUT_AS_WELL, bn_trains),
                "not above": compare((label("noisy_bn"), noisy), (label("bn"), bn), "lower",
                                     -ABOUT_AS_WELL, bn_trains)}, "bound"))

    claim = "noisy BN trains better than standard"
    paper = '"both these networks perform much better than standard networks" (Sec. 2.1)'
    if needs(claim, paper, "noisy_bn", "none"):
        add(claim, paper, acc_cell("noisy_bn", "none"), trains_better("noisy_bn", "none"))

    def shift_claim(claim: str, paper: str, a: str, b: str, better: str) -> None:
        """`a`'s successive-step shift is `better` ("higher": more) than `b`'s, every layer."""
        if needs(claim, paper, a, b, shift=True):
            add(claim, paper, f"{SHIFT} per layer: " + shift_cells((a, b), table, shift_layers),
                combine(shift_parts(a, b, table, shift_layers, better), "layer"))

    shift_claim("noisy BN has less stable distributions (more shift) than standard",
                '"the \'noisy\' BatchNorm network has qualitatively less stable distributions '
                'than even the standard, non-BatchNorm network" (Sec. 2.1, Figs. 2, 8)',
                "noisy_bn", "none", "higher")
    shift_claim("BN reduces internal covariate shift (distributional shift) vs standard",
                "Ioffe & Szegedy's premise (\"fixing the distribution of the layer inputs\"); "
                "Santurkar et al. question it", "bn", "none", "lower")

    claim = "BN's distributional stability differs only marginally from standard's"
    paper = ('"the difference in distributional stability (change in the mean and variance) '
             'in networks with and without BatchNorm layers seems to be marginal" (Fig. 1c)')
    if needs(claim, paper, "bn", "none", shift=True):
        parts = {}
        for i in shift_layers:
            bn, std = per_seed(table["bn"], f"h{i}/{SHIFT}"), per_seed(table["none"],
                                                                         f"h{i}/{SHIFT}")
            parts[f"h{i} above {MARGINAL:g}x"] = compare(
                ("BN", bn), (f"{MARGINAL:g} x standard", [MARGINAL * v for v in std]), "higher")
            parts[f"h{i} below {1 / MARGINAL:g}x"] = compare(
                ("BN", bn), (f"{1 / MARGINAL:g} x standard", [v / MARGINAL for v in std]),
                "lower")
        means = {n: [table[n][f"h{i}/{SHIFT}"]["mean"] for i in shift_layers]
                 for n in ("bn", "none")}
        ratios = ", ".join(f"h{i} {b / s if s else math.nan:.2f}" for i, b, s in zip(
            shift_layers, means["bn"], means["none"], strict=True))
        add(claim, paper, f"{SHIFT} BN / standard (seed means): {ratios}; marginal = BN's "
            f"within {MARGINAL:g}..{1 / MARGINAL:g} x standard's",
            combine(parts, "layer and bound"))

    claim = "the same noise without BN prevents training entirely"
    paper = ('"adding the same amount of noise to the activations of the standard '
             '(non-BatchNorm) network prevents it from training entirely" (Sec. 2.1)')
    if needs(claim, paper, "noise_only", "none"):
        limit = CHANCE + CHANCE_MARGIN
        values = per_seed(table["noise_only"], "max_val_acc")
        at_chance = sum(not v > limit for v in values)  # NaN (never evaluated): at chance
        check = left_chance_check("none", table["none"])
        result = ("not measured" if not check[1] else "holds" if at_chance == len(values)
                  else "does not hold" if at_chance == 0 else "inconclusive")
        add(claim, paper, f"max validation accuracy {cell(table['noise_only']['max_val_acc'])}; "
            f"entirely = <= {limit:g}; {at_chance} of {len(values)} seeds at chance",
            (result, {"rule": f"holds when every seed's max validation accuracy is <= {limit:g}, "
                              "does not hold when none is, else inconclusive",
                      "seeds": [None if math.isnan(v) else v for v in values],
                      "threshold": limit, "at_chance": at_chance,
                      "preconditions": [{"check": check[0], "met": check[1]}]}))

    claim = "l_p normalisations perform comparably to BN"
    paper = ('"all the normalization strategies offer comparable performance to BatchNorm" '
             '(Sec. 3.3, Fig. 5: "comparably or even better")')
    if needs(claim, paper, "bn", *LP_NORMS):
        bn_trains = left_chance_check("bn", table["bn"])
        add(claim, paper, acc_cell(*LP_NORMS, "bn") + f"; comparably = at most "
            f"{ABOUT_AS_WELL:g} below BN", combine(
                {p: trains_better(p, "bn", -ABOUT_AS_WELL, [bn_trains]) for p in LP_NORMS},
                "l_p norm"))

    claim = "l_p normalisations train better than standard"
    paper = '"yet they still yield improved optimization performance" (Sec. 3.3)'
    if needs(claim, paper, "none", *LP_NORMS):
        add(claim, paper, acc_cell(*LP_NORMS, "none"),
            combine({p: trains_better(p, "none") for p in LP_NORMS}, "l_p norm"))

    claim = "l_p normalisations have more distributional shift than standard"
    paper = ('"the l_p-normalization techniques lead to larger distributional covariate shift '
             '(as considered in [10]) than the vanilla, i.e., unnormalized, networks" (Sec. 3.3, '
             'Fig. 6)')
    if needs(claim, paper, "none", *LP_NORMS, shift=True):
        parts = {f"{p} {layer}": part for p in LP_NORMS for layer, part in
                 shift_parts(p, "none", table, shift_layers, "higher").items()}
        add(claim, paper, f"{SHIFT} per layer: " + shift_cells((*LP_NORMS, "none"), table,
                                                               shift_layers),
            combine(parts, "l_p norm and layer"))
    return rows


# ---- figures ----

def draw_band(ax, table: pd.DataFrame, color: str, label: str, style: str = "-") -> None:
    mean = table.mean(axis=1)
    ok = mean.notna()
    ax.plot(table.index[ok], mean[ok], style, color=color, lw=1.4, label=label)
    if table.shape[1] > 1:
        ax.fill_between(table.index[ok], table.min(axis=1)[ok], table.max(axis=1)[ok],
                        color=color, alpha=0.15, lw=0)


def held_out_key(group: Group) -> str:
    """test/acc where every evaluation scored the test set, else val/acc (CIFAR tests only
    at the start and the end)."""
    runs = [r for rs in group.nets.values() for r in rs]
    every = all("test/acc" in r.metrics and r.metrics["test/acc"].notna().all() for r in runs)
    return "test/acc" if every else "val/acc"


def accuracy_and_shift_figure(groups: list[Group], nets: Sequence[str], title: str
                              ) -> plt.Figure:
    """Rows: learning rates; columns: training accuracy, held-out accuracy, shift between
    two successive steps, vs the previous evaluation and vs step 0 (per layer: line style)."""
    styles = ["-", "--", ":", "-."]
    shifts = (SHIFT, DRIFT, "w1_init_rel")
    fig, axes = plt.subplots(len(groups), 5, figsize=(22, 3.6 * len(groups)), squeeze=False)
    for row, group in zip(axes, groups, strict=True):
        held = held_out_key(group)
        for norm in (n for n in nets if n in group.nets):
            runs, (label, color) = group.nets[norm], NETS[norm]
            label = f"{label} ({len(runs)} seeds)"
            draw_band(row[0], curve(runs, "train/acc", group.steps, CHANCE), color, label)
            draw_band(row[1], curve(runs, held, group.steps, CHANCE), color, label)
            for col, measure in enumerate(shifts, start=2):
                for i, layer in enumerate(group.layers):
                    table = curve(runs, shift_key(layer, measure), group.steps).loc[1:]
                    if table.isna().all().all():
                        continue
                    row[col].plot(table.index, table.mean(axis=1), styles[i % len(styles)],
                                  color=color, lw=1.2,
                                  label=f"{NETS[norm][0]}, h{layer}" if col == 2 else None)
        for ax, ylabel in zip(row, ("training accuracy (mini-batches)",
                                    f"{'test' if held == 'test/acc' else 'validation'} accuracy",
                                    "shift between successive steps (W1 / std)",
                                    "drift since the previous evaluation (W1 / std)",
                                    "shift since step 0 (W1 / std)"), strict=True):
            ax.set(xlabel="training steps", ylabel=ylabel)
            ax.grid(alpha=0.3)
        for ax in row[2:]:  # shifts span decades (noise vs a slowly drifting net)
            if ax.lines:
                ax.set_yscale("log")
        row[0].set_title(group.label, loc="left", fontsize=9)
        row[0].legend(fontsize=7, frameon=False)
        row[2].legend(fontsize=6, frameon=False, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def shown_layers(layers: list[int]) -> list[int]:
    """First, middle and last hidden layer (as the paper's layers #2, #9, #13)."""
    return sorted({layers[0], layers[(len(layers) - 1) // 2], layers[-1]}) if layers else []


def fan_levels(run: Run, layer: int) -> list[int]:
    head = f"act_train/h{layer}/q"
    return sorted(int(c[len(head):]) for c in run.metrics.columns
                  if c.startswith(head) and c[len(head):].isdigit())


def distributions_figure(group: Group, nets: Sequence[str], title: str) -> plt.Figure:
    """Fig. 2 / Fig. 6 analog: per layer (rows) and net (columns), the tracked unit's input
    quantiles over training, lowest seed: fans 5-95, 15-85, 25-75 and the median."""
    nets = [n for n in nets if n in group.nets]
    hidden = sorted({int(m[1]) for r in group.nets[nets[0]] for c in r.metrics.columns
                     if (m := re.fullmatch(r"act_train/h(\d+)/q50", c))})
    layers = shown_layers(hidden)
    fig, axes = plt.subplots(max(1, len(layers)), len(nets), figsize=(3.6 * len(nets),
                             2.6 * max(1, len(layers))), squeeze=False, sharex=True)
    for j, norm in enumerate(nets):
        run = group.nets[norm][0]
        m = run.metrics.set_index("step")
        for i, layer in enumerate(layers):
            ax, levels = axes[i, j], fan_levels(run, layer)
            head = f"act_train/h{layer}/q"
            for low, high, alpha in FAN:
                if low in levels and high in levels:
                    ax.fill_between(m.index, m[f"{head}{low:02d}"], m[f"{head}{high:02d}"],
                                    color=NETS[norm][1], alpha=alpha, lw=0,
                                    label=f"{low}-{high}%" if i == j == 0 else None)
            if 50 in levels:
                ax.plot(m.index, m[f"{head}50"], color=NETS[norm][1], lw=1,
                        label="median" if i == j == 0 else None)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"{NETS[norm][0]}\n(seed {seed_of(run)})", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"layer h{layer}: input\nto unit {run.config.probe.unit}")
            if i == len(layers) - 1:
                ax.set_xlabel("training steps")
    axes[0, 0].legend(fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---- sections: one per part of the paper; each returns numbers and claims, and draws ----

def shift_figures(groups: list[Group]) -> dict[str, plt.Figure]:
    """Figs. 1-2 and 5-6 analogs of one dataset's groups, by file stem."""
    dataset, figures = groups[0].dataset, {}
    for nets, suffix, what in ((SEC21_NETS, "", "Figs. 1-2: standard vs BN vs noisy BN"),
                               (LP_NETS, "_lp", "Figs. 5-6: l_p normalisations")):
        shown = [g for g in groups if any(n in g.nets for n in nets if n not in ("none", "bn"))]
        if not shown:  # e.g. a store without l_p nets: no _lp figures
            continue
        if not suffix:  # Figs. 1-2: BN vs standard at every rate, the variants where run
            shown = groups
        figures[f"santurkar_{dataset}{suffix}"] = accuracy_and_shift_figure(
            shown, nets, f"Santurkar et al. {what}, on {dataset}: mean over seeds, band "
            "min..max; shift lines: h1 solid, h2 dashed, h3 dotted, h4 dash-dot (training "
            "network)")
        main = shown[0]  # the highest learning rate (the paper's 0.1 where run)
        figures[f"santurkar_{dataset}{suffix}_distributions"] = distributions_figure(
            main, nets, f"{what.split(':')[0]} analog on {main.label}: input to one unit of "
            "the training network over training (fixed probe images)")
    return figures


def distributional_shift(groups: list[Group]) -> dict[str, Any]:
    """Sec. 2.1 and 3.3: accuracy (Figs. 1, 2, 5), distributions (Figs. 2, 6), shift."""
    numbers: dict[str, Any] = {"groups": []}
    for group in groups:
        table = {norm: describe_net(runs, group) for norm, runs in group.nets.items()}
        numbers["groups"].append({"lr": group.lr, "layers": group.layers, "nets": table,
                                  "claims": claims(group, table)})
    return numbers


ICS_PAPER = ('"Models with BatchNorm have similar, or even worse, internal covariate shift, '
             'despite performing better in terms of accuracy and loss" (Sec. 2.2, Fig. 3)')
LANDSCAPE_CLAIMS = (  # (key, what, the paper's words)
    ("landscape/loss_range", "variation of the loss along the gradient",
     '"the loss of a vanilla, i.e., non-BatchNorm, network has a very wide range of values '
     'along the direction of the gradient" (Sec. 3.1, Fig. 4a)'),
    ("landscape/grad_change_max", "gradient change along the gradient (predictiveness)",
     '"a significant difference (close to two orders of magnitude) in such gradient '
     'predictiveness" (Sec. 3.1, Fig. 4b)'),
    ("landscape/beta", '"effective" beta-smoothness',
     '"we observe consistent differences between these networks" (Sec. 3.1, Fig. 4c)'))


def measured(runs: list[Run], key: str) -> list[float]:
    """Per seed the median of a measure over its measured steps; a step whose value was not
    finite counts as the worst value (-1 for a cosine, +inf otherwise: median_per_seed)."""
    return median_per_seed(runs, key, worst=-1.0 if key.endswith("/cos") else math.inf)


def off_chance_share(run: Run, key: str) -> float:
    """The share of the steps that measured `key` at which the run's validation accuracy
    (its latest evaluation at or before the step) was above chance + CHANCE_MARGIN."""
    steps = [int(row["step"]) for row in run.measure_rows if key in row]
    val = run.metrics.dropna(subset=["val/acc"]).set_index("step")["val/acc"].sort_index()
    if not steps or val.empty:
        return 0.0
    at = [val[val.index <= s].iloc[-1] if (val.index <= s).any() else CHANCE for s in steps]
    return sum(v > CHANCE + CHANCE_MARGIN for v in at) / len(steps)


def seed_cells(values: Sequence[float]) -> str:
    return cell(spread(values), 3) if values else "-"


def measures_claims(group: Group) -> list[dict[str, Any]]:
    """Fig. 3 (gradient ICS, cos and l2 per layer) and Fig. 4 (landscape), BN vs standard, at
    this group's rate: one compare per claim (VERDICT_RULE)."""
    bn, std = group.nets.get("bn", []), group.nets.get("none", [])
    rows = []

    def add(claim: str, paper: str, ours: str, result: Verdict) -> None:
        rows.append({"claim": f"{claim} (lr {group.lr:g})", "paper": paper, "ours": ours,
                     "verdict": result[0], "dataset": group.dataset, "source": SANTURKAR,
                     "evidence": result[1]})

    layers = ics_layers(bn + std)
    ran = ("BN and standard both ran", bool(bn and std))
    for metric, better, what in (("cos", "higher", "cos(G, G')"), ("l2", "lower", "||G - G'||")):
        for i in layers or [None]:
            claim = f"BN does not reduce gradient ICS: {what} (layer {i})" if i else \
                f"BN does not reduce gradient ICS: {what}"
            if i is None:
                add(claim, ICS_PAPER, "no gradient ICS measured (measures.ics)", (
                    "not measured", {"rule": "no gradient ICS measured", "preconditions": [
                        {"check": "gradient ICS measured for BN and standard", "met": False}]}))
                continue
            b, s = measured(bn, f"ics/h{i}/{metric}"), measured(std, f"ics/h{i}/{metric}")
            add(claim, ICS_PAPER, f"median {what} over the measured steps: standard "
                f"{seed_cells(s)} vs BN {seed_cells(b)} ({'higher' if metric == 'cos' else 'lower'}"
                " = less ICS); holds = BN's decidedly worse, inconclusive = similar",
                compare(("standard", s), ("BN", b), better, preconditions=[
                    ran, (f"{what} measured for both", bool(b and s))]))
    gate = (f"every standard seed above chance validation accuracy ({CHANCE + CHANCE_MARGIN:g})"
            f" at more than half of its measured steps (a net at chance has a flat loss along a "
            "vanishing gradient: not the paper's comparison)",
            bool(std) and all(off_chance_share(r, "landscape/beta") > 0.5 for r in std))
    for key, what, paper in LANDSCAPE_CLAIMS:
        claim = f"BN makes the landscape smoother: smaller {what}"
        b, s = measured(bn, key), measured(std, key)
        add(claim, paper, f"median over the measured steps: BN {seed_cells(b)} vs standard "
            f"{seed_cells(s)}", compare(("BN", b), ("standard", s), "lower", preconditions=[
                ran, (f"{key} measured for both", bool(b and s)), gate]))
    return rows


def measures_figures(groups: list[Group]) -> dict[str, plt.Figure]:
    """Figs. 3-4 analog of one dataset's groups (those with measures), by file stem."""
    dataset = groups[0].dataset
    measured_groups = [g for g in groups if any(not r.measures.empty for runs in g.nets.values()
                                                for r in runs)]
    if not measured_groups:
        return {}
    return {f"santurkar_{dataset}_measures": measures_figure(
        [(g.label, g.nets) for g in measured_groups], {n: NETS[n] for n in ("none", "bn")},
        f"Santurkar et al. Figs. 3-4 analog on {dataset}: gradient ICS and the loss landscape "
        "along the gradient, mean over seeds, band min..max",
        lead=("val/acc", "validation accuracy", False))}


def ics_and_landscape(groups: list[Group]) -> dict[str, Any]:
    """Sec. 2.2 (Fig. 3: gradient ICS) and 3.1 (Fig. 4: the landscape), BN vs standard."""
    return {"groups": [{"lr": g.lr, "claims": measures_claims(g)} for g in groups]}


@dataclass(frozen=True)
class Section:
    """One part of the paper: its numbers (claims under "groups"[i]["claims"]) and figures
    from one dataset's Groups."""

    name: str  # its key in santurkar_<dataset>.json
    numbers: Callable[[list[Group]], dict[str, Any]]
    figures: Callable[[list[Group]], dict[str, plt.Figure]]


SECTIONS = (Section("distributional_shift", distributional_shift, shift_figures),
            Section("ics_and_landscape", ics_and_landscape, measures_figures))


# ---- outputs ----

def csv_rows(dataset: str, numbers: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for g in numbers["groups"]:
        for norm, v in g["nets"].items():
            row = {"dataset": dataset, "lr": g["lr"], "norm": norm, "seeds": v["seeds"],
                   "diverged": v["diverged"]}
            for key, stat in v.items():
                if isinstance(stat, dict) and "mean" in stat:
                    row |= {f"{key}_{s}": round(x, 6) for s, x in stat.items()}
            rows.append(row)
    return pd.DataFrame(rows)


def clean(x: Any) -> Any:
    """JSON: NaN -> null."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 6)
    return x


def claims_rule() -> str:
    """The verdict rule and every definition and threshold the verdicts use."""
    return (f"{VERDICT_RULE} Training accuracy = mean over a seed's evaluations after step 0 "
            "of the training mini-batch accuracy (a diverged seed scores "
            f"{CHANCE:g} after it diverged). Shift = {SHIFT} of the training network: W1 "
            "between each unit's input distribution on fixed probe images after step t - 1 "
            "and after step t (two successive steps, Santurkar et al.'s Fig. 8), t every "
            "evaluated step, summed over units / the summed per-unit std at t - 1; a seed's "
            f"mean over its evaluations ({DRIFT}, the drift over a whole evaluation interval, "
            "is tabled and drawn, never compared: noise injected at every step does not grow "
            "with the interval, a net's drift does). Margins: about as well / comparably = at "
            f"most {ABOUT_AS_WELL:g} below BN (compare with margin -{ABOUT_AS_WELL:g}; noisy BN's "
            "'about as well' also at most that far above: both bounds must hold); "
            f"marginal = BN's shift within {MARGINAL:g}..{1 / MARGINAL:g} x the standard "
            "net's (two comparisons per layer); left chance = every seed's max validation "
            f"accuracy above {CHANCE + CHANCE_MARGIN:g}; the noise-only claim: holds when "
            "every seed stays at chance, does not hold when none does. Gradient ICS and "
            "landscape (Figs. 3-4): a seed's number is the median of the measure over its "
            "measured steps (a non-finite point counts as the worst: -1 for a cosine, +inf "
            "otherwise); gradient ICS: standard vs BN per measured layer, cos(G, G') and "
            "||G - G'|| each (holds = BN's decidedly worse, does not hold = BN's decidedly "
            "better, inconclusive = similar); landscape: BN's value below standard's, not "
            "measured unless the standard net was off chance at most of its measured steps. "
            "Datasets as named in the runs (cifar10-jpeg is the JPEG mirror, not CIFAR-10).")


def claims_markdown(all_claims: list[dict[str, Any]]) -> str:
    lines = [f"# {TITLE}", "",
             "| claim | paper | dataset | ours (mean (min..max) over seeds) | test | verdict |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['dataset']} | {c['ours']} | "
              f"{test_text(c)} | {c['verdict']} |" for c in all_claims]
    return "\n".join([*lines, "", f"Verdict rule: {claims_rule()}", ""])


def test_text(claim: dict[str, Any]) -> str:
    """bnrepro.claims.evidence_text, with each part's test for a claim over parts."""
    parts = (claim.get("evidence") or {}).get("parts")
    if not parts:
        return evidence_text(claim)
    return f"{claim['evidence']['rule']}: " + "; ".join(
        f"{name} {part['verdict']} ({evidence_text({'evidence': part})})"
        for name, part in parts.items())


def setup_words(groups: list[Group]) -> str:
    """The profile the runs used, in words (claims file `setup`)."""
    runs = [r for rs in groups[0].nets.values() for r in rs]
    cfg = runs[0].config
    net = (f"MLP {list(cfg.model.hidden)}" if cfg.model.kind == "mlp" else
           f"{cfg.model.kind} x{cfg.model.get('width_multiplier', 1):g}")
    return (f"{groups[0].dataset}: {net} {cfg.model.activation}, {cfg.trainer.max_steps} steps "
            f"of {cfg.trainer.batch_size}, plain SGD at lr "
            f"{', '.join(f'{g.lr:g}' for g in groups)}, "
            f"{len({seed_of(r) for r in runs})} seeds")


def dataset_numbers(dataset: str, groups: list[Group]) -> dict[str, Any]:
    """One dataset's numbers (santurkar_<dataset>.json): its setup, definitions and sections."""
    numbers = {"dataset": dataset, "setup": setup_words(groups),
               "learning_rates": [g.lr for g in groups],
               "eval_steps": [int(s) for s in groups[0].steps],
               "definitions": {"doc": __doc__, "verdict_rule": VERDICT_RULE,
                               "shift": SHIFT, "drift": DRIFT, "chance": CHANCE,
                               "about_as_well": ABOUT_AS_WELL, "marginal": MARGINAL}}
    for section in SECTIONS:
        numbers[section.name] = section.numbers(groups)
    return numbers


def analyse(roots: Sequence[Path]) -> dict[str, Any]:
    """The runs under `roots`, by dataset: "datasets" (dataset -> its numbers), "claims" (all
    datasets' claim rows, in order) and "groups" (dataset -> its Groups). Raises
    SanturkarError when there are no runs or a dataset's runs are not one experiment."""
    groups = load_groups(roots)
    everything = {dataset: dataset_numbers(dataset, gs) for dataset, gs in groups.items()}
    all_claims = [c for numbers in everything.values() for section in SECTIONS
                  for g in numbers[section.name].get("groups", []) for c in g.get("claims", [])]
    return {"datasets": everything, "claims": all_claims, "groups": groups}


def figures(result: dict[str, Any]) -> dict[str, plt.Figure]:
    """Every dataset's figures by file stem (SECTIONS' figures)."""
    return {name: fig for groups in result["groups"].values() for section in SECTIONS
            for name, fig in section.figures(groups).items()}


def write(result: dict[str, Any], out: Path) -> None:
    """The tables and claims files into `out` (after the figures: the claims file lists the
    dataset's figures found there)."""
    groups = result["groups"]
    for dataset, numbers in result["datasets"].items():
        atomic_write_text(out / f"santurkar_{dataset}.csv",
                          csv_rows(dataset, numbers["distributional_shift"]).to_csv(index=False))
        atomic_write_json(out / f"santurkar_{dataset}.json", clean(numbers))
    atomic_write_text(out / "santurkar_claims.md", claims_markdown(result["claims"]))
    drawn = sorted(p.name for p in out.glob("santurkar_*.png")
                   if any(p.name.startswith((f"santurkar_{d}.", f"santurkar_{d}_"))
                          for d in groups))
    write_claims(out / "santurkar_claims.json", result["claims"],
                 experiment=", ".join(EXPERIMENTS), title=TITLE, make="make santurkar",
                 setup="; ".join(setup_words(g) for g in groups.values()), figures=drawn,
                 verdict_rule=claims_rule(),
                 summaries=[r.summary for gs in groups.values() for g in gs
                            for rs in g.nets.values() for r in rs])


def save_figures(drawn: dict[str, plt.Figure], out: Path) -> None:
    """Each figure as <out>/<stem>.png and .pdf, then closed."""
    for name, fig in drawn.items():
        atomic_save_figure(fig, out / name)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnrepro.analyse santurkar",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+",
                        help="run stores, e.g. runs/santurkar_mnist runs/santurkar_cifar10-jpeg")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--no-figures", action="store_true",
                        help="numbers, tables and claims only (drawing is most of the time)")
    wandb_figures.add_flag(parser)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only, no display
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            result = analyse(args.run_dirs)
            args.out.mkdir(parents=True, exist_ok=True)
            if not args.no_figures:
                save_figures(figures(result), args.out)
            write(result, args.out)
    except SanturkarError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.wandb and not args.no_figures:
        for dataset, groups in result["groups"].items():
            wandb_figures.publish(True, groups[0].config, sorted(args.out.glob(
                f"santurkar_{dataset}*.png")), wandb_dir=args.run_dirs[0], claims=[
                c for c in result["claims"] if c["dataset"] == dataset])
    for dataset in result["datasets"]:
        print(f"wrote {args.out}/santurkar_{dataset}[_lp][_distributions][_measures].png/.pdf, "
              ".csv, .json")
    print(f"wrote {args.out}/santurkar_claims.md and .json")
    for c in result["claims"]:
        print(f"  [{c['verdict']}] {c['dataset']}: {c['claim']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
