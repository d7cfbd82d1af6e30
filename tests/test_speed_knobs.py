"""The speed knobs model.memory_format and trainer.compile, and the ResNet's member-by-member
step: they change how a step computes, never what it trains (to a stated tolerance), they
reach what they claim to reach, and they are not part of a run's identity."""

import copy
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from bnrepro import train
from bnrepro.bench.workloads import random_cifar, trainer_dataset
from bnrepro.config import CONF_DIR, compose_config
from bnrepro.models import CNN, ResNet
from bnrepro.models import compiled as compiled_module
from bnrepro.models.layers import PopulationConv2d, channels_last, is_channels_last
from bnrepro.run.checkpoint import fingerprint
from bnrepro.run.store import read_metrics
from bnrepro.validation import ConfigError, validate

CNN_TINY = {"widths": (4, 8), "classifier_hidden": 16, "image_size": 8,
            "convs_per_stage": (1, 2)}
RESNET_TINY = {"widths": (4, 8, 8), "image_size": 8, "depth": 8}
# How far a knob may move a few steps of training: other kernels (oneDNN's channels_last
# convs, BN's channels_last reductions, inductor's fused kernels) round differently, ~1e-7
# relative per op; a few SGD steps keep that far below 1e-4. A knob that changed the maths
# (a wrong layout read as NCHW, a skipped update) moves the loss by O(1e-2) or more.
TOLERANCE = {"rel": 1e-4, "abs": 1e-6}


def make(kind: str, seeds: list[int], **kwargs) -> torch.nn.Module:
    if kind == "cnn":
        return CNN(seeds, norm="bn", activation="relu", **CNN_TINY, **kwargs)
    return ResNet(seeds, residual_scale="skipinit", **RESNET_TINY, **kwargs)


@contextmanager
def one_thread():
    """Torch's batched products (the linear head) may split work between threads differently
    for P members than for one, which changes float rounding only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Layouts(TorchDispatchMode):
    """Records the layout of every 4-D input of the convs and norms (forward and backward)
    and of the max-poolings' forward that run inside it. (The last pooling's backward gets its
    gradient from the flattened head, NCHW; models/pooling.py takes either layout.)"""

    OPS = ("convolution", "batch_norm", "group_norm", "max_pool2d_with_indices.default")

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(op in name for op in self.OPS):
            for a in args:
                # a layout is ambiguous with one channel or one position: those say nothing
                if isinstance(a, torch.Tensor) and a.dim() == 4 and a.is_floating_point() \
                        and a.shape[1] > 1 and a.shape[2] * a.shape[3] > 1:
                    self.seen.append((name, "channels_last" if a.stride(1) == 1 else
                                      "nchw" if a.stride(3) == 1 else "other"))
        return func(*args, **(kwargs or {}))


def layouts_of_a_step(model: torch.nn.Module, folded: bool) -> list[tuple[str, str]]:
    P = model.population_size
    x, y = torch.randn(P, 6, 3, 8, 8), torch.randint(0, 10, (P, 6))
    with Layouts() as seen:
        out = model(x, preactivations=[]) if folded else model(x)
        F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
    return seen.seen


@pytest.mark.parametrize("kind", ["cnn", "resnet"])
@pytest.mark.parametrize(("P", "folded"), [(1, False), (3, False), (3, True)])
def test_channels_last_reaches_every_conv_norm_and_pooling(kind, P, folded):
    """channels_last: every conv, BN and pooling of a training step, forward and backward,
    sees channels-innermost tensors (member by member and folded alike), and the weights are
    laid out so; contiguous: the convs and BN see NCHW, as always. A knob that only
    converted the input (the first conv's output would follow the weights back to NCHW), or
    a norm that copied to NCHW, would fail here."""
    model = make(kind, list(range(P)), memory_format="channels_last")
    assert all(is_channels_last(m.weight) and not m.weight.is_contiguous()
               for m in model.modules() if isinstance(m, PopulationConv2d)
               and m.weight.shape[-1] > 1)
    seen = layouts_of_a_step(model, folded)
    ops = {name for name, _ in seen}
    assert any("convolution_backward" in n for n in ops) and any("batch_norm" in n for n in ops)
    assert {layout for _, layout in seen} == {"channels_last"}, seen
    default = layouts_of_a_step(make(kind, list(range(P))), folded)
    assert {layout for name, layout in default if "max_pool" not in name} == {"nchw"}


@pytest.mark.parametrize("kind", ["cnn", "resnet"])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_a_member_trains_bit_identically_to_its_solo_run(kind, memory_format):
    """Member by member, a member runs its solo run's calls in either layout: the same
    logits and gradients to the bit (the ResNet too, now that it has the member path; its
    folded step reduced SkipInit's alpha gradient over the members at once)."""
    seeds = [3, 7, 11]
    with one_thread():
        population = make(kind, seeds, memory_format=memory_format)
        with torch.no_grad():  # members whose alphas differ and are not 0 (SkipInit's start)
            for name, p in population.named_parameters():
                if name.endswith("alpha"):
                    p.uniform_(0.5, 1.5)
        x, y = torch.randn(3, 6, 3, 8, 8), torch.randint(0, 10, (3, 6))
        out = population(x)
        F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
        for k, seed in enumerate(seeds):
            alone = make(kind, [seed], memory_format=memory_format)
            with torch.no_grad():
                for a, b in zip(alone.parameters(), population.parameters(), strict=True):
                    a.copy_(b[k:k + 1])
            solo = alone(x[k:k + 1])
            F.cross_entropy(solo.transpose(1, 2), y[k:k + 1]).backward()
            assert torch.equal(solo[0], out[k])
            for a, b in zip(alone.parameters(), population.parameters(), strict=True):
                assert torch.equal(a.grad[0], b.grad[k])


def test_the_resnet_runs_member_by_member_where_every_layer_can(monkeypatch):
    """The training forward runs each member alone (one call per member), and agrees with the
    folded forward (which the measurements of preactivations still take): logits to the bit,
    gradients to float rounding (SkipInit's alpha gradient is reduced over one member's
    values instead of all members' at once)."""
    model = make("resnet", [0, 1, 2])
    with torch.no_grad():
        for block in model.blocks:
            block.alpha.uniform_(0.5, 1.5)
    calls = []
    original = ResNet._member_features
    monkeypatch.setattr(ResNet, "_member_features",
                        lambda self, x: calls.append(1) or original(self, x))
    x, y = torch.randn(3, 6, 3, 8, 8), torch.randint(0, 10, (3, 6))
    results = []
    for kwargs in ({}, {"preactivations": []}):
        m = copy.deepcopy(model)
        out = m(x, **kwargs)
        F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
        results.append((out, [p.grad for p in m.parameters()], list(m.buffers())))
    assert len(calls) == 1
    (out_m, grads_m, buffers_m), (out_f, grads_f, buffers_f) = results
    assert torch.equal(out_m, out_f)
    assert all(torch.equal(a, b) for a, b in zip(buffers_m, buffers_f, strict=True))
    for a, b in zip(grads_m, grads_f, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert model._member_features(x) is not None
    assert make("resnet", [0, 1, 2], conv_execution="grouped")._member_features(x) is None
    assert make("resnet", [0], conv_execution="grouped")._member_features(x[:1]) is not None
    brn = ResNet([0, 1, 2], norm="brn", **RESNET_TINY)
    assert brn._member_features(x) is None  # Batch Renorm has no per-member path: folded


def test_a_strided_1x1_conv_on_channels_last_avoids_onednn_and_computes_the_same():
    """oneDNN's backward of a strided 1x1 conv on an nhwc input with few channels corrupts
    memory (layers.PopulationConv2d._conv2d): the conv runs on the positions it reads instead,
    the same outputs and gradients as torch's strided conv on an NCHW input."""
    conv = PopulationConv2d(1, 4, 8, kernel_size=1, padding=0, stride=2, bias=False)
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(1, 6, 4, 8, 8)
    results = []
    for layout in (lambda t: t, channels_last):
        inp = layout(x.clone()).requires_grad_(True)
        conv.zero_grad()
        out = conv(inp)
        out.backward(torch.ones_like(out))
        results.append((out, inp.grad, conv.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- through the trainer: a few steps of training on random CIFAR-shaped images -----------

NETS = {"cnn": ["model=cnn", "model.width_multiplier=0.25"],
        "resnet": ["model=resnet", "model.depth=8", "model.width_multiplier=0.25",
                   "model.residual_scale=skipinit"]}
STEPS = 4


def train_run(tmp_path: Path, net: str, extra: list[str], seeds=(0,), name: str = "run"
              ) -> list[dict]:
    """Each member's logged rows (every step evaluated, so every step's training loss)."""
    base = compose_config([*NETS[net], "dataset=cifar10", "trainer.batch_size=8",
                           f"trainer.max_steps={STEPS}", "trainer.eval_every=1",
                           "trainer.population_batches=1", "dataset.val_size=16",
                           "trainer.test_examples=16", "probe.networks=[]",
                           "trainer.progress=false", "trainer.checkpoint_every=0",
                           "trainer.threads=1", "optim.lr=0.05", *extra])
    validate(base)
    cfgs = []
    for seed in seeds:
        cfg = copy.deepcopy(base)
        cfg.seed = seed
        cfgs.append(cfg)
    dirs = [tmp_path / name / str(s) for s in seeds]
    with trainer_dataset(random_cifar(64, 16)):
        train.train_population(cfgs, dirs)
    return [read_metrics(d) for d in dirs]


def losses(rows: list[dict]) -> list[float]:
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.parametrize("net", NETS)
def test_channels_last_trains_as_contiguous_and_members_as_their_solo_runs(tmp_path, net):
    default = train_run(tmp_path, net, [], seeds=(0, 1), name="default")
    knob = train_run(tmp_path, net, ["model.memory_format=channels_last"], seeds=(0, 1),
                     name="knob")
    solo = train_run(tmp_path, net, ["model.memory_format=channels_last"], seeds=(1,),
                     name="solo")
    assert len(losses(default[0])) == STEPS
    for a, b in zip(default, knob, strict=True):
        assert losses(b) == pytest.approx(losses(a), **TOLERANCE)
    assert losses(solo[0]) == losses(knob[1])  # a member is its solo run, to the bit


def test_compile_trains_the_compiled_forward_as_the_eager_one(tmp_path, monkeypatch):
    """trainer.compile: every training step goes through torch.compile's module (a knob
    silently ignored would call the model itself), and trains as eagerly to the tolerance."""
    made, calls = [], []
    real = train.compiled_forward

    def spying(model, example):
        forward = real(model, example)
        made.append(forward)
        return lambda x: calls.append(1) or forward(x)

    monkeypatch.setattr(train, "compiled_forward", spying)
    default = train_run(tmp_path, "cnn", [], seeds=(0, 1), name="default")
    compiled = train_run(tmp_path, "cnn", ["trainer.compile=true"], seeds=(0, 1), name="knob")
    assert len(made) == 1 and isinstance(made[0], torch._dynamo.eval_frame.OptimizedModule)
    assert len(calls) == STEPS
    for a, b in zip(default, compiled, strict=True):
        assert losses(b) == pytest.approx(losses(a), **TOLERANCE)
    # a member against its compiled solo run: other graphs (one member's, not two), so
    # inductor may fuse and round differently; the same tolerance
    solo = train_run(tmp_path, "cnn", ["trainer.compile=true"], seeds=(1,), name="solo")
    assert len(made) == 2 and len(calls) == 2 * STEPS
    assert losses(solo[0]) == pytest.approx(losses(compiled[1]), **TOLERANCE)


def test_compile_that_fails_says_so_in_one_line_and_trains_eagerly(tmp_path, monkeypatch,
                                                                    capsys):
    """No compiler (or any compile error): one line on stderr, then the eager floats to the
    bit; the failed trial leaves nothing behind (BN's moving averages, random streams)."""
    def no_compiler(model):
        def fail(*args, **kwargs):
            model(*args, **kwargs)  # part of a step ran before the failure: undone
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\ndetails")
        return fail

    monkeypatch.setattr(compiled_module.torch, "compile", no_compiler)
    default = train_run(tmp_path, "cnn", [], name="default")
    capsys.readouterr()
    fallback = train_run(tmp_path, "cnn", ["trainer.compile=true"], name="knob")
    err = [line for line in capsys.readouterr().err.splitlines() if "trainer.compile" in line]
    assert len(err) == 1 and "No working C++ compiler found" in err[0]
    assert "training without it" in err[0]
    def logged(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if "time" not in k} for r in rows]

    assert logged(default[0]) == logged(fallback[0])


@pytest.mark.parametrize(("key", "value"), [("model.memory_format", "channels_last"),
                                            ("trainer.compile", "true")])
@pytest.mark.parametrize("model", ["cnn", "cnn_paper", "resnet"])
def test_the_knobs_are_not_part_of_a_runs_identity(key, value, model):
    base = [f"model={model}", "dataset=cifar10"]
    assert fingerprint(compose_config(base)) == fingerprint(compose_config([*base,
                                                                            f"{key}={value}"]))
    train_yaml = OmegaConf.load(CONF_DIR / "train.yaml")
    assert key in train_yaml.hydra.job.config.override_dirname.exclude_keys


@pytest.mark.parametrize(("override", "key"), [("model.memory_format=nhwc",
                                                "model.memory_format"),
                                               ("trainer.compile=maybe", "trainer.compile")])
def test_a_bad_value_is_one_clear_error(override, key):
    with pytest.raises(ConfigError, match=f"{key}=.* is not allowed") as err:
        validate(compose_config(["model=cnn", "dataset=cifar10", override]))
    assert str(err.value).count("is not allowed") == 1
    with pytest.raises(ValueError, match="model.memory_format must be one of"):
        make("cnn", [0], memory_format="nhwc")
