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
from collections.abc import Sequence
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
from bnrepro.claims import compare, write_claims
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
COMPARABLE = 0.01  # "comparably good": GN's error not above BN's by more than 1 point
LEFT_CHANCE = 0.8  # a cell's nets learned something: every seed's test error below this
BATCH_NORMS = ("bn", "brn")  # the norms with batch statistics, swept over the ghost batch
# The three test numbers of the train/inference gap: metrics key -> label.
GAP_KEYS = {"test/acc": "Alg. 2 (population statistics): the configured inference",
            "test/acc_running": "moving averages (EMA)",
            "test/acc_batch": "batch statistics (the training network)"}
GAP_COLUMN = {"test/acc": "err", "test/acc_running": "err_running", "test/acc_batch": "err_batch"}
# Keys allowed to differ between the runs of one dataset: the sweep axes, what the experiment
# derives from the batch size, and keys that never change a trajectory. "x." = all under x.
AXES = ("seed", "model.norm", "model.bn_ghost_batch")
DERIVED = ("trainer.max_steps", "trainer.eval_every", "trainer.test_every",
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
    "every comparison is bnrepro.claims.compare on per-seed final test errors (lower is "
    "better): holds / does not hold only when the exact one-sided permutation test decides at "
    "0.05 (3 seeds a side: the seed ranges do not overlap), else inconclusive; not measured when "
    "a precondition is unmet (cells not run, a cell that did not leave chance: every seed's "
    f"error < {LEFT_CHANCE:g}; Wu & He's claims on the fully-connected MLP arm, whose BN has only "
    "b values per statistic; Batch Renorm's schedule not relaxed within the run). GN comparable "
    f"to BN: non-inferiority, GN's error minus {COMPARABLE:g} below BN's. A diverged seed's "
    f"error is {CHANCE_ERROR:g} (chance).")


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
                         # the statistics batch b: the ghost batch, else the SGD batch
                         "batch": int(config.get("model.bn_ghost_batch") or
                                      config["trainer.batch_size"]),
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
            scaled = (c["batch_scaling.base_lr"] * c["trainer.batch_size"]
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
    """bnrepro.claims SOURCES: Batch Renorm's claims are Ioffe (2017)'s; the rest Wu & He's."""
    return "Ioffe (2017)" if claim.startswith("Batch Renorm") else "Wu & He (2018)"


def left_chance(cell: dict[str, Any] | None) -> bool:
    """The cell's nets learned something: every seed's error below LEFT_CHANCE."""
    return cell is not None and bool((seeds_of(cell) < LEFT_CHANCE).all())


def claims(dataset: str, table: dict[str, dict[int, dict[str, Any]]], conv: bool = True,
           schedule_relaxed: bool = True) -> list[dict[str, Any]]:
    """The claims of the module docstring on one dataset, each decided by
    bnrepro.claims.compare (evidence and preconditions in the row). `conv`: BN normalises conv
    feature maps (b x H x W values per statistic, as Wu & He's per-GPU BN); False for the
    fully-connected arm (MLP), where Wu & He's claims are not measured. `schedule_relaxed`:
    Batch Renorm's r_max/d_max reached their final values within the run."""
    rows: list[dict[str, Any]] = []
    batches = sorted({b for norm in BATCH_NORMS for b in table.get(norm, {})})
    smallest = batches[0] if batches else None
    fc_arm = ("BN normalises conv feature maps (b x H x W values per statistic), as Wu & He's "
              "per-GPU BN does; the MLP arm normalises each unit over b values only", conv)

    def cell(norm: str, batch: int | None, column: str = "err") -> dict[str, Any] | None:
        c = table.get(norm, {}).get(batch)
        return c if c is not None and f"{column}_mean" in c else None

    def side(label: str, c: dict[str, Any] | None, column: str = "err"
             ) -> tuple[str, list[float]]:
        return label, [] if c is None else seeds_of(c, column).tolist()

    def present(*named: tuple[str, dict[str, Any] | None]) -> list[tuple[str, bool]]:
        return [(f"{name} was run (and left chance: every seed's error < {LEFT_CHANCE:g})",
                 left_chance(c)) for name, c in named]

    def add(claim: str, paper: str, ours: str, decided: tuple[str, dict[str, Any]]) -> None:
        result, evidence = decided
        unmet = [p["check"] for p in evidence["preconditions"] if not p["met"]]
        if unmet:
            ours = f"{ours}; not measured: {'; '.join(unmet)} is not so"
        rows.append({"dataset": dataset, "claim": claim, "paper": paper, "ours": ours,
                     "verdict": result, "source": source_of(claim), "evidence": evidence})

    def text(label: str, c: dict[str, Any] | None, column: str = "err") -> str:
        return f"{label} {cell_text(c, column) if c is not None else 'not run'}"

    bn_small, bn_ref = cell("bn", smallest), cell("bn", REFERENCE_BATCH)
    gn = cell("gn", REFERENCE_BATCH)
    brn_small = cell("brn", smallest)
    distinct = ("the smallest statistics batch is below the reference batch",
                smallest is not None and smallest < REFERENCE_BATCH)

    add(f"BN's error rises as the statistics batch shrinks (b = {smallest} vs "
        f"{REFERENCE_BATCH})",
        "\"BN's error increases rapidly when the batch size becomes smaller\" (abstract); "
        "Table 2: 23.6% at 32, 34.7% at 2 images per GPU",
        f"{text(f'BN b={REFERENCE_BATCH}', bn_ref)} vs {text(f'BN b={smallest}', bn_small)}",
        compare(side(f"BN b={REFERENCE_BATCH}", bn_ref), side(f"BN b={smallest}", bn_small),
                better="lower", preconditions=[fc_arm, distinct, *present(
                    (f"BN at b={REFERENCE_BATCH}", bn_ref), (f"BN at b={smallest}", bn_small))]))

    add(f"at the smallest statistics batch (b = {smallest}) GN's error is below BN's",
        "\"GN has 10.6% lower error than its BN counterpart when using a batch size of 2\" "
        "(abstract); Table 2: 24.1% vs 34.7%",
        f"{text('GN (no batch statistics)', gn)} vs {text(f'BN b={smallest}', bn_small)}",
        compare(side("GN", gn), side(f"BN b={smallest}", bn_small), better="lower",
                preconditions=[fc_arm, *present(("GN", gn),
                                                (f"BN at b={smallest}", bn_small))]))

    add(f"GN's error varies less across batch sizes than BN's (b <= {REFERENCE_BATCH})",
        "\"its accuracy is stable in a wide range of batch sizes\" (abstract); Table 2: GN "
        "24.0-24.2%, BN 23.6-34.7% over 2..32",
        "GN's computation does not depend on the statistics batch: at a fixed SGD batch its "
        "curve is flat by construction (one cell), so its variation is not a measurement; "
        "BN's dependence is the first row",
        compare(side("GN", gn), side("BN", bn_ref), better="lower", preconditions=[(
            "GN's variation over b is measured rather than flat by construction", False)]))

    add(f"at b = {REFERENCE_BATCH} GN is comparable to BN: GN's error not above BN's by more "
        f"than {pct(COMPARABLE)}",
        "\"when using typical batch sizes, GN is comparably good with BN\" (abstract); Table 2:"
        " 24.1% vs 23.6% at 32",
        f"{text('GN', gn)} vs {text(f'BN b={REFERENCE_BATCH}', bn_ref)} (non-inferiority: GN "
        f"minus {pct(COMPARABLE)} vs BN)",
        compare(side("GN", gn), side(f"BN b={REFERENCE_BATCH}", bn_ref), better="lower",
                margin=-COMPARABLE, preconditions=[fc_arm, *present(
                    ("GN", gn), (f"BN at b={REFERENCE_BATCH}", bn_ref))]))

    relaxed = ("Batch Renorm's r_max, d_max reached their final values within the run",
               schedule_relaxed)
    add(f"Batch Renorm is better than BN at the smallest statistics batch (b = {smallest})",
        "Ioffe (2017, abstract): Batch Renorm models \"perform substantially better than "
        "batchnorm when training with small or non-i.i.d. minibatches\" (small ghost batches "
        "tested here; non-i.i.d. minibatches not)",
        f"{text(f'Batch Renorm b={smallest}', brn_small)} vs "
        f"{text(f'BN b={smallest}', bn_small)}",
        compare(side(f"Batch Renorm b={smallest}", brn_small),
                side(f"BN b={smallest}", bn_small),
                better="lower", preconditions=[relaxed, distinct, *present(
                    (f"Batch Renorm at b={smallest}", brn_small),
                    (f"BN at b={smallest}", bn_small))]))

    # Ioffe (2017): Batch Renorm makes the training and inference networks produce the same
    # outputs; BN's differ (small minibatches: noisier statistics). Per seed, |test error of
    # the inference network - test error of the training network on test mini-batches of b|.
    def discrepancy(c: dict[str, Any] | None) -> dict[str, Any] | None:
        if c is None or "err_batch_mean" not in c:
            return None
        gaps = np.abs(seeds_of(c) - seeds_of(c, "err_batch"))
        return {"per_seed": [{"err": g} for g in gaps], **spread(gaps, "err")}

    d_brn, d_bn = discrepancy(brn_small), discrepancy(bn_small)
    add(f"Batch Renorm's training and inference networks agree more closely than BN's at "
        f"b = {smallest}",
        "Ioffe (2017, abstract): BN's small-minibatch loss is hypothesised to come from "
        "\"different activations being produced between training and inference\"; Batch Renorm "
        "makes \"the training and inference models generate the same outputs\"",
        f"|inference - training-network test error| per seed: Batch Renorm (moving averages) "
        f"{gap_text(seeds_of(d_brn)) if d_brn else 'not run'} vs BN (Alg. 2) "
        f"{gap_text(seeds_of(d_bn)) if d_bn else 'not run'}",
        compare(side(f"Batch Renorm b={smallest}", d_brn), side(f"BN b={smallest}", d_bn),
                better="lower", preconditions=[relaxed, *present(
                    (f"Batch Renorm at b={smallest}", brn_small),
                    (f"BN at b={smallest}", bn_small)),
                    ("both were scored with probe.inference_gap",
                     d_brn is not None and d_bn is not None)]))
    return rows


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
        flat = norm not in BATCH_NORMS and len(cells) == 1 and len(batches) > 1
        if flat:  # no batch statistics: one run at the SGD batch, the same at every b
            cells = dict.fromkeys(batches, next(iter(cells.values())))
        band(ax, cells, "err", COLORS.get(norm, "gray"),
             f"{LABELS.get(norm, norm)} ({n} seeds" + (f", {dead} runs diverged" if dead
                                                       else "")
             + ("; flat by construction)" if flat else ")"), "--" if flat else "-")
    ax.set(title=f"(a) {dataset}: final test error vs statistics batch", ylabel="test error (%)")
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
        ax.set_xlabel("statistics batch b (ghost batch; SGD batch 32, one rate)")
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
    batches = sorted({b for norm in BATCH_NORMS for b in table.get(norm, {})})
    seeds = max(c["seeds"] for cells in table.values() for c in cells.values())
    test = shared.get("trainer.test_examples")
    fc = "with" if shared.get("model.classifier_norm", True) else "without"
    arm = (f"CNN, norm on the conv layers ({fc} one on the hidden FC layer)"
           if shared.get("model.kind") == "cnn" else
           "MLP: the fully-connected arm, BN over b values per unit")
    return (f"{dataset}: model {shared.get('model.kind')} ({shared.get('model.activation')}; "
            f"{arm}), SGD batch {shared['trainer.batch_size']} at lr "
            f"{shared['optim.lr']:g} for {shared['batch_scaling.examples']} training examples; "
            f"BN and Batch Renorm with statistics over ghost batches of b = "
            f"{', '.join(map(str, batches))}; GN, LN, no norm once (no batch statistics); up "
            f"to {seeds} seeds; final test error on "
            f"{'all' if test is None else f'a fixed subset of {test}'} test images")


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


def relaxed(config: dict[str, Any]) -> bool:
    """Batch Renorm's r_max, d_max reach their final values within the run."""
    return config["model.brn.warmup_steps"] + config["model.brn.relax_steps"] <= \
        config["trainer.max_steps"]


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
        c = group[0]["config"]
        rows = claims(dataset, table, conv=c["model.kind"] != "mlp",
                      schedule_relaxed=all(relaxed(r["config"]) for r in group
                                           if r["norm"] == "brn"))
        lr_info = None
        if lr_roots:
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
