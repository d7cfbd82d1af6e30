# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figures 2 and 3: does BN reach the baseline's accuracy in fewer steps?
#
# Sec. 4.2 of Ioffe & Szegedy trains Inception on ImageNet with and without BN, at higher
# learning rates, and with sigmoid instead of ReLU: BN reaches the baseline's best accuracy
# in far fewer steps, higher rates speed it up further, and sigmoid trains only with BN. We
# repeat the comparison with a small VGG-style CNN on CIFAR-10 or its JPEG mirror (`make
# fig2`). Everything below comes from `bnrepro.experiments.fig2` (the same as `results/fig2_*`),
# reading the local run store.

# %%
from pathlib import Path

import pandas as pd

from bnrepro.analysis.notebook import say, show, show_table
from bnrepro.experiments import fig2

# %% tags=["parameters"]
RUNS = ""  # a folder of fig2_cifar runs; "": ../runs/fig2_cifar10 if it exists, else the mirror's
LR_RUNS = ""  # the base-rate runs; "": the sibling fig2_lr_<dataset> folder if it exists

# %%
if not RUNS:  # `make fig2` uses true CIFAR-10 when it loads, else the JPEG mirror
    RUNS = next((f for f in ("../runs/fig2_cifar10", "../runs/fig2_cifar10-jpeg")
                 if Path(f).is_dir()), "../runs/fig2_cifar10-jpeg")
name = Path(RUNS).name  # runs/fig2_<dataset> -> runs/fig2_lr_<dataset>
sibling = Path(RUNS).with_name(f"fig2_lr_{name[5:]}") if name.startswith("fig2_") else None
lr_runs = Path(LR_RUNS) if LR_RUNS else sibling if sibling and sibling.is_dir() else None
a = fig2.analyse(Path(RUNS), lr_runs)
dataset = a["dataset"]
ABOUT = {"cifar10": "the true CIFAR-10",
         "cifar10-jpeg": "CIFAR-10's images after JPEG recompression (the offline mirror): "
                         "its pixels differ from CIFAR-10's, so **these are not CIFAR-10 "
                         "numbers**"}
seeds = {v: t["seeds"] for v, t in a["table"].items()}
say(f"Dataset: **`{dataset}`**, {ABOUT.get(dataset, 'see conf/dataset/')}. "
    f"{sum(seeds.values())} runs of {len(seeds)} variants "
    f"({', '.join(f'{v}: {n} seed(s)' for v, n in seeds.items())}); steps per run: "
    + ", ".join(f"{v} {t['max_steps']}" for v, t in a["table"].items())
    + " (a variant that decays its rate 6x faster stops 6x sooner), each evaluated on its own "
    "grid.")

# %% [markdown]
# ## Fig. 2: validation accuracy over training
#
# Per variant the mean over seeds (band = min..max; a diverged seed scores chance after its
# divergence). The target, dashed, is the Baseline's best seed-mean validation accuracy, the
# analogue of the paper's "Inception's maximum accuracy"; a marker shows where a variant's
# mean first reaches it.

# %%
show(fig2.figure(a["curves"], a["table"], a["target"], dataset), "fig2")
say(f"Target: validation accuracy {a['target']:.4f}, reached by the Baseline's seed-mean curve "
    f"at step {a['target_step']} of {a['max_steps']}.")

# %% [markdown]
# ## Fig. 3: steps to the target and best accuracy, beside the paper's ImageNet numbers

# %%
fig3 = fig2.csv_table(a["table"])
show_table(fig3.set_index("variant"), "fig3")
say(fig2.caption(a["target"], a["target_step"], dataset, a["max_steps"]))
speedups = {v: t["speedup_vs_baseline"] for v, t in a["table"].items() if v != "Baseline"}
say("Speed-up over the Baseline in median steps to the target: " + "; ".join(
    f"{v} {'-' if x is None else f'{x:.2f}x'}"
    for v, x in speedups.items()) + " ('-': not defined, a median is never or 0).")

# %% [markdown]
# ## The paper's claims, checked
#
# Each verdict is computed from the runs by the rule below the table.

# %%
claims = pd.DataFrame(a["claims"])
show_table(claims, "claims")
counts = claims["verdict"].value_counts()
say(f"{len(claims)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items())
    + f". Verdict rule: {fig2.VERDICT_RULE}")
if a["lr_candidates"] is not None:
    show_table(a["lr_candidates"].drop(columns="run_dir"), "lr_candidates")
    say(f"The Baseline's learning rate, {a['lr_info']['fig2_baseline_lr']:g}, is "
        f"{'' if a['lr_info']['base_lr_is_best'] else 'not '}the candidate with the highest "
        f"mean validation accuracy over its seeds ({a['lr_info']['best_lr']:g}).")
