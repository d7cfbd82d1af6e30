"""The tiers (scale=cpu|long|paper): every profile composes over its experiment, changes only
keys the experiment has (a typo would otherwise add a key nobody reads), and leaves the cpu
tier's runs where they were."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from bnrepro.config import CONF_DIR, compose_config, flatten
from bnrepro.run.checkpoint import fingerprint
from bnrepro.validation import ConfigError, validate
from tests.conftest import compose_dln, sweep_params

PROFILES = sorted((CONF_DIR / "profile").glob("*/*.yaml"))


def profile_keys(path: Path) -> dict:
    """The dotted keys a profile sets (its defaults list and hydra.* aside), with values."""
    tree = yaml.safe_load(path.read_text()) or {}
    tree.pop("defaults", None)
    tree.pop("hydra", None)
    return flatten(tree)


def compose_tier(experiment: str, scale: str):
    if experiment == "dln":
        return compose_dln([f"scale={scale}"])
    return compose_config([f"experiment={experiment}", f"scale={scale}"])


def test_every_experiment_but_fig1_and_the_sweeps_has_a_long_and_a_paper_profile():
    tiers = {p.parent.name: {q.stem for q in PROFILES if q.parent == p.parent} for p in PROFILES}
    experiments = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    expected = (experiments - {"fig1_mnist", "sweep_mnist", "sweep_cifar"}) | {"dln"}
    # fig2's base-rate grid is the cpu tier's check at the long tier (one seed per rate there
    # could never decide it): make fig2-lr says so and trains nothing at SCALE=long
    assert tiers == {"long": expected - {"fig2_cifar_lr"}, "paper": expected}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_profile_sets_only_keys_its_experiment_has_and_its_values_arrive(path):
    scale, experiment = path.parent.name, path.stem
    cpu = OmegaConf.to_container(compose_tier(experiment, "cpu"), resolve=True)
    tier_cfg = compose_tier(experiment, scale)
    tier = OmegaConf.to_container(tier_cfg, resolve=True)
    flat_cpu, flat_tier = flatten(cpu), flatten(tier)
    for key, value in profile_keys(path).items():
        assert key in flat_cpu, f"{path.name} sets {key}, which {experiment} does not have"
        assert flat_tier[key] == value, f"{key}: the profile's {value!r} did not arrive"
    assert tier["scale"]["name"] == scale and tier["scale"]["runs"] == f"runs/{scale}"
    changed = {k for k in flat_cpu if k in flat_tier and flat_cpu[k] != flat_tier[k]}
    assert changed - {"scale.name", "scale.runs", "out_dir"}, f"{path} changes nothing"
    if experiment != "dln":
        validate(tier_cfg)


def test_the_cpu_tier_is_the_experiment_file_and_keeps_its_run_folder():
    cfg = compose_config(["experiment=fig2_cifar"])
    assert cfg.scale.name == "cpu" and cfg.scale.runs == "runs"
    long = compose_config(["experiment=fig2_cifar", "scale=long"])
    # The tier is no part of what a run is: runs made before tiers existed still resume.
    assert fingerprint(cfg) == fingerprint(compose_config(["experiment=fig2_cifar",
                                                           "scale.runs=elsewhere"]))
    assert fingerprint(cfg) != fingerprint(long)


@pytest.mark.parametrize("scale, grid", [("cpu", True), ("long", False), ("paper", True)])
def test_fig2_trains_and_reads_its_rate_grid_only_at_a_tier_with_a_grid_profile(scale, grid):
    import subprocess
    dry = subprocess.run(["make", "-n", "--no-print-directory", "fig2", f"SCALE={scale}"],
                         cwd=CONF_DIR.parent, capture_output=True, text=True, check=True).stdout
    assert ("experiment=fig2_cifar_lr" in dry) == grid
    assert ("--lr-runs" in dry) == grid
    if not grid:
        assert "no long profile" in dry


def _sweep_points(*paths: Path) -> list[list[str]]:
    """Every combination of the sweeper params of these configs, the seed left out."""
    import itertools
    axes = [[f"{k}={v}" for v in values] for k, values in sweep_params(*paths).items()
            if k != "seed"]
    return [list(point) for point in itertools.product(*axes)]


# Each experiment at each tier it has: its own file (cpu), and each of its profiles
TIERS = [(p.stem, "cpu") for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))] + [
    (p.stem, p.parent.name) for p in PROFILES if p.stem != "dln"]


@pytest.mark.parametrize("experiment, scale", TIERS, ids=[f"{e}-{s}" for e, s in TIERS])
def test_every_run_of_every_tier_is_a_valid_config(experiment, scale):
    # A variant that derives its cadence from a tier's steps (fig2's BN-x5 family) made long
    # runs the trainer refuses: each point of the tier's sweep composes and validates, before
    # anyone waits hours for it.
    configs = [CONF_DIR / "experiment" / f"{experiment}.yaml"]
    if scale != "cpu":
        configs.append(CONF_DIR / "profile" / scale / f"{experiment}.yaml")
    for point in _sweep_points(*configs):
        validate(compose_config([f"experiment={experiment}", f"scale={scale}", *point]))


@pytest.mark.parametrize("experiment", ["fig1_mnist", "fig2_cifar_lr", "sweep_mnist"])
def test_an_experiment_without_a_profile_at_a_tier_is_refused_there_not_trained_cpu_sized(
        experiment):
    # Its cpu tier's runs would land in runs/long/ and be read as long-tier results.
    with pytest.raises(ConfigError, match=f"{experiment} has no long profile .*"
                                          f"conf/profile/long/{experiment}.yaml"):
        validate(compose_config([f"experiment={experiment}", "scale=long"]))
    validate(compose_config([f"experiment={experiment}", "scale=cpu"]))


def test_the_deep_linear_net_is_refused_at_a_tier_without_its_profile():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "bnrepro.train_dln", "scale=long",
                           "scale.profiled=false"], cwd=CONF_DIR.parent, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "error: scale=long: dln has no long profile" in done.stderr
