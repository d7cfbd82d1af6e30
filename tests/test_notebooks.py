"""Every notebook in notebooks/ executes headless (papermill, a real Jupyter kernel) against
tiny real run stores the tests train themselves, and shows figures that hold data and numbers
that are the run store's.

The notebooks' sources are jupytext percent-format .py files (the reviewed form; .ipynb
copies are ignored by git). Each figure, table and sentence a notebook shows carries a record
in its output metadata (bnrepro.analysis.notebook), which the checks below read.

Adding a notebook: notebooks/<name>.py, and one entry in NOTEBOOKS naming the fixture that
gives its parameters (test_every_notebook_is_tested fails until it is there)."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jupytext
import matplotlib.image
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from omegaconf import OmegaConf

from bnrepro.analysis.notebook import RECORD_KEY
from bnrepro.claims import VERDICTS
from bnrepro.data.datasets import DataUnavailableError, load_dataset
from bnrepro.experiments import fig1
from bnrepro.run.store import evaluation_rows, read_metrics, read_summary
from tests.conftest import REPO, data_missing

NOTEBOOK_DIR = REPO / "notebooks"
# notebook -> the fixture giving its papermill parameters (a folder of real runs it reads)
NOTEBOOKS = {"fig1_shift": "fig1_params", "sweep": "sweep_params", "fig2_cifar": "fig2_params",
             "santurkar": "santurkar_params", "batchsize_depth": "batchsize_depth_params"}
TINY = ["debug=smoke", "trainer.max_steps=4", "trainer.eval_every=2"]  # 3 evaluations
MIN_PNG_SIDE = 200  # pixels: a figure, not an icon


@dataclass
class Executed:
    """An executed notebook and what it showed, read from the outputs' records."""
    nb: nbformat.NotebookNode
    figures: dict[str, dict]  # name -> figure record (bnrepro.analysis.notebook.figure_record)
    pngs: dict[str, bytes]  # name -> the PNG shown
    tables: dict[str, pd.DataFrame]  # name -> the table's exact values
    text: str  # every sentence shown by say(), in order

    def table(self, name: str) -> pd.DataFrame:
        assert name in self.tables, f"no table {name!r}; shown: {sorted(self.tables)}"
        return self.tables[name]


def read_outputs(nb: nbformat.NotebookNode) -> Executed:
    figures, pngs, tables, text = {}, {}, {}, []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get(RECORD_KEY)
            data = output.get("data", {})
            if "image/png" in data:  # every picture must come with its record
                assert record and "figure" in record, f"a figure shown without a record in " \
                                                      f"cell:\n{cell.source[:300]}"
            if not record:
                continue
            if "figure" in record:
                name = record["figure"]["name"]
                figures[name], pngs[name] = record["figure"], base64.b64decode(data["image/png"])
            elif "table" in record:
                t = record["table"]
                tables[t["name"]] = pd.DataFrame(t["data"], columns=t["columns"],
                                                 index=t["index"])
            elif "text" in record:
                text.append(record["text"])
    return Executed(nb, figures, pngs, tables, "\n".join(text))


def execute(name: str, parameters: dict, out: Path) -> Executed:
    """Run notebooks/<name>.py top to bottom in a fresh python3 kernel, from notebooks/ as
    Jupyter would; papermill raises on the first cell that fails."""
    nb = jupytext.read(NOTEBOOK_DIR / f"{name}.py")
    executed = papermill.execute_notebook(nb, str(out / f"{name}.ipynb"), parameters=parameters,
                                          kernel_name="python3", cwd=str(NOTEBOOK_DIR),
                                          progress_bar=False)
    return read_outputs(executed)


# ---- run stores (real, tiny) and each notebook's parameters --------------------------------

@pytest.fixture(scope="module")
def fig1_params(run_train, mirror, tmp_path_factory) -> dict:
    """fig1_mnist with and without BN, seed 0, 4 steps, evaluated at steps 0, 2 and 4."""
    root = tmp_path_factory.mktemp("nb") / "fig1_mnist"
    run_train("-m", "experiment=fig1_mnist", "seed=0", *TINY, f"hydra.sweep.dir={root}",
              "hydra.sweep.subdir=${model.norm}")
    return {"RUNS": str(root)}


@pytest.fixture(scope="module")
def sweep_params(run_train, mirror, tmp_path_factory) -> dict:
    """A 2 x 2 slice of the MNIST grid: {BN, no BN} x lr {0.1, 1}, sigmoid, no dropout, seed 0."""
    root = tmp_path_factory.mktemp("nb") / "sweep_mnist"
    run_train("-m", "experiment=sweep_mnist", "seed=0", "model.activation=sigmoid",
              "optim.lr=0.1,1.0", "model.dropout=0.0", *TINY, f"hydra.sweep.dir={root}")
    return {"RUNS": str(root)}


@pytest.fixture(scope="module")
def fig2_params(fig2_store) -> dict:
    """The fig2 runs bnrepro.experiments.fig2's tests use (conftest.fig2_store), no lr runs."""
    return {"RUNS": str(fig2_store), "LR_RUNS": ""}


@pytest.fixture(scope="module")
def santurkar_params(santurkar_store, tmp_path_factory) -> dict:
    """The santurkar_mnist runs bnrepro.experiments.santurkar's tests use (conftest), and a tiny
    deep linear net: 4 layers, 2 seeds, 4 steps, ICS and landscape every 2 steps."""
    from bnrepro.train_dln import train_population
    from tests.test_dln import dln_config

    dln = tmp_path_factory.mktemp("nb") / "dln"
    for norm in ("none", "bn"):
        train_population(dln_config(dln, steps=4, log_every=2, depth=4, samples=32,
                                    seeds=[0, 1], lrs=[1e-4],
                                    **{"measures.landscape.every": 2, "measures.ics.every": 2,
                                       "measures.ics.layers": [1, 3]}), norm)
    return {"MNIST_RUNS": str(santurkar_store), "CIFAR_RUNS": "", "DLN_RUNS": str(dln)}


@pytest.fixture(scope="module")
def batchsize_depth_params(batchsize_store, run_train, tmp_path_factory) -> dict:
    """The batchsize_mnist runs of test_experiment_batchsize (conftest) and real depth_cifar runs
    on cifar10-jpeg: the three variants at depth 8, seed 0, 4 steps, 200 test images."""
    try:
        load_dataset("cifar10-jpeg", REPO / "data")  # the cache the training subprocess reads
    except DataUnavailableError as err:
        data_missing(str(err))
    depth = tmp_path_factory.mktemp("nb") / "depth_cifar10-jpeg"
    run_train("-m", "experiment=depth_cifar", "dataset=cifar10-jpeg", "model.depth=8", "seed=0",
              "model.width_multiplier=0.25", "trainer.max_steps=4", "trainer.eval_every=2",
              "trainer.test_every=4", "dataset.val_size=200", "probe.num_examples=32",
              "trainer.batch_size=16", "trainer.population_batches=2",
              "trainer.test_examples=200", "trainer.progress=false",
              f"hydra.sweep.dir={depth}")
    return {"BATCHSIZE_RUNS": str(batchsize_store), "DEPTH_RUNS": str(depth)}


@pytest.fixture(scope="module")
def executed(request, tmp_path_factory):
    """name -> Executed, each notebook executed once per module against its parameters."""
    cache: dict[str, tuple[dict, Executed]] = {}

    def get(name: str) -> tuple[dict, Executed]:
        if name not in cache:
            parameters = request.getfixturevalue(NOTEBOOKS[name])
            cache[name] = parameters, execute(name, parameters, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def run_dirs(parameters: dict) -> list[Path]:
    return sorted(p.parent for p in Path(parameters["RUNS"]).rglob("summary.json"))


def metrics(run_dir: Path) -> pd.DataFrame:
    """The run's evaluations (what the notebooks read through bnrepro.run.runs.find_runs)."""
    return pd.DataFrame(evaluation_rows(read_metrics(run_dir)))


def config(run_dir: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)


# ---- what every notebook must do ------------------------------------------------------------

def test_every_notebook_is_tested_and_no_executed_copy_is_committed():
    sources = {p.stem for p in NOTEBOOK_DIR.glob("*.py")}
    assert sources == set(NOTEBOOKS), "each notebooks/*.py needs an entry in NOTEBOOKS"
    for name in sources:
        nb = jupytext.read(NOTEBOOK_DIR / f"{name}.py")
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name}: one cell tagged parameters, for papermill"
        assert "RUNS =" in tagged[0].source, f"{name}: RUNS (the run store) is a parameter"
    tracked = subprocess.run(["git", "ls-files", "notebooks"], cwd=REPO, capture_output=True,
                             text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert not [f for f in tracked.stdout.split() if f.endswith(".ipynb")], \
        "executed .ipynb copies hold outputs: commit the .py source only"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_headless_and_every_figure_has_data(name, executed):
    parameters, run = executed(name)
    injected = [c for c in run.nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and all(str(v) in injected[0].source for v in parameters.values())
    assert run.figures, f"{name} drew no figure"
    for figure, record in run.figures.items():
        assert record["axes"] and not record["empty_axes"], (figure, record["empty_axes"])
        png = run.pngs[figure]
        assert png[:8] == b"\x89PNG\r\n\x1a\n", figure
        pixels = matplotlib.image.imread(io.BytesIO(png))
        assert min(pixels.shape[:2]) >= MIN_PNG_SIDE, (figure, pixels.shape)
        assert pixels[..., :3].std() > 0.01, f"{figure} is a blank picture"
    assert run.text, f"{name} says nothing about its figures"


# ---- each notebook's numbers are the run store's ------------------------------------------

def test_fig1_notebook_shows_the_store_numbers(executed):
    parameters, run = executed("fig1_shift")
    dirs = run_dirs(parameters)
    table = run.table("runs").set_index("norm")
    for d in dirs:
        summary, norm = read_summary(d), config(d)["model"]["norm"]
        for key in ("best_val_acc", "test_acc_at_best_val", "final_test_acc"):
            assert table.loc[norm, key] == pytest.approx(summary[key], rel=1e-12), (norm, key)
        # the sentence under Fig. 1 gives the last evaluation's test accuracy (1 seed: its own)
        last = metrics(d).iloc[-1]
        assert f"final test accuracy (step {int(last['step'])}) {last['test/acc']:.4f}" in run.text

    # the claims: the accuracy claim quotes each net's final test accuracy
    claims = run.table("claims").set_index("claim")
    higher = claims.loc["BN helps the network achieve higher test accuracy", "ours"]
    for d in dirs:
        norm = config(d)["model"]["norm"]
        acc = f"{metrics(d)['test/acc'].iloc[-1]:.4f}"
        assert f"{'with BN' if norm == 'bn' else 'without'} {acc}" in higher, (norm, higher)

    # one panel per (norm, layer), each with the tracked unit's 3 percentiles at every
    # evaluation and the pooled band
    layers = len(config(dirs[0])["model"]["hidden"])
    evaluations = len(metrics(dirs[0]))
    for prefix in ("act", "act_train"):
        axes = run.figures[f"layers_{prefix}"]["axes"]
        assert len(axes) == 2 * layers
        assert all(a["lines"] == [evaluations] * 3 and len(a["collections"]) == 1 for a in axes)

    # drift = mean over the tracked unit's percentiles of (max - min), recomputed here
    drift = run.table("drift")
    for d in dirs:
        m, norm = metrics(d), config(d)["model"]["norm"]
        for layer in range(1, layers + 1):
            cols = [f"act/h{layer}/q{q}" for q in (15, 50, 85)]
            expected = float(np.mean([m[c].max() - m[c].min() for c in cols]))
            assert drift.loc[norm, f"drift_h{layer}"] == pytest.approx(expected, rel=1e-9)

    # distributional shift: drawn from the store when the trainer logs it, else said missing
    logged = sorted({k.split("/")[0] for k in metrics(dirs[0]).columns
                     if k.startswith(("shift/", "shift_inference/"))})
    if not logged:
        assert "do not log the distributional-shift measures" in run.text
        assert not {"shift", "shift_inference"} & set(run.figures)
    else:
        check_shift(run, dirs, logged)


def check_shift(run: Executed, dirs: list[Path], networks: list[str]) -> None:
    """Each network's logged shift measures: a panel per (measure, layer), row-major in
    fig1.SHIFT_MEASURES order, with a line per norm through every evaluation that logged
    it; and the table's numbers recomputed from metrics.jsonl (one seed per norm: the seed
    mean is the run's own value)."""
    shift = run.table("shift").set_index(["network", "measure", "layer", "norm"])
    for network in networks:
        keys = [k for k in metrics(dirs[0]).columns if k.startswith(f"{network}/")]
        measures = [m for m in fig1.SHIFT_MEASURES if any(k.endswith(f"/{m}") for k in keys)]
        layers = sorted({int(k.split("/")[1][1:]) for k in keys})
        axes = run.figures[network]["axes"]
        assert len(axes) == len(measures) * len(layers)
        for r, measure in enumerate(measures):
            for c, layer in enumerate(layers):
                key = f"{network}/h{layer}/{measure}"
                counts = [len(metrics(d)[key].dropna()) for d in dirs]
                assert axes[r * len(layers) + c]["lines"] == counts, key
        for d in dirs:
            m, norm = metrics(d), config(d)["model"]["norm"]
            for key in keys:
                _, layer, measure = key.split("/")
                logged = m[key].astype(float).dropna()
                row = shift.loc[(network, measure, int(layer[1:]), norm)]
                assert row["mean_over_evaluations"] == pytest.approx(logged.mean(), rel=1e-9)
                assert row["at_last_evaluation"] == pytest.approx(logged.iloc[-1], rel=1e-9)


def test_sweep_notebook_chooses_on_validation_and_reports_the_store_test_accuracy(executed):
    parameters, run = executed("sweep")
    runs = pd.DataFrame([{**config(d)["model"], "lr": config(d)["optim"]["lr"],
                          **read_summary(d)} for d in run_dirs(parameters)])
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}
    best = run.table("best_mnist")
    assert sorted(best["norm"]) == ["bn", "none"]
    for row in best.to_dict("records"):
        mine = runs[runs["norm"] == row["norm"]]
        # one seed per cell: the chosen cell is the norm's run of highest final val accuracy
        assert row["val"] == pytest.approx(mine["final_val_acc"].max(), rel=1e-12)
        chosen = mine[mine["lr"] == row["lr"]].iloc[0]
        assert chosen["final_val_acc"] == mine["final_val_acc"].max()
        assert row["test"] == pytest.approx(chosen["final_test_acc"], rel=1e-12)
    # heatmap: one panel per (norm, activation), a cell per (lr, dropout) of the grid, plus the
    # colour bar; best curves: one line per chosen cell through every evaluation
    heatmap = run.figures["heatmap_mnist"]["axes"]
    assert [a["images"] for a in heatmap if a["title"]] == [[2], [2]]
    evaluations = len(metrics(run_dirs(parameters)[0]))
    assert run.figures["best_curves_mnist"]["axes"][0]["lines"] == [evaluations] * 2


def test_fig2_notebook_names_the_dataset_and_shows_the_store_target(executed):
    parameters, run = executed("fig2_cifar")
    assert "`cifar10-jpeg`" in run.text and "these are not CIFAR-10 numbers" in run.text
    curves: dict[str, list[pd.Series]] = {}
    for d in run_dirs(parameters):
        curves.setdefault(config(d)["variant"], []).append(
            metrics(d).set_index("step")["val/acc"].astype(float))
    # target = the max over steps of the Baseline's seed-mean validation curve (no divergence
    # in these runs, so no chance-filling is needed)
    target = pd.concat(curves["Baseline"], axis=1).mean(axis=1).max()
    assert f"Target: validation accuracy {target:.4f}" in run.text
    fig3 = run.table("fig3")
    for variant, seeds in curves.items():
        assert fig3.loc[variant, "max_val_acc_mean"] == pytest.approx(
            round(float(np.mean([s.max() for s in seeds])), 4), abs=1e-12)
    claims = run.table("claims").set_index("claim")
    assert set(claims["verdict"]) <= set(VERDICTS)
    measured = claims.loc["BN-x5 needs far fewer steps than the baseline"]  # both variants ran
    assert "no runs of" not in measured["ours"]  # (20 steps: the Baseline may not plateau)
    assert claims.loc["BN-x30 ends higher than BN-x5", "verdict"] == "not measured"
    axes = run.figures["fig2"]["axes"]
    steps = len(curves["Baseline"][0])
    assert sorted(p for p in axes[0]["lines"] if p > 1) == [steps, steps]  # two mean curves
    assert not math.isnan(target)


def test_fig1_notebook_draws_the_shift_measures_when_runs_log_them(fig1_params, tmp_path):
    """Until the trainer logs the shift measures (bnrepro.measures.shift), the real store cannot
    exercise that section: this runs it on a copy of the store with made-up values of some of
    them (w1_prev is absent at step 0, as the trainer logs it) and checks what it draws and
    says."""
    if any(k.startswith("shift") for k in metrics(run_dirs(fig1_params)[0]).columns):
        pytest.skip("the trainer logs the shift measures: test_fig1_notebook_shows_the_store_"
                    "numbers checks them on real runs")
    copy = tmp_path / "fig1_mnist"
    shutil.copytree(fig1_params["RUNS"], copy, ignore=shutil.ignore_patterns("*.pt", ".lock"))
    scales = {"bn": 1.0, "none": 3.0}
    dirs = run_dirs({"RUNS": copy})
    for d in dirs:
        scale, rows = scales[config(d)["model"]["norm"]], read_metrics(d)
        for k, row in enumerate(rows):
            for layer in (1, 2, 3):
                row[f"shift/h{layer}/w1_init"] = scale * layer * k
                if k:
                    row[f"shift/h{layer}/w1_prev"] = scale * layer * (k + 1) / 10
                    row[f"shift_inference/h{layer}/w1_prev_rel"] = scale * layer * k / 100
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = execute("fig1_shift", {"RUNS": str(copy)}, tmp_path)
    check_shift(run, dirs, ["shift", "shift_inference"])
    evaluations = len(rows)
    axes = run.figures["shift"]["axes"]  # rows: w1_init, w1_prev; columns: layers 1..3
    assert [a["lines"] for a in axes] == [[evaluations] * 2] * 3 + [[evaluations - 1] * 2] * 3
    assert len(run.figures["shift_inference"]["axes"]) == 3
    prev = {n: np.mean([s * layer * (k + 1) / 10 for layer in (1, 2, 3)
                        for k in range(1, evaluations)]) for n, s in scales.items()}
    assert f"moves by w1_prev {prev['none']:.4f} without BN and {prev['bn']:.4f} with BN" \
        in run.text
    rel = {n: np.mean([s * layer * k / 100 for layer in (1, 2, 3)
                       for k in range(1, evaluations)]) for n, s in scales.items()}
    assert f"moves by w1_prev_rel {rel['none']:.4f} without BN and {rel['bn']:.4f} with BN" \
        in run.text


def test_santurkar_notebook_shows_every_figure_and_the_computed_claims(executed, tmp_path):
    parameters, run = executed("santurkar")
    assert {"santurkar_mnist", "santurkar_mnist_distributions", "santurkar_mnist_lp",
            "santurkar_mnist_lp_distributions", "santurkar_mnist_measures", "dln"} <= set(
        run.figures)
    # the claims table is the scripts' own claims, verdicts included
    from bnrepro.experiments import dln as dln_experiment
    from bnrepro.experiments import santurkar

    expected = santurkar.analyse([Path(parameters["MNIST_RUNS"])])["claims"]
    dln = dln_experiment.load_runs(parameters["DLN_RUNS"])
    expected += dln_experiment.claims(dln, [1e-4], dln_experiment.ics_layers(dln))
    table = run.table("claims")
    assert list(table["claim"]) == [c["claim"] for c in expected]
    assert list(table["verdict"]) == [c["verdict"] for c in expected]
    assert list(table["ours"]) == [c["ours"] for c in expected]
    # the measures figure: a row per rate, ICS of the measured layers above 1 (layer 2 here)
    axes = run.figures["santurkar_mnist_measures"]["axes"]
    assert len(axes) == 6 and all(a["points"] > 0 for a in axes)


def test_batchsize_depth_notebook_shows_the_store_errors_and_depths(executed):
    parameters, run = executed("batchsize_depth")
    assert {"batchsize_mnist", "depth_cifar10-jpeg"} <= set(run.figures)
    errors = run.table("error_mnist")
    errors.columns = [str(c) for c in errors.columns]
    def statistics_batch(cfg: dict) -> int:  # b: the ghost batch, else the SGD batch
        return cfg["model"].get("bn_ghost_batch") or cfg["trainer"]["batch_size"]

    for d in sorted(Path(parameters["BATCHSIZE_RUNS"]).rglob("summary.json")):
        cfg, rows = config(d.parent), metrics(d.parent)
        seeds = [metrics(e.parent)["test/acc"].dropna().iloc[-1]
                 for e in Path(parameters["BATCHSIZE_RUNS"]).rglob("summary.json")
                 if config(e.parent)["model"]["norm"] == cfg["model"]["norm"]
                 and statistics_batch(config(e.parent)) == statistics_batch(cfg)]
        expected = 1 - sum(seeds) / len(seeds)
        assert float(errors.loc[cfg["model"]["norm"], str(statistics_batch(cfg))]) == (
            pytest.approx(expected, abs=1e-6)), (d, rows["step"].max())
    depth = run.table("depth_cifar10-jpeg").set_index("variant")
    assert set(depth.index) == {"BN", "NoNorm", "SkipInit"}
    assert set(depth["depth"]) == {8} and set(depth["seeds"]) == {1}
    assert "not CIFAR-10 numbers" in run.text
    claims = run.table("claims")
    assert len(claims) and set(claims["verdict"]) <= set(VERDICTS)
