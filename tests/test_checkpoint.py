"""A population's checkpoint commits as one unit; a damaged one never blocks a rerun."""

import pytest
import torch

from bnrepro.config import compose_config
from bnrepro.data.augment import BatchAugment
from bnrepro.data.sampling import EpochSampler
from bnrepro.models import build_model
from bnrepro.optim import PopulationSGD
from bnrepro.run import checkpoint
from bnrepro.train import new_summary


def population(momenta: list[float]):
    """A small real population: configs, model, optimizer, sampler, augmenter, summaries."""
    cfgs = [compose_config(["experiment=fig1_mnist", "model.hidden=[8,8]", f"seed={k}",
                            f"optim.momentum={m}"]) for k, m in enumerate(momenta)]
    model = build_model(cfgs, (1, 28, 28))
    optimizer = PopulationSGD(model.parameters(), torch.full((len(cfgs),), 0.1),
                              torch.tensor(momenta), torch.zeros(len(cfgs)))
    sampler = EpochSampler(1000, 60, [c.seed for c in cfgs])
    sampler.next()
    augment = BatchAugment([c.seed for c in cfgs], [0] * len(cfgs), [False] * len(cfgs))
    return cfgs, model, optimizer, sampler, augment, [new_summary(c, len(cfgs)) for c in cfgs]


def test_a_save_cut_short_falls_back_to_the_step_every_member_has(tmp_path, monkeypatch):
    cfgs, model, optimizer, sampler, augment, summaries = population([0.0, 0.0])
    dirs = [tmp_path / "a", tmp_path / "b"]
    checkpoint.save(dirs, cfgs, 500, model, optimizer, sampler, augment, summaries)
    real_save, calls = checkpoint.atomic_torch_save, []

    def killed_after_the_first_member(obj, path, durable=False):
        if calls:
            raise KeyboardInterrupt  # the kill: member b's step-1000 file is never written
        calls.append(path)
        real_save(obj, path, durable)

    monkeypatch.setattr(checkpoint, "atomic_torch_save", killed_after_the_first_member)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(dirs, cfgs, 1000, model, optimizer, sampler, augment, summaries)
    assert checkpoint.steps(dirs[0]) == [1000, 500]  # a has both, b only the old one
    for d, cfg in zip(dirs, cfgs, strict=True):
        assert checkpoint.load(d, cfg)["step"] == 500  # both resume from the same step


def test_a_completed_save_removes_the_older_steps(tmp_path):
    cfgs, model, optimizer, sampler, augment, summaries = population([0.0, 0.0])
    dirs = [tmp_path / "a", tmp_path / "b"]
    for step in (500, 1000):
        checkpoint.save(dirs, cfgs, step, model, optimizer, sampler, augment, summaries)
    assert [checkpoint.steps(d) for d in dirs] == [[1000], [1000]]
    assert [checkpoint.load(d, c)["step"] for d, c in zip(dirs, cfgs, strict=True)] == [1000] * 2


def test_an_unreadable_checkpoint_is_set_aside_and_the_run_starts_over(tmp_path):
    cfgs, model, optimizer, sampler, augment, summaries = population([0.0])
    checkpoint.save([tmp_path], cfgs, 500, model, optimizer, sampler, augment, summaries)
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
    cfgs, model, optimizer, sampler, augment, summaries = population([0.0])
    checkpoint.save([tmp_path / "a"], cfgs, 500, model, optimizer, sampler, augment, summaries)
    saved = checkpoint.load(tmp_path / "a", cfgs[0])
    cfgs2, model2, optimizer2, sampler2, augment2, _ = population([0.0, 0.9])
    other = {"model": {n: t[1] for n, t in model2.state_dict().items()},
             "momentum": {n: torch.full_like(b[1], 7.0) for n, b in
                          zip(checkpoint._trained_names(model2), optimizer2.buffers,
                              strict=True)},
             "sampler": sampler2.member_state(1), "step": 500,
             "dropout_rng": [model2.dropout.generators[1].get_state()]}
    checkpoint.restore([saved, other], model2, optimizer2, sampler2, augment2)
    for name, buf in zip(checkpoint._trained_names(model2), optimizer2.buffers, strict=True):
        assert torch.equal(buf[0], torch.zeros_like(buf[0])), name
        assert torch.equal(buf[1], torch.full_like(buf[1], 7.0)), name
    for name, t in model2.state_dict().items():
        assert torch.equal(t[0], saved["model"][name]), name


def test_a_checkpoint_from_before_added_keys_resumes_only_at_their_old_values(tmp_path):
    """Runs saved before optim.lr_decay, augment.* and trainer.flush_denormal existed still
    resume (an upgrade must not orphan them), but not into a config that sets one of them to
    a value that trains differently. Catches a strict comparison and one that accepts any
    value for the added keys."""
    cfgs, model, optimizer, sampler, augment, summaries = population([0.0])
    checkpoint.save([tmp_path], cfgs, 500, model, optimizer, sampler, augment, summaries)
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
