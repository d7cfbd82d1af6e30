"""The figure of Santurkar et al.'s measures over training (their Figs. 3, 4 and 10): gradient
ICS of two layers (l2 difference and cosine, Def. 2.1) and the loss landscape along the
gradient (variation of the loss, gradient predictiveness, "effective" beta-smoothness), one
row per learning rate, BN against the standard net. Shared by bnrepro.experiments.dln (the deep
linear net) and bnrepro.experiments.santurkar (the MNIST MLP and the CIFAR CNN).

Lines are the mean over seeds, thin bands min..max over seeds; the loss and the gradient change
are drawn as the paper's shaded regions: per step, the mean over seeds of the smallest and the
largest value over the step lengths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bnrepro.run.runs import Run

# (key, key of the range's low end or None, title, log scale); {layer} is filled in.
ICS_PANELS = (("ics/h{layer}/l2", None, "ICS: ||G - G'||", True),
              ("ics/h{layer}/cos", None, "ICS: cos(G, G')", False))
LANDSCAPE_PANELS = (
    ("landscape/loss_max", "landscape/loss_min", "loss along the gradient (range)", True),
    ("landscape/grad_change_max", "landscape/grad_change_min",
     "gradient predictiveness: ||g - g'|| (range)", True),
    ("landscape/beta", None, "effective beta-smoothness", True))


def ics_layers(runs: Sequence[Run]) -> list[int]:
    """The weight layers whose gradient ICS was measured, layer 1 left out (nothing below it:
    its ICS is 0 by definition)."""
    return sorted({int(k.split("/")[1][1:]) for r in runs for k in r.measures.columns
                   if k.startswith("ics/") and k.endswith("/cos")} - {1})


def median_per_seed(runs: Sequence[Run], key: str, worst: float = math.inf) -> list[float]:
    """Per run (seed): the median of `key` over the steps that measured it (runs that never
    did are left out). A step whose value was not finite counts as `worst` (+inf for the
    magnitudes: a loss range, a gradient change, beta, an l2 ICS; give -1 for a cosine), not as
    a missing step: dropping it would make the roughest runs look smooth."""
    medians = []
    for run in runs:
        values = [worst if v is None else float(v) for v in run.measured(key)]
        if values:
            medians.append(float(np.median(values)))
    return medians


def band(ax, runs: Sequence[Run], key: str, color: str | None, label: str,
         table: str = "measures", low: str | None = None, ls: str = "-") -> None:
    """Mean over runs of `key` against the step, with the min..max band over runs; with `low`,
    the shaded region between the means of `low` and of `key` instead."""
    frames = [getattr(r, table).set_index("step")[[k for k in (key, low) if k]].dropna()
              for r in runs if key in getattr(r, table)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return
    both = pd.concat(frames, axis=1, keys=range(len(frames)))
    values = both.xs(key, axis=1, level=1)
    mean = values.mean(axis=1)
    if low:
        bottom = both.xs(low, axis=1, level=1).mean(axis=1)
        ax.fill_between(mean.index, bottom, mean, color=color, alpha=0.3, label=label)
    else:
        ax.plot(mean.index, mean, color=color, ls=ls, label=label)
        ax.fill_between(mean.index, values.min(axis=1), values.max(axis=1), color=color,
                        alpha=0.15)


def measures_figure(rows: Sequence[tuple[str, Mapping[str, Sequence[Run]]]],
                    styles: Mapping[str, tuple[str, str]], title: str,
                    lead: tuple[str, str, bool] | None = None) -> plt.Figure:
    """One row per (row label, {norm: runs}) of `rows` (norms drawn in the order of `styles`,
    norm -> (label, colour)); columns: `lead` (an evaluation metric: (key, title, log scale),
    e.g. the training loss), ICS of up to two layers, the three landscape measures."""
    layers = ics_layers([r for _, nets in rows for runs in nets.values() for r in runs])[:2]
    columns = ([lead] if lead else []) + [ICS_PANELS[0], ICS_PANELS[1]] + list(LANDSCAPE_PANELS)
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3.6 * len(columns),
                                                              3.1 * len(rows)), squeeze=False)
    for (row_label, nets), row_axes in zip(rows, axes, strict=True):
        for ax, panel in zip(row_axes, columns, strict=True):
            is_lead = lead is not None and panel is lead
            key, low, name, log = (panel[0], None, panel[1], panel[2]) if is_lead else panel
            for norm, (label, color) in styles.items():
                runs = nets.get(norm, [])
                if is_lead:
                    band(ax, runs, key, color, label, table="metrics")
                elif "{layer}" in key:
                    for layer, ls in zip(layers, ("-", "--"), strict=False):
                        band(ax, runs, key.format(layer=layer), color,
                             f"{label}, layer {layer}", ls=ls)
                else:
                    band(ax, runs, key, color, label, low=low)
            ax.set(title=f"{name}\n{row_label}", xlabel="training steps")
            ax.grid(alpha=0.3)
            if log and ax.has_data():
                ax.set_yscale("log")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
