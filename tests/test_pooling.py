"""models.pooling.max_pool2d: F.max_pool2d's floats and layout, bit for bit, by another kernel."""

import pytest
import torch
import torch.nn.functional as F

from bnrepro.models import CNN
from bnrepro.models import cnn as cnn_module
from bnrepro.models.pooling import max_pool2d


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns: unlike ==, tells 0 from -0 and a subnormal from 0."""
    return t.detach().contiguous().view(torch.int32)


def inputs(kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    if kind == "relu":  # half the values are tied zeros: the tie-break decides the gradient
        return torch.relu(x)
    if kind == "saturated":  # ties at exactly 1.0 and 0.0 (a saturated sigmoid), subnormals
        x = torch.sigmoid(x * 100)
        return torch.where(torch.rand(shape, generator=g) < 0.1, torch.tensor(1e-40), x)
    return x


@pytest.mark.parametrize("kind", ["relu", "saturated", "normal"])
@pytest.mark.parametrize("shape", [(16, 6, 16, 16), (3, 4, 7, 9)])  # odd sizes: floor, as F
def test_values_gradients_and_layout_are_max_pool2ds(kind, shape):
    x = inputs(kind, shape)
    upstream = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    results = []
    for pool in (F.max_pool2d, max_pool2d):
        leaf = x.clone().requires_grad_(True)
        y = pool(leaf, 2)
        y.backward(upstream)
        results.append((y, leaf.grad))
    (y_ref, grad_ref), (y, grad) = results
    assert torch.equal(bits(y), bits(y_ref))
    assert torch.equal(bits(grad), bits(grad_ref))  # each window's gradient on the same element
    assert y.stride() == y_ref.stride() and grad.stride() == grad_ref.stride()
    with torch.no_grad():
        assert torch.equal(bits(max_pool2d(x, 2)), bits(y_ref))
        assert max_pool2d(x, 2).stride() == y_ref.stride()


def test_channels_last_input_keeps_its_layout():
    """Augmented batches reach the convs as channels_last, and convs keep the layout: the
    pooled output must stay so, or the next conv runs (and rounds) differently."""
    x = inputs("relu", (8, 4, 8, 8)).contiguous(memory_format=torch.channels_last)
    y = max_pool2d(x, 2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(bits(y), bits(F.max_pool2d(x, 2)))


def test_a_contiguous_input_takes_the_channels_last_kernel():
    """The point of the module: on the CPU a contiguous input with grad goes through it (not
    silently back to F.max_pool2d, which every equality test above would also pass)."""
    x = inputs("relu", (2, 3, 8, 8)).requires_grad_(True)
    assert "ChannelsLastMaxPool" in type(max_pool2d(x, 2).grad_fn).__name__


@pytest.mark.parametrize("augmented_layout", [False, True])
def test_a_cnn_population_trains_the_same_floats_as_with_f_max_pool2d(monkeypatch,
                                                                       augmented_layout):
    """Logits and every parameter's gradient of a population (P=3, two stages) equal
    bit for bit those with F.max_pool2d in its place."""
    x = torch.randn(3, 10, 3, 8, 8)
    if augmented_layout:  # channels_last underneath, as BatchAugment handed batches over once
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    y = torch.randint(0, 10, (3, 10))
    results = []
    for pool in (max_pool2d, lambda h, k: F.max_pool2d(h, k)):
        monkeypatch.setattr(cnn_module, "max_pool2d", pool)
        model = CNN([0, 1, 2], widths=(4, 8), classifier_hidden=16, image_size=8, norm="bn",
                    activation="relu")
        logits = model(x)
        F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        results.append([logits, *(p.grad for p in model.parameters())])
    for ours, reference in zip(*results, strict=True):
        assert torch.equal(bits(ours), bits(reference))
