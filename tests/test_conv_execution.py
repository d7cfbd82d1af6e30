"""model.conv_execution: a population's convs run grouped or member by member, same results."""

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bnrepro.config import CONF_DIR, compose_config
from bnrepro.models import CNN, PopulationConv2d
from bnrepro.models.layers import fold, unfold
from bnrepro.norms.batch import bn_mode
from bnrepro.run.checkpoint import fingerprint
from bnrepro.validation import ConfigError, validate

TINY = {"widths": (4, 8), "classifier_hidden": 16, "image_size": 8, "convs_per_stage": (1, 2)}


def conv_pair(P: int, bias: bool) -> dict[str, PopulationConv2d]:
    """The same weights (members that differ) in both executions."""
    torch.manual_seed(0)
    grouped = PopulationConv2d(P, 3, 5, bias=bias, execution="grouped")
    torch.nn.init.normal_(grouped.weight)
    if bias:
        torch.nn.init.normal_(grouped.bias)
    per_member = PopulationConv2d(P, 3, 5, bias=bias, execution="per_member")
    per_member.load_state_dict(grouped.state_dict())
    return {"grouped": grouped, "per_member": per_member}


def forward_backward(conv: PopulationConv2d, x: torch.Tensor, upstream: torch.Tensor
                     ) -> tuple[torch.Tensor, ...]:
    """Output and gradients for an input laid out as inside a net (a view of [B, P*C, H, W])."""
    conv.zero_grad()
    folded = fold(x).detach().requires_grad_(True)
    y = conv(unfold(folded, x.shape[0]))
    (y * upstream).sum().backward()
    grads = (unfold(folded.grad, x.shape[0]), conv.weight.grad)
    return (y.detach(), *grads, *(() if conv.bias is None else (conv.bias.grad,)))


@pytest.mark.parametrize("bias", [True, False])
def test_grouped_and_per_member_agree_forward_and_backward(bias):
    P = 4
    convs = conv_pair(P, bias)
    x = torch.randn(P, 6, 3, 9, 9)
    upstream = torch.randn(P, 6, 5, 9, 9)
    grouped = forward_backward(convs["grouped"], x, upstream)
    per_member = forward_backward(convs["per_member"], x, upstream)
    # Weight gradients sum ~500 products of N(0, 1) values: float32 rounding of order 1e-5 in
    # absolute terms, depending on the kernel and the threads (seen: 1.5e-5 on one thread); a
    # member mix-up would differ by O(1).
    for a, b in zip(grouped, per_member, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # and both are the right thing: member k's output is conv2d with member k's filters
    for k in range(P):
        b = convs["grouped"].bias[k] if bias else None
        expected = F.conv2d(x[k], convs["grouped"].weight[k], b, padding=1)
        torch.testing.assert_close(per_member[0][k], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_per_member_is_bit_identical_to_each_members_solo_conv(bias):
    P = 3
    population = conv_pair(P, bias)["per_member"]
    x = torch.randn(P, 5, 3, 8, 8)
    upstream = torch.randn(P, 5, 5, 8, 8)
    together = forward_backward(population, x, upstream)
    for k in range(P):
        solo = PopulationConv2d(1, 3, 5, bias=bias)
        with torch.no_grad():
            solo.weight.copy_(population.weight[k:k + 1])
            if bias:
                solo.bias.copy_(population.bias[k:k + 1])
        alone = forward_backward(solo, x[k:k + 1], upstream[k:k + 1])
        for a, b in zip(alone, together, strict=True):
            assert torch.equal(a[0], b[k])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_a_cnn_member_trains_bit_identically_to_its_solo_run(layout):
    """One thread: torch's batched matrix products (the linear head) may split work between
    threads differently for P members than for one, which changes float rounding only.
    channels_last: as augment.py handed augmented batches over before it returned NCHW; the
    folded layout copied them to NCHW, so the members of fig2's populations drifted from their
    solo runs (by ~5e-6 in the logits); member by member they run channels_last as solo runs
    do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seeds = [3, 7, 11]
        population = CNN(seeds, norm="bn", activation="relu", conv_execution="per_member",
                         **TINY)
        x, y = torch.randn(3, 6, 3, 8, 8), torch.randint(0, 10, (3, 6))
        if layout == "channels_last":
            x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        out = population(x)
        F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
        for k, seed in enumerate(seeds):
            alone = CNN([seed], norm="bn", activation="relu", **TINY)
            solo = alone(x[k:k + 1])
            F.cross_entropy(solo.transpose(1, 2), y[k:k + 1]).backward()
            assert torch.equal(solo[0], out[k])
            for a, b in zip(alone.parameters(), population.parameters(), strict=True):
                assert torch.equal(a.grad[0], b.grad[k])
    finally:
        torch.set_num_threads(threads)


def test_auto_means_per_member_on_cpu_and_bad_values_are_refused():
    assert PopulationConv2d(2, 1, 1, bias=False).resolved_execution(
        torch.device("cpu")) == "per_member"
    assert PopulationConv2d(2, 1, 1, bias=False, execution="grouped").resolved_execution(
        torch.device("cpu")) == "grouped"
    with pytest.raises(ValueError, match="model.conv_execution"):
        PopulationConv2d(2, 1, 1, bias=False, execution="loop")
    with pytest.raises(ConfigError, match="model.conv_execution"):
        validate(compose_config(["model=cnn", "dataset=cifar10", "model.conv_execution=loop"]))


def test_conv_execution_is_not_part_of_a_runs_identity():
    """It changes speed and float rounding only: a run resumes whichever execution it uses."""
    base = ["model=cnn", "dataset=cifar10"]
    assert "conv_execution" in compose_config(base).model
    assert fingerprint(compose_config(base)) == \
        fingerprint(compose_config([*base, "model.conv_execution=grouped"]))
    train_yaml = OmegaConf.load(CONF_DIR / "train.yaml")
    assert "model.conv_execution" in train_yaml.hydra.job.config.override_dirname.exclude_keys


def _one_step(model: CNN, mode: str, **kwargs) -> dict[str, torch.Tensor]:
    """Logits, parameter gradients and buffers after one forward and backward pass of a copy
    of `model` on fixed data, BN in `mode` (train, or eval with Alg. 2's statistics)."""
    model = copy.deepcopy(model)
    x, y = torch.randn(3, 6, 3, 8, 8, generator=torch.Generator().manual_seed(1)), \
        torch.randint(0, 10, (3, 6), generator=torch.Generator().manual_seed(2))
    with bn_mode(model, mode):
        out = model(x, **kwargs)
    F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
    return {"logits": out, **{f"grad {k}": p.grad for k, p in model.named_parameters()},
            **dict(model.named_buffers())}


@pytest.mark.parametrize(("norm", "activation", "mode"), [
    ("bn", "relu", "train"), ("bn", "relu", "eval"), ("bn", "sigmoid", "train"),
    ("bn", "sigmoid", "eval"), ("gn", "relu", "train"), ("ln", "sigmoid", "train"),
    ("in", "relu", "train"), ("none", "relu", "train")])
def test_member_by_member_training_forward_is_bit_identical_to_the_folded_one(
        norm, activation, mode, monkeypatch):
    """The training forward runs each member's conv stages on its own tensors (ReLU after
    the pooling); asked for its preactivations, the CNN runs them folded, as before. Same
    logits, gradients and BN buffers, to the bit: with ReLU's tied zeros, and with sigmoids
    that saturate (gamma 30), whose ties would move a pooling window's winner were the
    sigmoid applied after the pooling."""
    population = CNN([3, 7, 11], norm=norm, activation=activation, conv_execution="per_member",
                     **TINY, norm_cfg={"norm_groups": 2})
    with torch.no_grad():  # members whose norms differ, so a mix-up shows
        for layer in population.conv_norms:
            for values in (*layer.buffers(), *layer.parameters()):
                values.uniform_(0.5, 1.5)
            if activation == "sigmoid" and norm != "none":
                layer.weight.mul_(30)
    calls = []
    features = CNN._member_features
    monkeypatch.setattr(CNN, "_member_features",
                        lambda self, *args: calls.append(1) or features(self, *args))
    by_member = _one_step(population, mode)
    assert len(calls) == 3  # one call per member
    folded = _one_step(population, mode, preactivations=[])
    assert len(calls) == 3  # the folded pass did not run member by member
    assert by_member.keys() == folded.keys()
    for key, value in by_member.items():
        assert torch.equal(value, folded[key]), key
    moved = {k for k, v in population.named_buffers() if not torch.equal(v, by_member[k])}
    # training updates every BN's moving averages (through the per-member views too); eval
    # changes nothing
    assert moved == ({k for k, _ in population.named_buffers() if ".running_" in k}
                     if mode == "train" else set())


def test_member_by_member_runs_only_where_every_layer_can():
    x = torch.randn(3, 2, 3, 8, 8)

    def members(P: int, **kwargs) -> bool:
        return CNN(list(range(P)), activation="relu", **TINY, **kwargs)._member_layers(
            x[:P]) is not None

    assert members(3, norm="bn") and members(3, norm="none")
    assert members(1, norm="bn", conv_execution="grouped")  # one member: the same call
    assert not members(3, norm="bn", conv_execution="grouped")
    assert members(3, norm="gn") and members(3, norm="in")
    assert not members(3, norm="noisy_bn") and not members(3, norm="brn")
    model = CNN([0, 1, 2], norm="bn", activation="relu", **TINY)
    with bn_mode(model, "collect", 2):  # Alg. 2's grouped statistics: the folded forward
        assert model._member_layers(x) is None
