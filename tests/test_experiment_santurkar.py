"""bnrepro.experiments.santurkar on tiny real santurkar_mnist runs (trained once per session):
numbers read from the logged metrics, verdicts that follow them (and flip when a copy of the
run store is edited to say the opposite), diverged seeds scored, nets that were not run
reported as not measured, bad input refused with exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnrepro.claims import read_claims
from bnrepro.experiments import santurkar
from bnrepro.run import machine
from tests.conftest import REPO, copy_store

NORMS = ("none", "bn", "noisy_bn", "noise_only", "lp1", "lp2", "lpinf")


@pytest.fixture(scope="session")
def store(santurkar_store) -> Path:
    return santurkar_store


def config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def run_dirs(root: Path, norm: str | None = None) -> list[Path]:
    dirs = sorted(p.parent for p in root.rglob("summary.json"))
    return [d for d in dirs if norm is None or config(d)["model"]["norm"] == norm]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def edit(root: Path, norm: str, change, rows: int | None = None, status: str | None = None
         ) -> None:
    """For every seed of `norm`: change(row, seed_index) edits each metrics row in place;
    keep the first `rows` rows; set the summary status."""
    for i, d in enumerate(run_dirs(root, norm)):
        lines = metrics(d)[:rows]
        for row in lines:
            change(row, i)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if status:
            summary = json.loads((d / "summary.json").read_text())
            (d / "summary.json").write_text(json.dumps(summary | {"status": status}))


def set_keys(suffix: str, values) -> callable:
    """A change setting every key ending in `suffix` to values[seed index] (steps > 0)."""
    def change(row, i):
        for key in row:
            if key.endswith(suffix) and row["step"] > 0:
                row[key] = values[i]
    return change


def run_analysis(root: Path, out: Path, *extra: str) -> tuple[pd.DataFrame, dict[str, str], dict]:
    """The analysis' CSV, verdicts by claim and JSON; without figures unless asked (drawing
    takes most of its time; test_numbers_are_read_from_the_logged_metrics draws them)."""
    assert santurkar.main([str(root), "--out", str(out), *(extra or ["--no-figures"])]) == 0
    table = pd.read_csv(out / "santurkar_mnist.csv").set_index("norm")
    numbers = json.loads((out / "santurkar_mnist.json").read_text())
    claims = numbers["distributional_shift"]["groups"][0]["claims"]
    return table, {c["claim"].removesuffix(" (lr 0.1)"): c["verdict"] for c in claims}, numbers


def independent_run_mean(root: Path, norm: str, key: str) -> list[float]:
    """Per seed: the mean of `key` over the logged evaluations after step 0."""
    out = []
    for d in run_dirs(root, norm):
        values = [r[key] for r in metrics(d) if r["step"] > 0 and r.get(key) is not None]
        out.append(sum(values) / len(values))
    return out


def test_numbers_are_read_from_the_logged_metrics(store, tmp_path):
    out = tmp_path / "results"
    table, verdicts, numbers = run_analysis(store, out, "--out", str(out))  # with figures
    assert list(table.index) == list(NORMS)  # the paper's order
    for norm in NORMS:
        train = independent_run_mean(store, norm, "train/acc")
        assert table.loc[norm, "train_acc_mean"] == pytest.approx(sum(train) / 3, abs=1e-6)
        assert table.loc[norm, "train_acc_min"] == pytest.approx(min(train), abs=1e-6)
        for measure in ("w1_step_rel", "w1_prev_rel"):
            shift = independent_run_mean(store, norm, f"shift/h2/{measure}")
            assert table.loc[norm, f"h2/{measure}_mean"] == pytest.approx(sum(shift) / 3,
                                                                          abs=1e-6)
        assert table.loc[norm, "seeds"] == 3 and table.loc[norm, "diverged"] == 0
    assert numbers["distributional_shift"]["groups"][0]["layers"] == [1, 2]
    assert len(verdicts) == 10
    for name in ("santurkar_mnist", "santurkar_mnist_distributions", "santurkar_mnist_lp",
                 "santurkar_mnist_lp_distributions", "santurkar_mnist_measures"):
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    claims = (out / "santurkar_claims.md").read_text()
    assert "| mnist |" in claims and "Verdict rule" in claims and "p = " in claims
    data = read_claims(out / "santurkar_claims.json")  # the format the report reads
    # every run counted under the machine that trained it (this one: the store is trained
    # by the session's fixture)
    trained = [json.loads(f.read_text()) for f in store.rglob("summary.json")]
    assert data["trained_on"] == [f"{machine.one_line(trained[0]['machine'])}: "
                                  f"{len(trained)} runs"]
    assert machine.cpu_model() in data["trained_on"][0]
    measures = numbers["ics_and_landscape"]["groups"][0]["claims"]
    assert [c["verdict"] for c in data["claims"]] == [*verdicts.values(),
                                                      *(c["verdict"] for c in measures)]
    assert len(measures) == 2 * 2 + 3  # ICS: cos and l2 in layers 2 and 3; 3 landscape claims
    assert all(c["evidence"] for c in data["claims"])  # every verdict with what decided it
    # a seed's number is the median over its measured steps (steps 10 and 20 here)
    for norm, label in (("bn", "BN"), ("none", "standard")):
        medians = []
        for d in run_dirs(store, norm):
            values = sorted(r["landscape/beta"] for r in metrics(d) if "landscape/beta" in r)
            assert len(values) == 2
            medians.append(sum(values) / 2)
        mean = sum(medians) / len(medians)
        assert f"{label} {mean:.3f} ({min(medians):.3f}..{max(medians):.3f})" in measures[-1][
            "ours"]
        side = measures[-1]["evidence"]["sides"][label == "standard"]
        assert side["seeds"] == pytest.approx(medians, abs=1e-6)  # the JSON keeps 6 digits
    assert {c["dataset"] for c in data["claims"]} == {"mnist"}
    assert all(c["claim"].endswith("(lr 0.1)") for c in data["claims"])
    assert {c["source"] for c in data["claims"]} == {"Santurkar et al. (2018)",
                                                     "Ioffe & Szegedy (2015)"}
    assert "santurkar_mnist_distributions.png" in data["figures"]


def off_chance(root: Path, *norms: str) -> None:
    """Make `norms` leave chance: validation accuracy 0.5 at every evaluation."""
    for norm in norms:
        edit(root, norm, lambda row, i: row.update({"val/acc": 0.5}))


@pytest.mark.parametrize(("noisy", "bn", "about", "better"), [
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "holds", "holds"),  # standard stays at 0.3
    ((0.9, 0.9, 0.9), (0.5, 0.5, 0.5), "does not hold", "holds"),  # far above: not "about"
    ((0.7, 0.3, 0.5), (0.5, 0.5, 0.5), "inconclusive", "inconclusive"),  # seeds overlap
    ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), "does not hold", "does not hold")])
def test_accuracy_verdicts_follow_the_numbers(store, tmp_path, noisy, bn, about, better):
    root = copy_store(store, tmp_path / "store")
    edit(root, "noisy_bn", set_keys("train/acc", noisy))
    edit(root, "bn", set_keys("train/acc", bn))
    edit(root, "none", set_keys("train/acc", (0.3, 0.3, 0.3)))
    off_chance(root, "bn")
    verdicts = run_analysis(root, tmp_path / "out")[1]
    assert verdicts["noisy BN trains about as well as BN"] == about
    assert verdicts["noisy BN trains better than standard"] == better
    assert verdicts["BN trains faster than standard"] == "holds"


def test_about_as_well_is_not_measured_when_bn_does_not_train(store, tmp_path):
    """Two nets at chance train 'about as well' trivially: the claim needs BN off chance."""
    root = copy_store(store, tmp_path / "store")
    for norm in ("noisy_bn", "bn"):
        edit(root, norm, set_keys("train/acc", (0.1, 0.1, 0.1)))
        edit(root, norm, lambda row, i: row.update({"val/acc": 0.1}))
    verdicts = run_analysis(root, tmp_path / "out")[1]
    assert verdicts["noisy BN trains about as well as BN"] == "not measured"


@pytest.mark.parametrize(("noisy", "standard", "expected"), [
    ((1.0, 1.0, 1.0), (0.01, 0.011, 0.012), "holds"),
    ((0.01, 0.011, 0.012), (1.0, 1.0, 1.0), "does not hold"),
    ((1.0, 0.01, 0.5), (0.1, 0.1, 0.1), "inconclusive")])
def test_shift_verdicts_follow_the_successive_step_shift(store, tmp_path, noisy, standard,
                                                         expected):
    """The shift claims read w1_step_rel (two successive steps), not w1_prev_rel (the drift
    between evaluations), which says the opposite here; a null effect (BN exactly as
    standard) is inconclusive, never "does not hold"."""
    root = copy_store(store, tmp_path / "store")
    edit(root, "noisy_bn", set_keys("w1_step_rel", noisy))
    edit(root, "none", set_keys("w1_step_rel", standard))
    edit(root, "bn", set_keys("w1_step_rel", standard))  # BN exactly as standard
    edit(root, "noisy_bn", set_keys("w1_prev_rel", standard))  # the drift: the other way
    edit(root, "none", set_keys("w1_prev_rel", noisy))
    verdicts = run_analysis(root, tmp_path / "out")[1]
    assert verdicts["noisy BN has less stable distributions (more shift) than standard"] == (
        expected)
    assert verdicts["BN's distributional stability differs only marginally from standard's"] == (
        "holds")  # BN's within 0.5..2 x standard's in every layer, for every seed
    assert verdicts["BN reduces internal covariate shift (distributional shift) vs standard"] == (
        "inconclusive")  # equal: neither side better


def test_marginal_fails_both_ways(store, tmp_path):
    """'Marginal' bounds BN's shift from both sides: 0.5x to 2x the standard's."""
    for factor in (0.1, 10.0):
        root = copy_store(store, tmp_path / f"store{factor}")
        edit(root, "none", set_keys("w1_step_rel", (0.1, 0.11, 0.12)))
        edit(root, "bn", set_keys("w1_step_rel", (0.1 * factor, 0.11 * factor, 0.12 * factor)))
        verdicts = run_analysis(root, tmp_path / f"out{factor}")[1]
        assert verdicts["BN's distributional stability differs only marginally from "
                        "standard's"] == "does not hold"


def test_one_layer_against_the_claim_makes_it_not_hold(store, tmp_path):
    """Every layer must show it: a claim over layers takes the worst layer's verdict."""
    root = copy_store(store, tmp_path / "store")
    edit(root, "noisy_bn", set_keys("w1_step_rel", (1.0, 1.0, 1.0)))
    edit(root, "none", set_keys("w1_step_rel", (0.01, 0.01, 0.01)))
    edit(root, "none", set_keys("h2/w1_step_rel", (5.0, 5.0, 5.0)))
    verdicts = run_analysis(root, tmp_path / "out")[1]
    assert verdicts["noisy BN has less stable distributions (more shift) than standard"] == (
        "does not hold")


def test_without_the_successive_step_shift_the_shift_claims_are_not_measured(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    for norm in NORMS:
        edit(root, norm, lambda row, i: [row.pop(k) for k in list(row) if "w1_step" in k])
    verdicts = run_analysis(root, tmp_path / "out")[1]
    for claim in ("noisy BN has less stable distributions (more shift) than standard",
                  "BN reduces internal covariate shift (distributional shift) vs standard",
                  "l_p normalisations have more distributional shift than standard"):
        assert verdicts[claim] == "not measured"


@pytest.mark.parametrize(("lp", "expected"), [((0.5, 0.5, 0.5), "holds"),
                                              ((0.45, 0.45, 0.45), "does not hold")])
def test_lp_verdicts_follow_the_numbers(store, tmp_path, lp, expected):
    root = copy_store(store, tmp_path / "store")
    edit(root, "bn", set_keys("train/acc", (0.5, 0.5, 0.5)))
    for norm in ("lp1", "lp2"):
        edit(root, norm, set_keys("train/acc", (0.6, 0.6, 0.6)))
    edit(root, "lpinf", set_keys("train/acc", lp))  # the worst l_p norm decides
    edit(root, "none", set_keys("train/acc", (0.2, 0.2, 0.2)))
    off_chance(root, "bn")
    verdicts = run_analysis(root, tmp_path / "out")[1]
    assert verdicts["l_p normalisations perform comparably to BN"] == expected
    assert verdicts["l_p normalisations train better than standard"] == "holds"


@pytest.mark.parametrize(("val", "standard", "expected"), [
    ((0.12, 0.12, 0.12), 0.5, "holds"), ((0.6, 0.6, 0.6), 0.5, "does not hold"),
    ((0.12, 0.6, 0.12), 0.5, "inconclusive"),
    ((0.12, 0.12, 0.12), 0.1, "not measured")])  # the standard net itself never trained
def test_noise_only_verdict_follows_the_numbers(store, tmp_path, val, standard, expected):
    root = copy_store(store, tmp_path / "store")
    edit(root, "noise_only", lambda row, i: row.update({"val/acc": val[i]}))
    edit(root, "none", lambda row, i: row.update({"val/acc": standard}))
    verdicts = run_analysis(root, tmp_path / "out")[1]
    assert verdicts["the same noise without BN prevents training entirely"] == expected


def test_a_diverged_seed_scores_chance_after_it_diverged(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    edit(root, "bn", set_keys("train/acc", (0.8, 0.8, 0.8)))
    first = run_dirs(root, "bn")[0]
    lines = metrics(first)[:2]  # steps 0 and 10 only
    (first / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = json.loads((first / "summary.json").read_text())
    (first / "summary.json").write_text(json.dumps(summary | {"status": "diverged"}))
    table = run_analysis(root, tmp_path / "out")[0]
    # seed 0: 0.8 at step 10, chance at step 20; seeds 1, 2: 0.8 at both
    assert table.loc["bn", "train_acc_min"] == pytest.approx((0.8 + 0.1) / 2)
    assert table.loc["bn", "train_acc_max"] == pytest.approx(0.8)
    assert table.loc["bn", "diverged"] == 1


def test_a_net_without_runs_is_not_measured(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    for d in run_dirs(root, "noise_only") + run_dirs(root, "lp2"):
        shutil.rmtree(d)
    verdicts = run_analysis(root, tmp_path / "out")[1]
    for claim in ("l_p normalisations perform comparably to BN",
                  "l_p normalisations have more distributional shift than standard"):
        assert verdicts[claim] == "not measured"  # lp2 missing, lp1 and lpinf run
    # no noise-only net at all: not part of this experiment, so no row (as on CIFAR)
    assert "the same noise without BN prevents training entirely" not in verdicts
    assert verdicts["noisy BN trains better than standard"] != "not measured"


def test_mixed_setups_and_bad_input_exit_2_with_one_error_line(store, tmp_path, capsys):
    root = copy_store(store, tmp_path / "store")
    d = run_dirs(root, "bn")[0]
    cfg = config(d)
    cfg["trainer"]["max_steps"] = 40
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert santurkar.main([str(root), "--out", str(tmp_path / "out")]) == 2
    assert "trainer.max_steps" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "bnrepro.analyse", "santurkar", str(empty),
                             "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "no santurkar_mnist" in lines[0]
    assert not (tmp_path / "out").exists()


def measures_verdicts(root: Path, out: Path) -> dict[str, str]:
    numbers = run_analysis(root, out)[2]
    return {c["claim"].removesuffix(" (lr 0.1)"): c["verdict"]
            for c in numbers["ics_and_landscape"]["groups"][0]["claims"]}


ICS_COS = "BN does not reduce gradient ICS: cos(G, G') (layer {})"
ICS_L2 = "BN does not reduce gradient ICS: ||G - G'|| (layer {})"
BETA = 'BN makes the landscape smoother: smaller "effective" beta-smoothness'


@pytest.mark.parametrize(("bn", "standard", "ics", "smoother"), [
    ((0.2, 0.25, 0.3), (0.9, 0.92, 0.95), "holds", "holds"),
    ((0.9, 0.92, 0.95), (0.2, 0.25, 0.3), "does not hold", "does not hold"),
    ((0.1, 0.8, 0.5), (0.5, 0.5, 0.5), "inconclusive", "inconclusive")])  # seeds overlap
def test_ics_and_landscape_verdicts_follow_the_numbers(store, tmp_path, bn, standard, ics,
                                                       smoother):
    """Gradient ICS per layer in both of Definition 2.1's measures: a lower cosine and a larger
    l2 difference are each more ICS."""
    root = copy_store(store, tmp_path / "store")
    for norm, values in (("bn", bn), ("none", standard)):
        edit(root, norm, set_keys("/cos", values))
        edit(root, norm, set_keys("/l2", [1 - v for v in values]))
        edit(root, norm, set_keys("landscape/beta", values))
    off_chance(root, "none")
    verdicts = measures_verdicts(root, tmp_path / "out")
    for layer in (2, 3):
        assert verdicts[ICS_COS.format(layer)] == ics
        assert verdicts[ICS_L2.format(layer)] == ics
    assert verdicts[BETA] == smoother


def test_the_landscape_needs_a_standard_net_off_chance(store, tmp_path):
    """A net at chance (a flat loss along a vanishing gradient) is not the paper's standard
    net: the landscape claims are not measured; the ICS claims do not depend on it."""
    root = copy_store(store, tmp_path / "store")
    for norm, values in (("bn", (0.2, 0.25, 0.3)), ("none", (0.9, 0.92, 0.95))):
        edit(root, norm, set_keys("/cos", values))
        edit(root, norm, set_keys("landscape/beta", values))
    edit(root, "none", lambda row, i: row.update({"val/acc": 0.1}))
    verdicts = measures_verdicts(root, tmp_path / "out")
    assert verdicts[BETA] == "not measured"
    assert verdicts[ICS_COS.format(2)] == "holds"


def test_a_non_finite_cosine_counts_as_the_worst(store, tmp_path):
    """A cosine that was not finite (stored as null) is the worst cosine, -1: BN's ICS with
    nulls at every step is decidedly worse than a standard net's cosines near 1."""
    root = copy_store(store, tmp_path / "store")
    edit(root, "none", set_keys("/cos", (0.9, 0.92, 0.95)))
    edit(root, "bn", lambda row, i: row.update(
        {k: None for k in list(row) if k.endswith("/cos")}))
    verdicts = measures_verdicts(root, tmp_path / "out")
    assert verdicts[ICS_COS.format(2)] == "holds"


def test_runs_without_measures_leave_those_claims_not_measured(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    for norm in NORMS:
        edit(root, norm, lambda row, i: [row.pop(k) for k in list(row)
                                         if k.startswith(("ics/", "landscape/"))])
    numbers = run_analysis(root, tmp_path / "out")[2]
    assert {c["verdict"] for c in numbers["ics_and_landscape"]["groups"][0]["claims"]} == {
        "not measured"}

# ---- the shift between two successive steps (probe.shift.successive, measures/shift.py) ----

SUCCESSIVE_TINY = ["experiment=santurkar_mnist", "model.norm=noisy_bn,lp2,none", "seed=0",
                   "model.hidden=[16,16]", "trainer.max_steps=12", "trainer.test_every=12",
                   "trainer.population_batches=2", "probe.num_examples=120",
                   "dataset.val_size=1000", "trainer.progress=false", "measures.ics.every=0",
                   "measures.landscape.every=0", "trainer.checkpoint_every=0"]


def rows_by_norm(root: Path) -> dict[str, list[dict]]:
    return {config(d)["model"]["norm"]: metrics(d) for d in run_dirs(root)}


@pytest.fixture(scope="module")
def successive_stores(tmp_path_factory, mnist, run_train) -> dict[str, Path]:
    """The same three nets (noisy BN, l_p2, standard) trained three ways: evaluated every 4
    steps with and without w1_step, and evaluated at every step (w1_prev is then the shift
    between successive steps)."""
    stores = {}
    for name, extra in (("step", ["trainer.eval_every=4", "probe.shift.successive=true"]),
                        ("plain", ["trainer.eval_every=4", "probe.shift.successive=false"]),
                        ("every", ["trainer.eval_every=1", "probe.shift.successive=false"])):
        stores[name] = tmp_path_factory.mktemp(name) / "santurkar_mnist"
        run_train("-m", *SUCCESSIVE_TINY, *extra, f"hydra.sweep.dir={stores[name]}")
    return stores


def test_the_successive_step_measure_does_not_change_training(successive_stores):
    """With and without w1_step the runs train bit-identically: every logged number but the
    new keys, and the final weights, equal."""
    import torch

    step, plain = (rows_by_norm(successive_stores[k]) for k in ("step", "plain"))
    for norm, rows in step.items():
        assert [{k: v for k, v in r.items() if "w1_step" not in k} for r in rows] == plain[norm]
        assert any("shift/h1/w1_step_rel" in r for r in rows)
    weights = {}
    for name in ("step", "plain"):
        for d in run_dirs(successive_stores[name]):
            (pt,) = d.rglob("*.pt")
            state = torch.load(pt, map_location="cpu", weights_only=False)
            weights[name, config(d)["model"]["norm"]] = state
    def same(x, y) -> bool:  # nested dicts and lists of tensors (state.py's states)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list | tuple):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y, strict=True))
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y

    for norm in step:
        a, b = (weights[name, norm]["state"] for name in ("step", "plain"))
        assert same(a["model"], b["model"])
        assert same(a["streams"], b["streams"])  # the training noise's random streams


def test_w1_step_is_the_shift_between_two_successive_steps(successive_stores):
    """w1_step at evaluation t (every 4 steps) equals w1_prev of a run evaluated at every
    step, whose previous evaluation is step t - 1: the same probe images, the noise of each
    step, one step apart; not the drift since the previous evaluation (4 steps)."""
    step, every = (rows_by_norm(successive_stores[k]) for k in ("step", "every"))
    for norm, rows in step.items():
        at = {r["step"]: r for r in every[norm]}
        checked = 0
        for row in rows:
            if row["step"] == 0:
                assert "shift/h1/w1_step" not in row  # nothing before step 0
                continue
            for key in [k for k in row if "/w1_step" in k]:
                expected = at[row["step"]][key.replace("w1_step", "w1_prev")]
                assert row[key] == pytest.approx(expected, rel=1e-6, abs=1e-9), (norm, key)
                checked += 1
            assert row["shift/h1/w1_step_rel"] != pytest.approx(row["shift/h1/w1_prev_rel"])
        assert checked == 3 * 2 * 2  # evaluations 4, 8, 12 x layers h1, h2 x raw and _rel
