"""Batch-size dependence of the norms (issue 13), in the style of Wu & He (2018), Fig. 1.

    python -m bnrepro.analyse batchsize RUNS [RUNS ...] [--lr-runs LR_RUNS ...] [--out results]

Reads the run store only (bnrepro.run.runs.find_runs): every run of experiment batchsize_mnist or
batchsize_cifar below the RUNS folders, completed or diverged (others are named in a warning and
left out). Runs are grouped by dataset.name (cifar10-jpeg is labelled so everywhere: it is not
CIFAR-10), then by model.norm and trainer.batch_size; the seeds of a cell are its replicates.

Definitions (also in each JSON's "definitions"):
- The reported number is the FINAL test error of each seed, 1 - test/acc at its last
  evaluation (step max_steps; every run sees the same number of training examples, as Wu & He
  train for a fixed number of epochs and report the final error). A diverged seed scores chance,
  error 0.9, for every number. Per cell: mean over seeds and the min..max band.
- The train/inference gap (probe.inference_gap): for norms with batch statistics, the same final
  test images scored by the configured inference (test/acc: BN with Alg. 2's population
  statistics, Batch Renorm with its moving averages), by the training network on test
  mini-batches of the run's batch size (test/acc_batch) and by the moving averages
  (test/acc_running); see src/bnrepro/measures/evaluation.py.
- Learning-rate check (--lr-runs): runs at trainer.batch_size = batch_scaling.reference_batch
  with several optim.lr; per candidate rate, the mean over norms of the seed-mean FINAL
  validation accuracy (a diverged seed scoring chance, 0.1). The best candidate must equal the
  experiment's batch_scaling.base_lr. Validation only, never test.

Claims (results/batchsize_claims.md), each decided per dataset by an explicit rule; SMALLEST is
the smallest batch size measured, REFERENCE_BATCH = 32 (Wu & He's typical batch):
  1. BN's error rises as the batch shrinks: err(BN, SMALLEST) > err(BN, 32).
  2. At the smallest batch GN beats BN: err(GN, SMALLEST) < err(BN, SMALLEST).
  3. GN's error varies less across batch sizes than BN's: over the batch sizes <= 32 (Wu & He's
     range), max - min of GN's seed-mean errors < BN's. "holds" also needs the difference to
     exceed the noise (the mean over those GN and BN cells of their seeds' max - min); "mixed"
     if it does not.
  4. At batch 32 GN is comparable to BN: |err(GN, 32) - err(BN, 32)| <= COMPARABLE (1 point);
     "mixed" if it is larger but the seed ranges overlap; "does not hold" if larger and the
     ranges are disjoint.
  5. Batch Renorm recovers part of BN's small-batch loss: err(BRN, SMALLEST) < err(BN, SMALLEST).
  6, 7. BN's fixed-statistics inference is worse than its training network at the smallest
     batch: per seed, err(inference) - err(batch statistics) > 0, for Alg. 2 (test/acc) and
     for the moving averages (test/acc_running) in two rows.
  8. BN's gap (Alg. 2 minus batch statistics) is larger at the smallest batch than at 32.
  9. (with --lr-runs) the base rate is the best candidate on validation (our check).
Verdict rule for the comparisons "a < b" of cell errors (1, 2, 5, 8): holds = the seed means
compare as claimed AND the seed ranges do not overlap (every seed of one below every seed of
the other); mixed = the means compare as claimed but the ranges overlap; does not hold = the
means do not. For per-seed differences (6, 7): holds = the mean difference and every seed's
have the claimed sign; mixed = only the mean has it. A claim whose cells were not run is "not
measured".

Writes to --out: batchsize_<dataset>.png/.pdf (a: test error vs batch size per norm, b: BN's
error three ways, c: Wu & He's ImageNet numbers, labelled as theirs), batchsize_<dataset>.csv
(one row per norm and batch size), batchsize_<dataset>.json (every number), with --lr-runs
batchsize_lr_<dataset>.csv, and batchsize_claims.md and .json (all datasets). Bad input prints
one `error:` line and exits with 2.

In Python: `analyse(roots, lr_roots) -> Result` (every number, table and claim; writes
nothing), `figures(result)` ({file stem: figure}), `write(result, out)` (the files above).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bnrepro.analysis import command, wandb_figures
from bnrepro.analysis.seeds import differing_keys, flat_config, matches, spread, spread_text
from bnrepro.atomic import atomic_write_json, atomic_write_text
from bnrepro.claims import verdict, write_claims
from bnrepro.run.runs import find_runs

EXPERIMENTS = ("batchsize_mnist", "batchsize_cifar")  # config `name` of the runs
NORM_ORDER = ["bn", "brn", "gn", "ln", "none"]  # plotting order; other norms come after
LABELS = {"bn": "BN", "brn": "Batch Renorm", "gn": "GN", "ln": "LN", "none": "no norm"}
COLORS = {"bn": "tab:blue", "brn": "tab:purple", "gn": "tab:green", "ln": "tab:orange",
          "none": "black"}
STATUSES = ("completed", "diverged")
CHANCE_ERROR = 0.9  # 1 - 1/10 classes: a diverged seed's error
CHANCE_VAL_ACC = 0.1  # a diverged seed's validation accuracy in the learning-rate check
REFERENCE_BATCH = 32  # Wu & He's typical batch (images per GPU); claims compare against it
COMPARABLE = 0.01  # "comparably good" = seed-mean errors within 1 point
# The three test numbers of the train/inference gap: metrics key -> label.
GAP_KEYS = {"test/acc": "Alg. 2 (population statistics): the configured inference",
            "test/acc_running": "moving averages (EMA)",
            "test/acc_batch": "batch statistics (the training network)"}
GAP_COLUMN = {"test/acc": "err", "test/acc_running": "err_running", "test/acc_batch": "err_batch"}
# Keys allowed to differ between the runs of one dataset: the sweep axes, what the experiment
# derives from the batch size, and keys that never change a trajectory. "x." = all under x.
AXES = ("seed", "model.norm", "trainer.batch_size")
DERIVED = ("optim.lr", "trainer.max_steps", "trainer.eval_every", "trainer.test_every",
           "trainer.population_batches", "model.brn.warmup_steps", "model.brn.relax_steps")
NON_TRAJECTORY = ("fresh", "trainer.progress", "trainer.resume", "trainer.checkpoint_every",
                  "trainer.device", "trainer.threads", "trainer.eval_memory_mb",
                  "dataset.root", "dataset.mirror", "logger.", "hydra.")
# Wu & He (2018), Table 2 (ResNet-50 on ImageNet, validation error %, by images per GPU; 8 GPUs,
# BN statistics per GPU). Theirs, not ours: drawn in their own panel, labelled so.
WU_HE_TABLE2 = {"BN": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
                "GN": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}
WU_HE_ABSTRACT = ("\"BN's error increases rapidly when the batch size becomes smaller\"; \"GN's "
                  "computation is independent of batch sizes, and its accuracy is stable in a "
                  "wide range of batch sizes. On ResNet-50 trained in ImageNet, GN has 10.6% "
                  "lower error than its BN counterpart when using a batch size of 2; when using "
                  "typical batch sizes, GN is comparably good with BN\" (Wu & He 2018, abstract)")
VERDICT_RULE = (
    "comparisons of cell errors: holds = the seed means compare as claimed AND the seed ranges "
    "do not overlap; mixed = the means compare as claimed but the ranges overlap; does not hold "
    "= the means do not. Per-seed differences: holds = the mean and every seed have the claimed "
    "sign; mixed = only the mean. GN's variation: holds = smaller than BN's by more than the "
    "noise (mean seed range of the cells involved), mixed = smaller by less. Comparable: |mean "
    f"difference| <= {COMPARABLE:g} holds; larger with overlapping ranges mixed; larger with "
    "disjoint ranges does not hold. Cells not run: not measured. A diverged seed's error is "
    f"{CHANCE_ERROR:g} (chance).")


TITLE = "Batch size: BN and its alternatives (Wu & He 2018; Batch Renorm, Ioffe 2017)"
IGNORED = (*AXES, *DERIVED, *NON_TRAJECTORY)  # the keys that may differ within a dataset


class BatchsizeError(command.AnalysisError):
    """Bad input: reported as one `error:` line, exit code 2."""


@dataclass
class Result:
    """What `analyse` found, per dataset (sorted by name)."""
    runs: list[dict[str, Any]]  # every run analysed (`load`)
    tables: dict[str, dict[str, dict[int, dict[str, Any]]]]  # norm -> batch size -> cell
    numbers: dict[str, dict[str, Any]]  # batchsize_<dataset>.json
    claims: list[dict[str, str]]  # every dataset's claims, in order (batchsize_claims.*)
    lr_tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # batchsize_lr_*.csv
    wandb_dir: Path = Path("runs")  # where a --wandb figures run writes its files


def load(roots: Sequence[Path]) -> list[dict[str, Any]]:
    """The batch-size runs below `roots` (completed or diverged) as flat dicts."""
    runs = []
    for run in find_runs(roots, statuses=STATUSES):
        config = flat_config(run)
        if config.get("name") in EXPERIMENTS:
            runs.append({"run": run, "config": config, "dataset": config["dataset.name"],
                         "norm": config["model.norm"],
                         "batch": int(config["trainer.batch_size"]),
                         "seed": config["seed"], "status": run.summary["status"]})
    return runs


def check_protocol(runs: list[dict[str, Any]]) -> None:
    """Refuse runs that are not one experiment: within a dataset every key but the axes, the
    derived ones and non-trajectory keys must agree, and the rate must be the scaled one."""
    for dataset in sorted({r["dataset"] for r in runs}):
        group = [r for r in runs if r["dataset"] == dataset]
        if differing := differing_keys([r["config"] for r in group], IGNORED):
            raise BatchsizeError(f"{dataset} runs differ in {'; '.join(differing)}: not one "
                                 "batch-size experiment; give one experiment's folders")
        for r in group:
            c = r["config"]
            scaled = (c["batch_scaling.base_lr"] * r["batch"]
                      / c["batch_scaling.reference_batch"])
            if not math.isclose(c["optim.lr"], scaled, rel_tol=1e-9):
                raise BatchsizeError(
                    f"{r['run'].dir} trains at optim.lr={c['optim.lr']:g}, not base_lr * batch "
                    f"/ reference_batch = {scaled:g}: a learning-rate candidate? (--lr-runs)")


def final_numbers(r: dict[str, Any]) -> dict[str, float]:
    """A seed's final test errors: err, and err_batch, err_running where logged."""
    if r["status"] == "diverged":
        keys = GAP_KEYS if "test/acc_batch" in r["run"].metrics else ("test/acc",)
        return {GAP_COLUMN[k]: CHANCE_ERROR for k in keys}
    m = r["run"].metrics
    tested = m.dropna(subset=["test/acc"]) if "test/acc" in m else m.iloc[:0]
    max_steps = int(r["config"]["trainer.max_steps"])
    if not len(tested) or int(tested["step"].iloc[-1]) != max_steps:
        raise BatchsizeError(f"{r['run'].dir} is completed but has no test score at its last "
                             f"step {max_steps}")
    last = tested.iloc[-1]
    return {GAP_COLUMN[k]: 1.0 - float(last[k]) for k in GAP_KEYS
            if k in last and pd.notna(last[k])}


def describe(cell: list[dict[str, Any]]) -> dict[str, Any]:
    """One (norm, batch size) cell: per-seed numbers and their mean, min, max."""
    seeds = sorted(cell, key=lambda r: r["seed"])
    per_seed = [{"seed": r["seed"], "status": r["status"], "run_dir": str(r["run"].dir),
                 **final_numbers(r)} for r in seeds]
    out: dict[str, Any] = {
        "seeds": len(seeds), "diverged": sum(r["status"] == "diverged" for r in seeds),
        "lr": float(seeds[0]["config"]["optim.lr"]),
        "steps": int(seeds[0]["config"]["trainer.max_steps"]), "per_seed": per_seed}
    for column in GAP_COLUMN.values():
        values = [s[column] for s in per_seed if column in s]
        if len(values) == len(per_seed):
            out |= spread(values, column)
    return out


def cells_of(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """norm -> batch size -> cell."""
    norms = sorted({r["norm"] for r in runs},
                   key=lambda n: (NORM_ORDER.index(n) if n in NORM_ORDER else 99, n))
    table: dict[str, dict[int, dict[str, Any]]] = {}
    for norm in norms:
        batches = sorted({r["batch"] for r in runs if r["norm"] == norm})
        table[norm] = {b: describe([r for r in runs if r["norm"] == norm and r["batch"] == b])
                       for b in batches}
    return table


def seeds_of(cell: dict[str, Any], column: str = "err") -> np.ndarray:
    return np.array([s[column] for s in cell["per_seed"]], dtype=float)


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def cell_text(cell: dict[str, Any], column: str = "err") -> str:
    """"mean (min..max)" of a cell's seeds, in percent."""
    return spread_text(cell, column, pct)


def gap_text(gaps: np.ndarray) -> str:
    """"mean (min..max)" of per-seed differences, in percent."""
    return spread_text(spread(gaps, "gap"), "gap", pct)


def source_of(claim: str) -> str:
    """bnrepro.claims SOURCES: Batch Renorm and the train/inference discrepancy it addresses
    are Ioffe (2017)'s; the rest Wu & He (2018)'s."""
    return "Ioffe (2017)" if claim.startswith(("Batch Renorm", "BN's train/inference")) or \
        " inference errs more" in claim else "Wu & He (2018)"


def claims(dataset: str, table: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, str]]:
    """The claims of the module docstring on one dataset, each with its computed verdict."""
    rows: list[dict[str, str]] = []
    batches = sorted({b for cells in table.values() for b in cells})
    smallest = batches[0] if batches else None

    def add(claim: str, paper: str, ours: str, result: str) -> None:
        rows.append({"dataset": dataset, "claim": claim, "paper": paper, "ours": ours,
                     "verdict": result, "source": source_of(claim)})

    def cell(norm: str, batch: int | None, column: str = "err") -> dict[str, Any] | None:
        c = table.get(norm, {}).get(batch)
        return c if c is not None and f"{column}_mean" in c else None

    def lower(a: dict[str, Any], b: dict[str, Any], ca: str = "err", cb: str = "err") -> str:
        """Cell a's errors below cell b's (means; and every seed of a below every seed of b)."""
        return verdict(a[f"{ca}_mean"] < b[f"{cb}_mean"], bool(seeds_of(a, ca).max()
                                                               < seeds_of(b, cb).min()))

    def unmeasured(claim: str, paper: str, what: str) -> None:
        add(claim, paper, f"not run: {what}", "not measured")

    def versus(claim: str, paper: str, norm: str, other: str, batch: int | None,
               judge: Callable[[dict[str, Any], dict[str, Any]], str]) -> None:
        """A claim about `norm`'s error against `other`'s at `batch`: judge(cell, other's)."""
        a, b = cell(norm, batch), cell(other, batch)
        if a is None or b is None:
            unmeasured(claim, paper, f"{LABELS[norm]} and {LABELS[other]} at batch {batch}")
        else:
            add(claim, paper, f"{LABELS[norm]} {cell_text(a)} vs {LABELS[other]} "
                f"{cell_text(b)}", judge(a, b))

    claim = f"BN's error rises as the batch shrinks (batch {smallest} vs {REFERENCE_BATCH})"
    paper = ("\"BN's error increases rapidly when the batch size becomes smaller\" (abstract); "
             "Table 2: 23.6% at 32, 34.7% at 2 images per GPU")
    small, ref = cell("bn", smallest), cell("bn", REFERENCE_BATCH)
    if small is None or ref is None or smallest == REFERENCE_BATCH:
        unmeasured(claim, paper, f"BN at batch {smallest} and {REFERENCE_BATCH}")
    else:
        add(claim, paper, f"BN {cell_text(small)} at batch {smallest} vs {cell_text(ref)} at "
            f"{REFERENCE_BATCH}", lower(ref, small))

    versus(f"at the smallest batch ({smallest}) GN's error is below BN's",
           "\"GN has 10.6% lower error than its BN counterpart when using a batch size of 2\""
           " (abstract); Table 2: 24.1% vs 34.7%", "gn", "bn", smallest, lower)

    claim = (f"GN's error varies less across batch sizes than BN's (batch sizes <= "
             f"{REFERENCE_BATCH})")
    paper = ("\"its accuracy is stable in a wide range of batch sizes\" (abstract); Table 2: GN "
             "24.0-24.2%, BN 23.6-34.7% over 2..32")
    within = [b for b in batches if b <= REFERENCE_BATCH]
    gn_cells = [cell("gn", b) for b in within]
    bn_cells = [cell("bn", b) for b in within]
    if len(within) < 2 or any(c is None for c in gn_cells + bn_cells):
        unmeasured(claim, paper, f"GN and BN at two or more batch sizes <= {REFERENCE_BATCH}")
    else:
        def variation(cells: list[dict[str, Any]]) -> float:
            means = [c["err_mean"] for c in cells]
            return max(means) - min(means)

        v_gn, v_bn = variation(gn_cells), variation(bn_cells)
        noise = float(np.mean([c["err_max"] - c["err_min"] for c in gn_cells + bn_cells]))
        add(claim, paper, f"max - min of the seed-mean errors over batch "
            f"{', '.join(map(str, within))}: GN {pct(v_gn)}, BN {pct(v_bn)}; noise (mean seed "
            f"range) {pct(noise)}", verdict(v_gn < v_bn, v_bn - v_gn > noise))

    versus(f"at batch {REFERENCE_BATCH} GN is comparable to BN (within {pct(COMPARABLE)})",
           "\"when using typical batch sizes, GN is comparably good with BN\" (abstract); "
           "Table 2: 24.1% vs 23.6% at 32", "gn", "bn", REFERENCE_BATCH, comparable)

    versus(f"Batch Renorm recovers part of BN's loss at the smallest batch ({smallest})",
           "Ioffe (2017, abstract): Batch Renorm models \"perform substantially better than "
           "batchnorm when training with small or non-i.i.d. minibatches\"", "brn", "bn",
           smallest, lower)

    paper = ("Ioffe (2017, abstract): BN's small-batch loss is hypothesised to come from "
             "\"different activations being produced between training and inference\"; Wu & He:"
             " \"caused by inaccurate batch statistics estimation\"")
    for column, name in (("err", "Alg. 2"), ("err_running", "moving-average")):
        claim = (f"BN's {name} inference errs more than its training network (batch "
                 f"statistics) at the smallest batch ({smallest})")
        c = cell("bn", smallest, column)
        if c is None or "err_batch_mean" not in c:
            unmeasured(claim, paper, f"BN at batch {smallest} with probe.inference_gap")
            continue
        gaps = seeds_of(c, column) - seeds_of(c, "err_batch")
        add(claim, paper, f"{name} {cell_text(c, column)} vs batch statistics "
            f"{cell_text(c, 'err_batch')}; per-seed difference {gap_text(gaps)}",
            verdict(gaps.mean() > 0, bool((gaps > 0).all())))

    claim = (f"BN's train/inference gap (Alg. 2 minus batch statistics) is larger at batch "
             f"{smallest} than at {REFERENCE_BATCH}")
    small, ref = cell("bn", smallest, "err_batch"), cell("bn", REFERENCE_BATCH, "err_batch")
    if small is None or ref is None or smallest == REFERENCE_BATCH:
        unmeasured(claim, paper, f"BN at batch {smallest} and {REFERENCE_BATCH} with "
                   "probe.inference_gap")
    else:
        g_small = seeds_of(small) - seeds_of(small, "err_batch")
        g_ref = seeds_of(ref) - seeds_of(ref, "err_batch")
        add(claim, paper, f"gap {gap_text(g_small)} at batch {smallest} vs {gap_text(g_ref)} "
            f"at {REFERENCE_BATCH}",
            verdict(g_small.mean() > g_ref.mean(), bool(g_small.min() > g_ref.max())))
    return rows


def comparable(gn: dict[str, Any], bn: dict[str, Any]) -> str:
    """Claim 4's verdict: seed-mean errors within COMPARABLE holds; further apart, "mixed"
    while the seed ranges overlap and "does not hold" once they are disjoint."""
    close = abs(gn["err_mean"] - bn["err_mean"]) <= COMPARABLE
    disjoint = bool(seeds_of(gn).max() < seeds_of(bn).min()
                    or seeds_of(bn).max() < seeds_of(gn).min())
    return "holds" if close else "does not hold" if disjoint else "mixed"


def lr_selection(roots: Sequence[Path], dataset: str, base_lr: float, reference_batch: int
                 ) -> tuple[dict[str, Any] | None, dict[str, str], pd.DataFrame | None]:
    """The learning-rate check (module docstring), its claim row and its runs' table
    (batchsize_lr_<dataset>.csv; None without learning-rate runs)."""
    claim = "base lr is the best candidate on validation at the reference batch (our check)"
    paper = "Goyal et al. / Wu & He: 0.1 x N / 32 (their rate, for ResNet-50 on ImageNet)"
    runs = [r for r in find_runs(roots, statuses=STATUSES)
            if r.config.get("name") in EXPERIMENTS and r.config.dataset.name == dataset
            and int(r.config.trainer.batch_size) == reference_batch]
    if not runs:
        return None, {"dataset": dataset, "claim": claim, "paper": paper,
                      "ours": f"no learning-rate runs on {dataset} at batch {reference_batch}",
                      "verdict": "not measured", "source": "ours"}, None
    rows = [{"lr": float(r.config.optim.lr), "norm": r.config.model.norm, "seed": r.config.seed,
             "status": r.summary["status"],
             "final_val_acc": (float(r.summary["final_val_acc"]) if r.summary["status"]
                               == "completed" else CHANCE_VAL_ACC), "run_dir": str(r.dir)}
            for r in runs]
    df = pd.DataFrame(rows).sort_values(["lr", "norm", "seed"])
    # per candidate: mean over norms of the seed-mean final validation accuracy
    score = df.groupby(["lr", "norm"])["final_val_acc"].mean().groupby("lr").mean()
    best = float(score.idxmax())
    ok = math.isclose(best, base_lr, rel_tol=1e-9)
    info = {"candidates": {f"{lr:g}": float(s) for lr, s in score.items()}, "best_lr": best,
            "base_lr": base_lr, "base_lr_is_best": ok, "norms": sorted(set(df["norm"])),
            "runs": rows}
    ours = (f"base_lr {base_lr:g}; mean final val acc over norms: "
            + ", ".join(f"lr {lr:g}: {s:.4f}" for lr, s in score.items())
            + f" -> best {best:g}")
    return info, {"dataset": dataset, "claim": claim, "paper": paper, "ours": ours,
                  "verdict": "holds" if ok else "does not hold", "source": "ours"}, df


def figures(result: Result) -> dict[str, Figure]:
    """batchsize_<dataset> -> its figure (`figure`), per dataset."""
    return {f"batchsize_{d}": figure(d, table) for d, table in result.tables.items()}


def figure(dataset: str, table: dict[str, dict[int, dict[str, Any]]]) -> Figure:
    """(a) test error vs batch size per norm, (b) BN's error three ways, (c) Wu & He's
    ImageNet numbers, labelled as theirs."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [5, 5, 3]})
    batches = sorted({b for cells in table.values() for b in cells})

    def band(ax: plt.Axes, cells: dict[int, dict[str, Any]], column: str, color: str,
             label: str, style: str = "-") -> None:
        xs = [b for b, c in cells.items() if f"{column}_mean" in c]
        if not xs:
            return
        mean = [100 * cells[b][f"{column}_mean"] for b in xs]
        ax.plot(xs, mean, style, color=color, marker="o", ms=4, label=label)
        ax.fill_between(xs, [100 * cells[b][f"{column}_min"] for b in xs],
                        [100 * cells[b][f"{column}_max"] for b in xs], color=color, alpha=0.15)

    ax = axes[0]
    for norm, cells in table.items():
        n = max(c["seeds"] for c in cells.values())
        dead = sum(c["diverged"] for c in cells.values())
        band(ax, cells, "err", COLORS.get(norm, "gray"),
             f"{LABELS.get(norm, norm)} ({n} seeds" + (f", {dead} runs diverged)" if dead
                                                        else ")"))
    ax.set(title=f"(a) {dataset}: final test error vs batch size", ylabel="test error (%)")
    ax = axes[1]
    if "bn" in table:
        for column, color, style in (("err", "tab:blue", "-"), ("err_running", "tab:red", "--"),
                                     ("err_batch", "tab:gray", ":")):
            key = next(k for k, v in GAP_COLUMN.items() if v == column)
            band(ax, table["bn"], column, color, GAP_KEYS[key], style)
    ax.set(title=f"(b) {dataset}: BN's test error three ways", ylabel="test error (%)")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size (examples per mini-batch; lr scaled linearly)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="mean over seeds, band min..max", title_fontsize=7)
    ax = axes[2]
    for name, color in (("BN", "tab:blue"), ("GN", "tab:green")):
        xs = sorted(WU_HE_TABLE2[name])
        ax.plot(xs, [WU_HE_TABLE2[name][b] for b in xs], "s-", color=color, ms=4, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(WU_HE_TABLE2["BN"]), [str(b) for b in sorted(WU_HE_TABLE2["BN"])])
    ax.set(title="(c) THEIRS: Wu & He 2018, Table 2\nResNet-50, ImageNet val error",
           xlabel="images per GPU", ylabel="error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def setup_line(dataset: str, shared: dict[str, Any], table: dict[str, dict[int, Any]]) -> str:
    """One sentence saying what the numbers of `dataset` are from."""
    batches = sorted({b for cells in table.values() for b in cells})
    seeds = max(c["seeds"] for cells in table.values() for c in cells.values())
    test = shared.get("trainer.test_examples")
    return (f"{dataset}: model {shared.get('model.kind')} ({shared.get('model.activation')}), "
            f"{shared['batch_scaling.examples']} training examples per run at every batch size "
            f"({', '.join(map(str, batches))}), lr = {shared['batch_scaling.base_lr']:g} x batch"
            f" / {shared['batch_scaling.reference_batch']}, up to {seeds} seeds; final test "
            f"error on {'all' if test is None else f'a fixed subset of {test}'} test images")


def csv_rows(table: dict[str, dict[int, dict[str, Any]]]) -> pd.DataFrame:
    rows = []
    for norm, cells in table.items():
        for batch, c in cells.items():
            row = {"norm": norm, "batch_size": batch, "lr": c["lr"], "steps": c["steps"],
                   "seeds": c["seeds"], "diverged": c["diverged"]}
            for column in GAP_COLUMN.values():
                for stat in ("mean", "min", "max"):
                    value = c.get(f"{column}_{stat}")
                    row[f"{column}_{stat}"] = "" if value is None else round(value, 6)
            rows.append(row)
    return pd.DataFrame(rows)


def analyse(roots: Sequence[Path], lr_roots: Sequence[Path] = ()) -> Result:
    """Every number, table and claim of the module docstring, from the runs below `roots`
    (and the learning-rate runs below `lr_roots`); writes nothing."""
    runs = load(roots)
    if not runs:
        raise BatchsizeError(f"no batch-size runs (completed or diverged; experiment "
                             f"{' or '.join(EXPERIMENTS)}) under {', '.join(map(str, roots))}")
    check_protocol(runs)
    result = Result(runs=runs, tables={}, numbers={}, claims=[], wandb_dir=Path(roots[0]))
    for dataset in sorted({r["dataset"] for r in runs}):
        group = [r for r in runs if r["dataset"] == dataset]
        table = cells_of(group)
        rows = claims(dataset, table)
        lr_info = None
        if lr_roots:
            c = group[0]["config"]
            lr_info, row, lr_table = lr_selection(lr_roots, dataset,
                                                  float(c["batch_scaling.base_lr"]),
                                                  int(c["batch_scaling.reference_batch"]))
            rows.append(row)
            if lr_table is not None:
                result.lr_tables[dataset] = lr_table
        result.claims += rows
        result.tables[dataset] = table
        result.numbers[dataset] = numbers_of(dataset, group, table, rows, lr_info)
    return result


def numbers_of(dataset: str, group: list[dict[str, Any]], table: dict[str, dict[int, Any]],
               rows: list[dict[str, str]], lr_info: dict[str, Any] | None) -> dict[str, Any]:
    """batchsize_<dataset>.json: every number of one dataset, with its setup and rules."""
    config = group[0]["config"]
    shared = {k: v for k, v in config.items() if not matches(k, IGNORED)}
    return {
        "dataset": dataset, "experiment": config["name"],
        "setup": setup_line(dataset, shared, table), "shared_config": shared,
        "batch_scaling": {k.split(".", 1)[1]: v for k, v in config.items()
                          if k.startswith("batch_scaling.")},
        "definitions": {"reported": "final test error, 1 - test/acc at the last "
                                    "evaluation; diverged seeds score chance",
                        "chance_error": CHANCE_ERROR, "gap_keys": GAP_KEYS,
                        "reference_batch": REFERENCE_BATCH, "comparable": COMPARABLE,
                        "verdict_rule": VERDICT_RULE},
        "cells": {norm: {str(b): c for b, c in cells.items()} for norm, cells in table.items()},
        "claims": rows, "lr_selection": lr_info,
        "wu_he_table2_imagenet_error_pct": WU_HE_TABLE2}


def claims_markdown(result: Result) -> str:
    """batchsize_claims.md: every dataset's claims, the setups, the rule and Wu & He's words."""
    lines = ["# Batch-size claims (Wu & He 2018; Ioffe 2017) checked on our runs", "",
             "| dataset | claim | paper (ImageNet) | ours (final test error: mean (min..max) "
             "over seeds) | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {c['dataset']} | {c['claim']} | {c['paper']} | {c['ours']} | {c['verdict']} |"
              for c in result.claims]
    # The last line still names scripts/plot_batchsize.py, this module's former self: kept so
    # that the file stays byte for byte the one the script wrote.
    lines += ["", *[f"- {numbers['setup']}" for numbers in result.numbers.values()], "",
              f"Verdict rule: {VERDICT_RULE}", "",
              f"Wu & He's words: {WU_HE_ABSTRACT}. Their Table 2 (ImageNet, ResNet-50, error %"
              " by images per GPU): BN " + ", ".join(f"{b}: {e}" for b, e in
                                                      WU_HE_TABLE2["BN"].items())
              + "; GN " + ", ".join(f"{b}: {e}" for b, e in WU_HE_TABLE2["GN"].items()) + ".",
              "", "Datasets are named as the runs name them: cifar10-jpeg is the JPEG mirror, "
              "not CIFAR-10. Written by scripts/plot_batchsize.py from the run store.", ""]
    return "\n".join(lines)


def write(result: Result, out: Path, wandb: bool = False) -> None:
    """The files of the module docstring, into `out`; with `wandb` the figures and claims also
    go to the runs' wandb group (bnrepro.analysis.wandb_figures)."""
    out.mkdir(parents=True, exist_ok=True)
    for dataset, lr_table in result.lr_tables.items():
        atomic_write_text(out / f"batchsize_lr_{dataset}.csv", lr_table.to_csv(index=False))
    command.save_figures(figures(result), out)
    for dataset, numbers in result.numbers.items():
        table = csv_rows(result.tables[dataset])
        atomic_write_text(out / f"batchsize_{dataset}.csv", table.to_csv(index=False))
        atomic_write_json(out / f"batchsize_{dataset}.json", numbers)
    atomic_write_text(out / "batchsize_claims.md", claims_markdown(result))
    write_claims(out / "batchsize_claims.json", result.claims,
                 experiment=", ".join(EXPERIMENTS), title=TITLE, make="make batchsize",
                 setup="; ".join(n["setup"] for n in result.numbers.values()),
                 figures=[f"batchsize_{d}.png" for d in result.numbers],
                 verdict_rule=VERDICT_RULE, summaries=[r["run"].summary for r in result.runs])
    wandb_figures.publish(wandb, result.runs[0]["run"].config,
                          [out / f"batchsize_{d}.png" for d in result.numbers],
                          claims=result.claims, wandb_dir=result.wandb_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m bnrepro.analyse batchsize RUN_DIRS [--lr-runs ...] [--out results]`."""
    parser = command.parser("batchsize", __doc__)
    parser.add_argument("run_dirs", type=Path, nargs="+",
                        help="run stores, e.g. runs/batchsize_mnist runs/batchsize_cifar10-jpeg")
    parser.add_argument("--lr-runs", type=Path, nargs="*", default=[],
                        help="the base-rate selection runs, runs/batchsize_lr_<dataset>")
    args = command.parse(parser, argv)
    try:
        result = analyse(args.run_dirs, args.lr_runs)
    except BatchsizeError as err:
        return command.refuse(err)
    write(result, args.out, wandb=args.wandb)
    for dataset, numbers in result.numbers.items():
        print(f"{dataset}: wrote {args.out}/batchsize_{dataset}.png, .pdf, .csv, .json")
        for norm, cells in numbers["cells"].items():
            text = ", ".join(f"{b}: {pct(c['err_mean'])}" for b, c in cells.items())
            print(f"  {norm:5s} final test error by batch size: {text}")
        command.print_claims(numbers["claims"])
    print(f"wrote {args.out}/batchsize_claims.md")
    return 0
