"""The project's wandb workspace, defined in code (wandb-workspaces): one section per experiment.

    python -m bnrepro.analysis.wandb_workspace [--entity E] [--project P] [--name N]  # save
    python -m bnrepro.analysis.wandb_workspace --dry-run [spec.json]                  # no server

Entity and project: the options, else WANDB_ENTITY / WANDB_PROJECT, else (project only)
"bnrepro", the project the runs log to (conf/logger/wandb.yaml). Saving needs a wandb login
(`wandb login`) and the runs synced (`wandb sync`); --dry-run writes the workspace spec, the JSON
that `Workspace.save()` would upload, to the given file (default: stdout) and touches nothing.

What each section shows (keys as the trainer and the probes log them; config keys as the runs
send them, see bnrepro.run.loggers.wandb_config; seeds aggregated as mean with a min..max band,
the figures' convention):
- Fig. 1: test and validation accuracy vs step grouped by norm x activation
  (axes.norm_activation); the tracked unit's 15/50/85th percentiles per hidden layer
  (act/h{i}/q15, q50, q85; inference network) and of the training network's last layer
  (act_train/h3/...), grouped the same way; the figures run's images.
- Sweep: parallel coordinates over lr, dropout, norm, activation -> best validation accuracy
  and the test accuracy at it (the trainer's summary: best_val_acc, test_acc_at_best_val);
  validation accuracy vs step grouped by norm x activation.
- Fig. 2: validation and test accuracy vs step grouped by the variant label; the figure and the
  claims table of the figures run.
- Santurkar's measures: gradient ICS (ics/h{i}/l2, ics/h{i}/cos), the loss landscape
  (landscape/loss_range, landscape/grad_change_max, landscape/beta) and distributional shift
  (shift/h{i}/w1_init, shift/h{i}/w1_prev), grouped by norm; per-layer keys by regex, so any
  number of layers shows.
- Batch size: test/acc, test/acc_batch, test/acc_running (their best over training, the
  summary's .max) against trainer.batch_size, and parallel coordinates norm -> batch size ->
  the three accuracies.
- Residual depth: resid/b{i}/var_ratio vs step grouped by norm (regex over blocks), and accuracy
  against model.depth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

DEFAULT_PROJECT = "bnrepro"
NAME = "bnrepro: experiments"
STEP = "step"  # the trainer's step: every metric's x-axis (bnrepro.run.loggers.STEP_METRIC)
MLP_LAYERS = (1, 2, 3)  # Fig. 1's network: 3 hidden layers
QUANTILES = ("q15", "q50", "q85")
# Config keys (nested in the runs' wandb config; Config("a.b") addresses them as the app does).
NORM_ACTIVATION = wr.Config("axes.norm_activation")
NORM, ACTIVATION = wr.Config("model.norm"), wr.Config("model.activation")
LR, DROPOUT, VARIANT = wr.Config("optim.lr"), wr.Config("model.dropout"), wr.Config("variant")
BATCH_SIZE, DEPTH = wr.Config("trainer.batch_size"), wr.Config("model.depth")
RESIDUAL_SCALE = wr.Config("model.residual_scale")
BEST_VAL, TEST_AT_BEST = wr.SummaryMetric("best_val_acc"), wr.SummaryMetric("test_acc_at_best_val")
# The figures runs' image keys (bnrepro.analysis.wandb_figures: figures/<file stem>).
FIGURES = {"fig1": ["figures/fig1_mnist"],
           "sweep": ["figures/sweep_mnist_heatmap", "figures/sweep_mnist_best_curves"],
           "fig2": ["figures/fig2_cifar10", "figures/fig2_cifar10-jpeg"]}


def curves(title: str, y: list[str] | None = None, groupby: Any = NORM_ACTIVATION,
           regex: str | None = None, **kwargs: Any) -> wr.LinePlot:
    """Metric(s) vs the trainer's step, runs grouped by `groupby`: mean, band min..max."""
    return wr.LinePlot(title=title, x=STEP, y=y or [], metric_regex=regex, groupby=groupby,
                       groupby_aggfunc="mean", groupby_rangefunc="minmax", **kwargs)


def section(name: str, panels: list[Any], is_open: bool = False) -> ws.Section:
    return ws.Section(name=name, panels=panels, is_open=is_open,
                      panel_settings=ws.SectionPanelSettings(x_axis=STEP))


def figures(keys: list[str]) -> list[Any]:
    return [wr.MediaBrowser(title="figures (from the plot scripts' --wandb)", media_keys=keys,
                            num_columns=1, layout=wr.Layout(w=24, h=12))]


def columns(*metrics: Any, log: tuple[Any, ...] = ()) -> list[wr.ParallelCoordinatesPlotColumn]:
    return [wr.ParallelCoordinatesPlotColumn(metric=m, log=True if m in log else None)
            for m in metrics]


def fig1_section() -> ws.Section:
    panels: list[Any] = [curves("Fig. 1(a): test accuracy by norm x activation", ["test/acc"]),
                         curves("validation accuracy by norm x activation", ["val/acc"])]
    panels += [curves(f"Fig. 1(b,c): input to the tracked sigmoid, layer {i} (15/50/85th "
                      "percentiles, inference net)", [f"act/h{i}/{q}" for q in QUANTILES])
               for i in MLP_LAYERS]
    last = MLP_LAYERS[-1]
    panels.append(curves(f"training net (mini-batch statistics), layer {last}",
                         [f"act_train/h{last}/{q}" for q in QUANTILES]))
    return section("Fig. 1: with and without BN (MNIST)", panels + figures(FIGURES["fig1"]),
                   is_open=True)


def sweep_section() -> ws.Section:
    return section("Sweep: lr x dropout x norm x activation", [
        wr.ParallelCoordinatesPlot(
            title="sweep: best validation accuracy and the test accuracy at it",
            columns=columns(LR, DROPOUT, NORM, ACTIVATION, BEST_VAL, TEST_AT_BEST, log=(LR,)),
            layout=wr.Layout(w=24, h=10)),
        curves("validation accuracy by norm x activation", ["val/acc"]),
        *figures(FIGURES["sweep"])])


def fig2_section() -> ws.Section:
    return section("Fig. 2: accelerating BN (CIFAR variants)", [
        curves("Fig. 2: validation accuracy by variant", ["val/acc"], groupby=VARIANT),
        curves("test accuracy by variant", ["test/acc"], groupby=VARIANT),
        *figures(FIGURES["fig2"]),
        wr.WeavePanelSummaryTable(table_name="claims", layout=wr.Layout(w=24, h=10))])


def santurkar_section() -> ws.Section:
    return section("Santurkar et al.: ICS, landscape, shift", [
        curves("gradient ICS ||G - G'||, per layer", regex=r"ics/h\d+/l2", groupby=NORM),
        curves("gradient ICS cos(G, G'), per layer", regex=r"ics/h\d+/cos", groupby=NORM),
        curves("variation of the loss along the gradient", ["landscape/loss_range"],
               groupby=NORM, log_y=True),
        curves("gradient predictiveness (largest gradient change)",
               ["landscape/grad_change_max"], groupby=NORM, log_y=True),
        curves("effective beta-smoothness", ["landscape/beta"], groupby=NORM, log_y=True),
        curves("shift since step 0 (W1), per layer", regex=r"shift/h\d+/w1_init",
               groupby=NORM),
        curves("shift between evaluations (W1), per layer", regex=r"shift/h\d+/w1_prev",
               groupby=NORM)])


def batch_size_section() -> ws.Section:
    keys = ("test/acc", "test/acc_batch", "test/acc_running")
    best = [wr.SummaryMetric(f"{k}.max") for k in keys]  # summary="max" (bnrepro.run.loggers)
    return section("Batch size: BN and the alternatives", [
        *[wr.ScatterPlot(title=f"{k} (best over training) vs batch size", x=BATCH_SIZE, y=m,
                         log_x=True) for k, m in zip(keys, best, strict=True)],
        wr.ParallelCoordinatesPlot(title="norm -> batch size -> test accuracy (batch statistics, "
                                         "running averages)",
                                   columns=columns(NORM, BATCH_SIZE, *best, log=(BATCH_SIZE,)),
                                   layout=wr.Layout(w=24, h=10))])


def depth_section() -> ws.Section:
    return section("Residual depth: BN, no norm, SkipInit", [
        curves("residual branch / skip variance, per block", regex=r"resid/b\d+/var_ratio",
               groupby=NORM, log_y=True),
        wr.ScatterPlot(title="test accuracy at best validation vs depth", x=DEPTH,
                       y=TEST_AT_BEST),
        wr.ParallelCoordinatesPlot(title="depth x norm x residual scale -> accuracy",
                                   columns=columns(DEPTH, NORM, RESIDUAL_SCALE, BEST_VAL,
                                                   TEST_AT_BEST),
                                   layout=wr.Layout(w=24, h=10))])


def build(entity: str, project: str, name: str = NAME) -> ws.Workspace:
    """The workspace: the sections above, every chart against the trainer's step."""
    return ws.Workspace(
        entity=entity, project=project, name=name,
        sections=[fig1_section(), sweep_section(), fig2_section(), santurkar_section(),
                  batch_size_section(), depth_section()],
        settings=ws.WorkspaceSettings(x_axis=STEP, max_runs=100),
        runset_settings=ws.RunsetSettings(groupby=[]))


def spec(workspace: ws.Workspace) -> dict[str, Any]:
    """What `workspace.save()` uploads: the view's entity, project and name, and its spec
    serialised exactly as wandb_workspaces' upsert_view2 does
    (`spec.model_dump_json(by_alias=True, exclude_none=True)`)."""
    view = workspace._to_model()  # the library's own serialisation, also used by save()
    return {"entity": view.entity, "project": view.project, "displayName": view.display_name,
            "spec": json.loads(view.spec.model_dump_json(by_alias=True, exclude_none=True))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"))
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT)
    parser.add_argument("--name", default=NAME, help="the workspace's display name")
    parser.add_argument("--dry-run", nargs="?", const="-", default=None, metavar="FILE",
                        help="write the spec as JSON to FILE (default: stdout); no server")
    args = parser.parse_args(argv)
    if args.dry_run is not None:
        workspace = build(args.entity or "ENTITY", args.project, args.name)
        text = json.dumps(spec(workspace), indent=2) + "\n"
        if args.dry_run == "-":
            sys.stdout.write(text)
        else:
            Path(args.dry_run).write_text(text)
            print(f"wrote {args.dry_run}: {len(workspace.sections)} sections, "
                  f"{sum(len(s.panels) for s in workspace.sections)} panels")
        return 0
    if not args.entity:
        print("error: no entity: pass --entity or set WANDB_ENTITY (your wandb user or team)",
              file=sys.stderr)
        return 2
    workspace = build(args.entity, args.project, args.name).save()
    print(workspace.url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
