"""A population member behaves exactly as the same config run alone; the launcher groups jobs."""

import math

import pytest

from bnrepro.config import compose_config
from bnrepro.run.store import read_metrics, read_summary
from bnrepro.train import train_population

# Members differ in every per-member knob: lr, dropout (on and off), seed, momentum (on and
# off), weight decay (on and off). The rates keep the dynamics stable: at lr 0.1 with momentum
# 0.9 a BN-ReLU net amplifies float rounding so much that the same run on 1 and on 2 CPU
# threads ends 0.1 apart in its weights after 100 steps (measured), and no tolerance could
# tell a mix-up from that.
MEMBERS = [(0.03, 0.0, 0, 0.9, 0.0), (0.3, 0.3, 1, 0.0, 1e-3), (0.1, 0.1, 2, 0.5, 1e-2)]
# float32: the batched kernels (bmm over P, BN over P*F channels) may sum in another order than
# with P = 1, a relative error of ~1e-7 per op; over 200 steps we measured at most 1e-6. 1e-4
# leaves room across CPUs and BLAS builds while catching any real mix-up (wrong seed, data
# order, lr or dropout for a member changes these metrics by 1e-2 or more).
FLOAT_ATOL = 1e-4
ACC_ATOL = 2 / 10000  # at most two of the 10,000 test images may flip on such a difference


def configs(norm, activation):
    return [compose_config(["experiment=fig1_mnist", "debug=smoke", f"model.norm={norm}",
                            f"model.activation={activation}", f"optim.lr={lr}",
                            f"model.dropout={dropout}", f"seed={seed}",
                            f"optim.momentum={momentum}", f"optim.weight_decay={decay}",
                            "trainer.max_steps=200", "trainer.eval_every=50"])
            for lr, dropout, seed, momentum, decay in MEMBERS]


def assert_same_metrics(together: list[dict], alone: list[dict], member: int) -> None:
    assert [r["step"] for r in together] == [r["step"] for r in alone]
    for row_p, row_s in zip(together, alone, strict=True):
        assert row_p.keys() == row_s.keys()
        for key, value in row_s.items():
            tol = ACC_ATOL if key.endswith("acc") else FLOAT_ATOL
            assert math.isclose(row_p[key], value, rel_tol=0, abs_tol=tol), (member, key)


@pytest.mark.parametrize(("norm", "activation"), [("bn", "sigmoid"), ("none", "relu"),
                                                  ("bn", "relu"), ("none", "sigmoid")])
def test_member_k_reproduces_the_single_run(norm, activation, tmp_path, mirror):
    cfgs = configs(norm, activation)
    train_population(cfgs, [tmp_path / f"pop{k}" for k in range(len(cfgs))])
    for k, cfg in enumerate(cfgs):
        train_population([cfg], [tmp_path / f"single{k}"])
        assert_same_metrics(read_metrics(tmp_path / f"pop{k}"),
                            read_metrics(tmp_path / f"single{k}"), k)
        assert read_summary(tmp_path / f"pop{k}")["population_size"] == len(cfgs)


def test_a_diverging_member_is_frozen_and_the_others_go_on(tmp_path, mirror):
    cfgs = [compose_config(["experiment=fig1_mnist", "debug=smoke", "model.norm=none",
                            "model.activation=relu", f"optim.lr={lr}"]) for lr in (0.1, 1e6)]
    summaries = train_population(cfgs, [tmp_path / "ok", tmp_path / "boom"])
    assert summaries[0]["status"] == "completed" and summaries[0]["steps_done"] == 40
    assert summaries[1]["status"] == "diverged"
    last_logged = read_metrics(tmp_path / "boom")[-1]["step"]
    assert last_logged < summaries[1]["diverged_at_step"]
    assert read_summary(tmp_path / "boom")["status"] == "diverged"
    # the survivor trains exactly as it would alone: the frozen member leaks nothing into it
    train_population(cfgs[:1], [tmp_path / "alone"])
    assert_same_metrics(read_metrics(tmp_path / "ok"), read_metrics(tmp_path / "alone"), 0)


@pytest.mark.parametrize("max_population", [1, 64])
def test_a_bad_job_fails_alone_and_the_others_train(max_population, run_train, tmp_path,
                                                    mirror):
    """Seen: one member's ConfigError failed its whole population, and a lone bad job's
    sys.exit(2) stopped every population after it (max_population=1 makes all jobs lone)."""
    result = run_train("-m", "experiment=fig1_mnist", "debug=smoke", "seed=0",
                       "model.norm=bn,none", "optim.lr=-1,0.1",
                       f"hydra.launcher.max_population={max_population}",
                       f"hydra.sweep.dir={tmp_path}",
                       "hydra.sweep.subdir=${model.norm}_lr${optim.lr}", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("optim.lr=-1" in e for e in errors), result.stderr
    for norm in ("bn", "none"):
        assert read_summary(tmp_path / f"{norm}_lr0.1")["status"] == "completed"
        assert read_summary(tmp_path / f"{norm}_lr-1") is None


def test_launcher_groups_by_architecture_and_writes_every_job(run_train, tmp_path, mirror):
    result = run_train("-m", "experiment=fig1_mnist", "debug=smoke", "hydra/launcher=population",
                       "model.norm=bn,none", "seed=0,1", "optim.lr=0.1,0.5",
                       "hydra.launcher.max_population=3", f"hydra.sweep.dir={tmp_path}")
    # 8 jobs, 2 architectures of 4 jobs each, cut at 3: populations of 3, 1, 3, 1.
    assert "as 4 population(s) of sizes [3, 1, 3, 1]" in result.stdout + result.stderr
    run_dirs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert len(run_dirs) == 8
    for run_dir in run_dirs:
        summary = read_summary(run_dir)
        assert summary["status"] == "completed" and summary["steps_done"] == 40
        assert (run_dir / ".hydra" / "config.yaml").is_file()
        assert f"optim.lr={summary['axes']['lr']}" in run_dir.name
        assert f"seed={summary['axes']['seed']}" in run_dir.name
    sizes = sorted(read_summary(d)["population_size"] for d in run_dirs)
    assert sizes == [1, 1, 3, 3, 3, 3, 3, 3]


def test_members_with_their_own_schedule_decay_and_augmentation_match_their_solo_runs(
        tmp_path, mirror):
    """fig2_cifar's variants train together: per-member rate decay, weight decay, momentum,
    crops and flips. Catches a schedule or augmentation shared across members or drawn from
    another member's stream. Rates kept stable as in MEMBERS (momentum 0.9 at lr 0.05 already
    amplified rounding to 1.4e-4 in a probe quantile within 100 steps)."""
    members = [(0.03, 0.5, 20, 1e-2, 2, True, 0), (0.02, 1.0, 1000, 0.0, 0, True, 1),
               (0.03, 0.25, 5, 1e-3, 1, False, 2)]
    cfgs = [compose_config(["experiment=fig1_mnist", "debug=smoke", "model.norm=bn",
                            "model.activation=relu", "optim.momentum=0.5", f"optim.lr={lr}",
                            f"optim.lr_decay={decay}", f"optim.lr_decay_steps={steps}",
                            f"optim.weight_decay={wd}", f"augment.crop_padding={pad}",
                            f"augment.flip={str(flip).lower()}", f"seed={seed}",
                            "trainer.max_steps=100", "trainer.eval_every=25"])
            for lr, decay, steps, wd, pad, flip, seed in members]
    train_population(cfgs, [tmp_path / f"pop{k}" for k in range(len(cfgs))])
    for k, cfg in enumerate(cfgs):
        train_population([cfg], [tmp_path / f"single{k}"])
        assert_same_metrics(read_metrics(tmp_path / f"pop{k}"),
                            read_metrics(tmp_path / f"single{k}"), k)


def test_divergence_read_back_every_few_steps_freezes_the_same_members_at_the_same_steps(
        tmp_path, mirror):
    """trainer.divergence_check_every > 1 (a GPU's default): a diverged member freezes on the
    device at once and the host records it later. The same run as with a read every step: the
    same rows, the same diverged_at_step and reason, the frozen member's weights held where
    its last good update left them (an unmasked update would move them)."""
    import torch

    from bnrepro.run.checkpoint import path, steps

    members = [("0.1", "0.0"), ("1e6", "0.0"), ("0.3", "0.3")]  # lr, dropout: one explodes

    def run(check_every: int) -> tuple[list[dict], list[list[dict]], list[dict]]:
        cfgs = [compose_config(["experiment=fig1_mnist", "debug=smoke", "model.norm=none",
                                "model.activation=relu", f"optim.lr={lr}",
                                f"model.dropout={p}", f"seed={k}",
                                f"trainer.divergence_check_every={check_every}"])
                for k, (lr, p) in enumerate(members)]
        dirs = [tmp_path / f"every{check_every}" / str(k) for k in range(len(cfgs))]
        summaries = train_population(cfgs, dirs)
        weights = [torch.load(path(d, steps(d)[0]), weights_only=True)["state"]["model"]
                   for d in dirs]
        return [{k: v for k, v in s.items() if not k.endswith("time_s")} for s in summaries], \
            [read_metrics(d) for d in dirs], weights

    each, each_rows, each_weights = run(1)
    later, later_rows, later_weights = run(7)
    assert each[1]["status"] == "diverged" and each[1]["diverged_at_step"] == 2
    assert later == each
    assert later_rows == each_rows
    for a, b in zip(each_weights, later_weights, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, equal_nan=True)


@pytest.mark.gpu
def test_on_a_gpu_the_step_streams_live_there_and_members_still_match_their_solo_runs(
        tmp_path, mirror):
    """Dropout and augmentation draw on the GPU (seeding.on_device); a member of a population
    still draws what it draws alone. Not run where this repo is developed (no GPU there)."""
    from bnrepro.models import build_model, move_step_streams

    cfgs = [compose_config(["experiment=fig1_mnist", "debug=smoke", "trainer.device=cuda",
                            f"model.dropout={p}", f"seed={k}", "augment.crop_padding=2",
                            "augment.flip=true"]) for k, p in enumerate((0.2, 0.5))]
    model = build_model(cfgs, (1, 28, 28)).cuda()
    move_step_streams(model, "cuda")
    assert {g.device.type for g in model.dropout.generators} == {"cuda"}
    train_population(cfgs, [tmp_path / f"pop{k}" for k in range(2)])
    for k, cfg in enumerate(cfgs):
        train_population([cfg], [tmp_path / f"single{k}"])
        assert_same_metrics(read_metrics(tmp_path / f"pop{k}"),
                            read_metrics(tmp_path / f"single{k}"), k)


def test_a_member_without_dropout_keeps_a_cpu_stream_it_never_draws_from(monkeypatch):
    """Seen on a GPU: a dropout-0 member trained among members that drop saved a CUDA dropout
    stream (its layer's streams all moved to the device, and it drew from its own), and
    resumed among dropout-0 members, whose streams stay on the CPU, it was refused. Each
    member's stream device is its own choice now, as augmentation's: here its layer's
    streams move to a (simulated) GPU, and the dropout-0 member's stays on the CPU, untouched
    by training, and loads into that member regrouped among dropout-0 members."""
    import torch

    from bnrepro.models import build_model, move_step_streams
    from bnrepro.state import SubmoduleStates

    class GpuLikeGenerator:
        """A stream moved to a GPU, as a checkpoint sees it: a generator on another device
        whose state is Philox's 16 bytes (the CPU's Mersenne Twister has 5,056)."""

        def __init__(self, device):
            self.device = torch.device(device)

        def manual_seed(self, seed: int) -> "GpuLikeGenerator":
            return self

        def get_state(self) -> torch.Tensor:
            return torch.zeros(16, dtype=torch.uint8)

    cfgs = [compose_config(["experiment=fig1_mnist", "model.hidden=[8,8]", f"seed={k}",
                            f"model.dropout={p}"]) for k, p in enumerate((0.5, 0.0))]
    mixed, alone = build_model(cfgs, (1, 28, 28)), build_model(cfgs[1:], (1, 28, 28))
    fresh = mixed.dropout.generators[1].get_state()
    mixed(torch.rand(2, 20, 1, 28, 28))  # a training step's forward pass, on the CPU
    assert torch.equal(mixed.dropout.generators[1].get_state(), fresh)  # never drawn
    assert not torch.equal(mixed.dropout.generators[0].get_state(), fresh)
    real = torch.Generator
    with monkeypatch.context() as patch:
        patch.setattr(torch, "Generator", lambda device="cpu": real(device) if torch.device(
            device).type == "cpu" else GpuLikeGenerator(device))
        mixed = build_model(cfgs, (1, 28, 28))
        for model in (mixed, alone):
            move_step_streams(model, "cuda")
    assert [g.device.type for g in mixed.dropout.generators] == ["cuda", "cpu"]
    saved = SubmoduleStates(mixed, 2).member_states()[1]
    SubmoduleStates(alone, 1).load_member_states([saved])
