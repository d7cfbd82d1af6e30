"""A population's checkpoint commits as one unit; a damaged one never blocks a rerun."""

import pytest
import torch

from bnrepro.config import compose_config
from bnrepro.data.augment import BatchAugment
from bnrepro.data.sampling import EpochSampler
from bnrepro.models import build_model
from bnrepro.optim import PopulationSGD
from bnrepro.run import checkpoint
from bnrepro.train import new_summary, run_state


def population(momenta: list[float], dropout: list[float] | None = None):
    """A small real population: configs, its run state (train.run_state), summaries."""
    dropout = dropout or [0.0] * len(momenta)
    cfgs = [compose_config(["experiment=fig1_mnist", "model.hidden=[8,8]", f"seed={k}",
                            f"optim.momentum={m}", f"model.dropout={p}"])
            for k, (m, p) in enumerate(zip(momenta, dropout, strict=True))]
    model = build_model(cfgs, (1, 28, 28))
    optimizer = PopulationSGD(model.parameters(), torch.full((len(cfgs),), 0.1),
                              torch.tensor(momenta), torch.zeros(len(cfgs)))
    sampler = EpochSampler(1000, 60, [c.seed for c in cfgs])
    sampler.next()
    augment = BatchAugment([c.seed for c in cfgs], [0] * len(cfgs), [False] * len(cfgs))
    return (cfgs, run_state(model, optimizer, sampler, augment),
            [new_summary(c, len(cfgs)) for c in cfgs])


def test_a_save_cut_short_falls_back_to_the_step_every_member_has(tmp_path, monkeypatch):
    cfgs, parts, summaries = population([0.0, 0.0])
    dirs = [tmp_path / "a", tmp_path / "b"]
    checkpoint.save(dirs, cfgs, 500, parts, summaries)
    real_save, calls = checkpoint.atomic_torch_save, []

    def killed_after_the_first_member(obj, path, durable=False):
        if calls:
            raise KeyboardInterrupt  # the kill: member b's step-1000 file is never written
        calls.append(path)
        real_save(obj, path, durable)

    monkeypatch.setattr(checkpoint, "atomic_torch_save", killed_after_the_first_member)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(dirs, cfgs, 1000, parts, summaries)
    assert checkpoint.steps(dirs[0]) == [1000, 500]  # a has both, b only the old one
    for d, cfg in zip(dirs, cfgs, strict=True):
        assert checkpoint.load(d, cfg)["step"] == 500  # both resume from the same step


def test_a_completed_save_removes_the_older_steps(tmp_path):
    cfgs, parts, summaries = population([0.0, 0.0])
    dirs = [tmp_path / "a", tmp_path / "b"]
    for step in (500, 1000):
        checkpoint.save(dirs, cfgs, step, parts, summaries)
    assert [checkpoint.steps(d) for d in dirs] == [[1000], [1000]]
    assert [checkpoint.load(d, c)["step"] for d, c in zip(dirs, cfgs, strict=True)] == [1000] * 2


def test_an_unreadable_checkpoint_is_set_aside_and_the_run_starts_over(tmp_path):
    cfgs, parts, summaries = population([0.0])
    checkpoint.save([tmp_path], cfgs, 500, parts, summaries)
    file = checkpoint.path(tmp_path, 500)
    file.write_bytes(file.read_bytes()[:2000])  # truncated
    stale = tmp_path / ".checkpoint-000000600.pt.abc.tmp"  # a write a kill interrupted
    stale.write_bytes(b"partial")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert checkpoint.load(tmp_path, cfgs[0]) is None
    assert (tmp_path / (file.name + ".corrupt")).is_file() and not file.exists()
    assert not stale.exists()
    assert checkpoint.load(tmp_path, cfgs[0]) is None  # and no crash on the next rerun either


def test_a_member_saved_without_momentum_restores_into_a_population_with_momentum(tmp_path):
    """Seen: IndexError when regrouping a member of a momentum-free population."""
    cfgs, parts, summaries = population([0.0])
    checkpoint.save([tmp_path / "a"], cfgs, 500, parts, summaries)
    saved = checkpoint.load(tmp_path / "a", cfgs[0])
    cfgs2, parts2, summaries2 = population([0.0, 0.9])
    optimizer2 = parts2["optimizer"]
    for buf in optimizer2.buffers:
        buf.fill_(7.0)
    checkpoint.save([tmp_path / "x", tmp_path / "b"], cfgs2, 500, parts2, summaries2)
    for buf in optimizer2.buffers:
        buf.fill_(3.0)
    checkpoint.restore([saved, checkpoint.load(tmp_path / "b", cfgs2[1])], parts2)
    for buf in optimizer2.buffers:
        assert torch.equal(buf[0], torch.zeros_like(buf[0]))
        assert torch.equal(buf[1], torch.full_like(buf[1], 7.0))
    for name, t in parts2["model"].module.state_dict().items():
        assert torch.equal(t[0], saved["state"]["model"][name]), name


def test_a_checkpoint_from_before_added_keys_resumes_only_at_their_old_values(tmp_path):
    """Runs saved before optim.lr_decay, augment.* and trainer.flush_denormal existed still
    resume (an upgrade must not orphan them), but not into a config that sets one of them to
    a value that trains differently. Catches a strict comparison and one that accepts any
    value for the added keys."""
    cfgs, parts, summaries = population([0.0])
    checkpoint.save([tmp_path], cfgs, 500, parts, summaries)
    file = checkpoint.path(tmp_path, 500)
    saved = torch.load(file, weights_only=True)
    for dotted in checkpoint.ADDED_KEYS:
        section, leaf = dotted.split(".")
        saved["config"][section].pop(leaf, None)  # a model-specific key may be absent
    del saved["config"]["augment"]  # the whole group is new
    torch.save(saved, file)
    assert checkpoint.load(tmp_path, cfgs[0])["step"] == 500
    decaying = compose_config(["experiment=fig1_mnist", "model.hidden=[8,8]", "seed=0",
                               "optim.momentum=0.0", "optim.lr_decay=0.5"])
    with pytest.raises(checkpoint.ResumeMismatchError, match="lr_decay"):
        checkpoint.load(tmp_path, decaying)


class Elsewhere(torch.Tensor):
    """A tensor that says it lives off the CPU (as a GPU's would) until it is copied to the
    CPU: what a checkpoint saved without moving it would hold."""

    @property
    def device(self) -> torch.device:
        return torch.device("meta")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = super().__torch_function__(func, types, args, kwargs)
        to = {k: v for k, v in kwargs.items() if k != "copy"}  # what .to() parses
        to_cpu = func is torch.Tensor.cpu or func is torch.Tensor.to and \
            torch._C._nn._parse_to(*args[1:], **to)[0] == torch.device("cpu")
        return out.as_subclass(torch.Tensor) if to_cpu else out


class CarelessPart:
    """A part that breaks the contract: its member states are left on its device."""

    def member_states(self) -> list[dict]:
        return [{"t": torch.ones(3).as_subclass(Elsewhere)}]

    def load_member_states(self, states) -> None:
        pass


def tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(
        tree, list | tuple) else []
    return [t for value in values for t in tensors(value)]


def test_every_tensor_of_a_checkpoint_is_saved_on_the_cpu(tmp_path, monkeypatch):
    """Seen on a GPU: checkpoints held CUDA tensors (weights, momentum). Here the population's
    weights, momentum, data order and a careless part's state all claim another device;
    the file must hold plain CPU tensors only. Catches a part that clones instead of copying
    to the CPU, and a save that trusts the parts."""
    cfgs, parts, summaries = population([0.9])
    model, optimizer, sampler = (parts["model"].module, parts["optimizer"], parts["sampler"])
    off_cpu = {n: t.as_subclass(Elsewhere) for n, t in model.state_dict().items()}
    monkeypatch.setattr(model, "state_dict", lambda: off_cpu)
    optimizer.buffers = [b.as_subclass(Elsewhere) for b in optimizer.buffers]
    sampler.order = sampler.order.as_subclass(Elsewhere)
    saved = []
    monkeypatch.setattr(checkpoint, "atomic_torch_save", lambda obj, *a, **k: saved.append(obj))
    checkpoint.save([tmp_path], cfgs, 500, {**parts, "careless": CarelessPart()}, summaries)
    found = tensors(saved[0])
    assert len(found) > len(off_cpu) + len(optimizer.buffers)
    assert all(type(t) is torch.Tensor and t.device.type == "cpu" for t in found)


def test_an_unfinished_checkpoint_of_an_older_format_is_refused_with_what_to_do(tmp_path):
    """An old run resumes only with the version that wrote it; a finished one still counts as
    finished (its summary is all a rerun reads), so old run stores stay readable."""
    cfgs, parts, summaries = population([0.0])
    checkpoint.save([tmp_path], cfgs, 500, parts, summaries)
    file = checkpoint.path(tmp_path, 500)
    old = torch.load(file, weights_only=True)
    del old["format"]
    torch.save(old, file)
    with pytest.raises(checkpoint.ResumeMismatchError, match="delete its checkpoint"):
        checkpoint.load(tmp_path, cfgs[0])
    torch.save(old | {"finished": True}, file)
    assert checkpoint.load(tmp_path, cfgs[0])["finished"]
