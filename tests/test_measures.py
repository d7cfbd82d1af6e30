"""Santurkar et al.'s measures (bnrepro.measures) against direct computations, and proof that
they change nothing in training.

The direct computations share no code with the measures: a deep copy of the model taken right
before the step's forward pass (so it holds that moment's BN statistics and random generators)
is moved by hand with the SGD rule, run forward on the same batch and differentiated with
.backward(). Population members differ in seed, rate, momentum, weight decay and dropout, so a
member mix-up, a shared rate or an ignored momentum buffer shows.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from bnrepro.config import compose_config
from bnrepro.measures import (
    MEASURES,
    LayerParams,
    forward_generators,
    gradient_ics,
    landscape,
    model_layers,
    step_multipliers,
)
from bnrepro.measures.hook import StepMeasures
from bnrepro.models import CNN, MLP, MODELS
from bnrepro.norms import set_norm_step
from bnrepro.optim import PopulationSGD
from bnrepro.run import checkpoint
from bnrepro.run.runs import find_runs
from bnrepro.run.store import read_metrics, read_summary
from bnrepro.train import member_losses, train_population
from bnrepro.validation import ConfigError, validate
from tests.conftest import REPO, stop_before_step


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets and smoke runs: one torch thread is faster on a loaded shared CPU (several
    times, measured); torch's own setting comes back after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LR, MOMENTUM, DECAY = [0.5, 0.2], [0.9, 0.5], [1e-2, 1e-3]  # member 0, member 1
MULTIPLIERS = [0.5, 0.5 * 8 ** 0.5, 4.0]  # 3 log-spaced step lengths from 0.5 to 4


def knobs(ics_layers=None, per_point=True):
    return OmegaConf.create({
        "ics": {"every": 1, "steps": [], "layers": ics_layers},
        "landscape": {"every": 1, "steps": [], "step_range": [0.5, 4.0],
                      "points": len(MULTIPLIERS), "spacing": "log", "per_point": per_point}})


def tiny(kind: str, norm: str):
    """A population of 2 tiny nets (different seeds and dropout), its optimizer (different
    rate, momentum, weight decay) and one batch."""
    if kind == "mlp":
        model = MLP([3, 7], 20, [12, 10, 8], norm=norm, dropout=[0.2, 0.0],
                    norm_cfg={"brn": {"warmup_steps": 0, "relax_steps": 0}})
        x = torch.randn(2, 16, 20, generator=torch.Generator().manual_seed(0))
    else:
        model = CNN([3, 7], in_channels=3, widths=[4, 6], classifier_hidden=8, norm=norm,
                    dropout=[0.3, 0.1], image_size=8)
        x = torch.randn(2, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (2, 16), generator=torch.Generator().manual_seed(1))
    opt = PopulationSGD(model.parameters(), torch.tensor(LR), torch.tensor(MOMENTUM),
                        torch.tensor(DECAY))
    return model, opt, x, y


def train_step(model, opt, x, y, step, measures=None):
    """One step of the trainer's loop. Returns what a direct computation needs: a copy of the
    model right before the forward pass, the momentum buffers and the gradients before the
    update, and the measures' output."""
    set_norm_step(model, step)  # Batch Renorm's r_max/d_max (warmup 0: relaxed from step 1)
    before = copy.deepcopy(model)
    buffers = [b.clone() for b in opt.buffers]
    replay = measures.capture(step) if measures else None
    loss = member_losses(model(x), y)
    opt.zero_grad()
    loss.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.set_step(step)
    alive = torch.tensor([True, True])
    out = measures.measure(step, replay, x, y, loss, alive) if replay else None
    opt.step(alive)
    return before, buffers, grads, out


def measured_step(kind, norm, measure_knobs):
    """Two plain steps (the momentum buffers fill up), then a measured third one."""
    model, opt, x, y = tiny(kind, norm)
    for step in (1, 2):
        train_step(model, opt, x + step, y, step)
    measures = StepMeasures(measure_knobs, model, opt, member_losses)
    return (*train_step(model, opt, x, y, 3, measures), x, y)


def layer_names(model):
    """Per weight layer: its weight's name and all its parameter names, found by hand."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(mods[0].weight)], [names[id(p)] for m in mods for p in m.parameters()])
            for mods in model.weight_layers()]


@pytest.mark.parametrize(("kind", "norm"), [("mlp", "bn"), ("mlp", "brn"), ("cnn", "noisy_bn"),
                                            ("cnn", "none")])
def test_gradient_ics_matches_a_direct_computation(kind, norm):
    before, buffers, grads, out, x, y = measured_step(kind, norm, knobs())
    names = [n for n, p in before.named_parameters() if p.requires_grad]
    buffer_of = dict(zip(names, buffers, strict=True))
    layers = layer_names(before)
    for i, (weight, _) in enumerate(layers, start=1):
        ref = copy.deepcopy(before)
        below = [n for _, params in layers[:i - 1] for n in params]
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if name in below:  # SGD with momentum and weight decay, member by member
                    for k in range(2):
                        direction = grads[name][k] + DECAY[k] * p[k]
                        direction = MOMENTUM[k] * buffer_of[name][k] + direction
                        p[k] -= LR[k] * direction
        member_losses(ref(x), y).sum().backward()
        g, g_shifted = grads[weight].double(), dict(ref.named_parameters())[weight].grad.double()
        for k in range(2):
            l2 = (g[k] - g_shifted[k]).norm().item()
            cos = (g[k] * g_shifted[k]).sum().item() / (g[k].norm() * g_shifted[k].norm()).item()
            if i == 1:  # nothing below: the replay must be the step's forward pass exactly
                assert out["ics/h1/l2"][k] == 0.0 and out["ics/h1/cos"][k] == 1.0
                assert l2 == 0.0
                continue
            # an ICS well above float rounding (measured: relative errors below 2e-6)
            assert l2 > 1e-3 * g[k].norm().item(), "too small to tell right from wrong"
            assert math.isclose(out[f"ics/h{i}/l2"][k], l2, rel_tol=1e-4), (i, k)
            assert math.isclose(out[f"ics/h{i}/cos"][k], cos, rel_tol=0, abs_tol=1e-5), (i, k)


def test_only_the_requested_layers_are_measured():
    *_, out, _, _ = measured_step("mlp", "bn", knobs(ics_layers=[2, 4]))
    assert sorted(k for k in out if k.startswith("ics/")) == \
        ["ics/h2/cos", "ics/h2/l2", "ics/h4/cos", "ics/h4/l2"]


@pytest.mark.parametrize(("kind", "norm"), [("mlp", "bn"), ("cnn", "noisy_bn")])
def test_landscape_matches_a_direct_computation(kind, norm):
    before, _, grads, out, x, y = measured_step(kind, norm, knobs())
    losses, changes, betas = [], [], []
    for m in MULTIPLIERS:
        ref = copy.deepcopy(before)
        with torch.no_grad():
            for name, p in ref.named_parameters():  # every parameter, gamma/beta too
                for k in range(2):
                    p[k] -= m * LR[k] * grads[name][k]
        loss = member_losses(ref(x), y)
        loss.sum().backward()
        change = [math.sqrt(sum((grads[n][k].double() - p.grad[k].double()).square().sum()
                                for n, p in ref.named_parameters())) for k in range(2)]
        distance = [m * LR[k] * math.sqrt(sum(g[k].double().square().sum()
                                              for g in grads.values())) for k in range(2)]
        losses.append(loss.tolist())
        changes.append(change)
        betas.append([c / d for c, d in zip(change, distance, strict=True)])
    start = member_losses(copy.deepcopy(before)(x), y).tolist()
    for k in range(2):
        member = [row[k] for row in losses]
        expected = {"loss": start[k], "loss_min": min(member), "loss_max": max(member),
                    "loss_range": max(member) - min(member),
                    "grad_change_min": min(row[k] for row in changes),
                    "grad_change_max": max(row[k] for row in changes),
                    "beta": max(row[k] for row in betas)}
        for key, value in expected.items():
            assert math.isclose(out[f"landscape/{key}"][k], value, rel_tol=1e-4,
                                abs_tol=1e-6), (key, k)
        for j, m in enumerate(MULTIPLIERS):
            assert math.isclose(out[f"landscape/x{m:.4g}/loss"][k], losses[j][k], rel_tol=1e-5)
            assert math.isclose(out[f"landscape/x{m:.4g}/grad_change"][k], changes[j][k],
                                rel_tol=1e-4)
    assert out["landscape/loss_range"][0] > 1e-3  # the walk really moved the loss


def test_the_pure_functions_work_on_any_loss_of_named_weights():
    """What a deep linear network's loop would do: its own loss function, full batch, no
    model class; checked against closed forms of a quadratic loss."""
    a = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # per member: L(w) = 0.5 * c * ||w||^2
    c = torch.tensor([2.0, 5.0])

    def loss_fn(weights):
        return 0.5 * c * (weights["w"].square().sum(1) + weights["v"].square().sum(1))

    params = {"w": a.clone(), "v": a.flip(1).clone()}
    grads = {n: c[:, None] * t for n, t in params.items()}
    lr = torch.tensor([0.1, 0.01])
    result = landscape(loss_fn, params, grads, lr, step_multipliers(0.5, 4.0, 4))
    # Along -g the gradient changes by c * m * lr * ||g||: beta is exactly c
    assert torch.allclose(result.summary()["beta"], c.double(), rtol=1e-5)
    norm0 = math.sqrt(2) * torch.linalg.norm(a, dim=1).double()
    assert torch.allclose(result.grad_norm, c.double() * norm0, rtol=1e-6)
    # ICS of a sum of independent layers is 0: v's gradient does not depend on w
    layers = [LayerParams("w", ("w",)), LayerParams("v", ("v",))]
    updated = {n: t - lr[:, None] * grads[n] for n, t in params.items()}
    ics = gradient_ics(loss_fn, params, grads, updated, layers, [1, 2])
    assert ics[2]["l2"].tolist() == [0.0, 0.0] and ics[2]["cos"].tolist() == [1.0, 1.0]


def test_multipliers_span_the_range_on_the_asked_scale():
    log = step_multipliers(0.01, 30, 5)
    assert log[0].item() == pytest.approx(0.01) and log[-1].item() == pytest.approx(30)
    assert torch.allclose(log[1:] / log[:-1], (log[1] / log[0]).expand(4))
    assert step_multipliers(0.5, 4, 8, "linear").diff().allclose(torch.tensor(0.5).double())


@pytest.mark.parametrize(("kind", "norm"), [("mlp", "brn"), ("cnn", "noisy_bn")])
def test_measuring_touches_no_weight_grad_statistic_buffer_or_generator(kind, norm):
    model, opt, x, y = tiny(kind, norm)
    train_step(model, opt, x, y, 1)
    measures = StepMeasures(knobs(), model, opt, member_losses)
    set_norm_step(model, 2)
    replay = measures.capture(2)
    loss = member_losses(model(x), y)
    opt.zero_grad()
    loss.sum().backward()
    opt.set_step(2)
    state = {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
             "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
             "buffers": {n: b.clone() for n, b in model.state_dict().items()},
             "momentum": [b.clone() for b in opt.buffers],
             "rng": [g.get_state() for g in forward_generators(model)]}
    assert state["rng"] and any(not torch.equal(b, torch.zeros_like(b)) for b in opt.buffers)
    out = measures.measure(2, replay, x, y, loss, torch.tensor([True, True]))
    assert out["ics/h2/l2"][0] > 0
    assert all(torch.equal(p, state["params"][n]) for n, p in model.named_parameters())
    assert all(torch.equal(p.grad, state["grads"][n]) for n, p in model.named_parameters())
    assert all(torch.equal(b, state["buffers"][n]) for n, b in model.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(opt.buffers, state["momentum"], strict=True))
    assert all(torch.equal(g.get_state(), s)
               for g, s in zip(forward_generators(model), state["rng"], strict=True))


def test_next_values_are_the_step_s_weights_and_change_nothing():
    model, opt, x, y = tiny("mlp", "bn")
    train_step(model, opt, x, y, 1)  # momentum buffers no longer zero
    member_losses(model(x), y).sum().backward()
    for active in ([True, True], [True, False]):
        mask = torch.tensor(active)
        params = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.clone() for p in model.parameters()]
        buffers = [b.clone() for b in opt.buffers]
        predicted = opt.next_values(mask)
        assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
        assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters(),
                                                          strict=True))
        assert all(torch.equal(a, b) for a, b in zip(buffers, opt.buffers, strict=True))
        twin = copy.deepcopy(model)
        twin_opt = PopulationSGD(twin.parameters(), opt.lr, opt.momentum, opt.weight_decay)
        for a, b in zip(twin_opt.buffers, opt.buffers, strict=True):
            a.copy_(b)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            q.grad = p.grad.clone()
        twin_opt.step(mask)
        assert all(torch.equal(a, b) for a, b in zip(predicted, twin.parameters(), strict=True))
        assert not torch.equal(predicted[0][0], params[0][0])
        assert torch.equal(predicted[0][1], params[0][1]) != active[1]


@pytest.mark.parametrize("overrides", [["model=mlp", "model.norm=bn"],
                                       ["model=cnn", "model.norm=bn"],
                                       ["model=cnn", "model.norm=in",
                                        "model.convs_per_stage=[1,2,1]"]])
def test_layers_split_every_parameter_once_weight_first_input_first(overrides):
    cfg = compose_config(overrides)
    spec = MODELS[cfg.model.kind]
    model = spec.build(cfg.model, dict(seeds=[0], norm=cfg.model.norm,
                                       activation=cfg.model.activation, dropout=[0.0],
                                       init_std=cfg.model.init_std, norm_cfg=cfg.model),
                       (3, 32, 32) if cfg.model.kind == "cnn" else (1, 28, 28))
    layers = model_layers(model)
    assert len(layers) == spec.num_layers(cfg.model)
    every = [n for layer in layers for n in layer.params]
    assert sorted(every) == sorted(n for n, _ in model.named_parameters())
    assert all(layer.params[0] == layer.weight and layer.weight.endswith("weight")
               for layer in layers)
    assert layers[-1].weight == "head.weight"
    if cfg.model.kind == "mlp":
        assert [layer.params for layer in layers[:2]] == [
            ("hidden.0.weight", "norms.0.weight", "norms.0.bias"),
            ("hidden.1.weight", "norms.1.weight", "norms.1.bias")]


def test_registry_names_the_config_groups_measures():
    conf = yaml.safe_load((REPO / "conf/measures/default.yaml").read_text())
    assert set(conf) == set(MEASURES)


def test_every_measure_knob_stays_out_of_the_run_name_and_the_fingerprint():
    conf = yaml.safe_load((REPO / "conf/measures/default.yaml").read_text())
    train = yaml.safe_load((REPO / "conf/train.yaml").read_text())
    excluded = set(train["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"])
    knob_keys = {f"measures.{m}.{k}" for m, node in conf.items() for k in node}
    assert knob_keys | {"measures"} <= excluded, knob_keys - excluded
    off = compose_config(["experiment=fig1_mnist"])
    on = compose_config(["experiment=fig1_mnist", "measures.ics.every=5",
                         "measures.landscape.steps=[3]", "measures.landscape.points=3"])
    assert checkpoint.fingerprint(on) == checkpoint.fingerprint(off)


@pytest.mark.parametrize(("override", "key"), [
    ("measures.ics.every=-1", "measures.ics.every"),
    ("measures.ics.steps=[0]", "measures.ics.steps"),
    ("measures.ics.steps=[41]", "measures.ics.steps"),
    ("measures.ics.layers=[5]", "measures.ics.layers"),  # the MLP has 3 hidden + head = 4
    ("measures.ics.layers=[]", "measures.ics.layers"),
    ("measures.landscape.step_range=[4,0.5]", "measures.landscape.step_range"),
    ("measures.landscape.step_range=[0,1]", "measures.landscape.step_range"),
    ("measures.landscape.points=0", "measures.landscape.points"),
    ("measures.landscape.spacing=cubic", "measures.landscape.spacing"),
    ("measures.landscape.per_point=1", "measures.landscape.per_point"),
])
def test_bad_measure_knobs_give_one_error_naming_the_key(override, key):
    cfg = compose_config(["experiment=fig1_mnist", "debug=smoke", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        validate(cfg)
    assert str(err.value).count("is not allowed") == 1


def test_good_measure_knobs_pass():
    validate(compose_config(["experiment=fig1_mnist", "debug=smoke", "measures.ics.layers=[1,4]",
                             "measures.ics.steps=[1,40]", "measures.landscape.every=7",
                             "measures.landscape.step_range=[0.01,30]"]))


# --- real training on MNIST (the trainer's loop, in process) --------------------------------

# 40 steps, evaluated every 20; one thread, as the whole module (see one_thread).
SMOKE = ["experiment=fig1_mnist", "debug=smoke", "model.norm=bn", "trainer.threads=1"]
MEMBERS = [["optim.lr=0.1", "seed=0", "model.dropout=0.2", "optim.momentum=0.9",
            "optim.weight_decay=1e-3"],
           ["optim.lr=0.3", "seed=1", "model.dropout=0.0", "optim.momentum=0.0",
            "optim.weight_decay=0.0"]]
# step 20 is evaluated (the measures join its row); 25 and 33 come after the checkpoint at 20
MEASURED = ["measures.ics.steps=[1,20,33]", "measures.landscape.steps=[7,20,25]",
            "measures.landscape.points=3"]
MEASURE_PREFIXES = tuple(f"{name}/" for name in MEASURES)


def without_measures(rows):
    out = [{k: v for k, v in r.items() if not k.startswith(MEASURE_PREFIXES)} for r in rows]
    return [r for r in out if set(r) != {"step"}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mirror):
    """Member 0 without and with measures, member 1 with, and both as one population."""
    root = tmp_path_factory.mktemp("measures")
    cfgs = {"off": compose_config([*SMOKE, *MEMBERS[0]]),
            "on": compose_config([*SMOKE, *MEMBERS[0], *MEASURED]),
            "solo1": compose_config([*SMOKE, *MEMBERS[1], *MEASURED])}
    for name, cfg in cfgs.items():
        train_population([cfg], [root / name])
    train_population([cfgs["on"], cfgs["solo1"]], [root / "pop0", root / "pop1"])
    return root


def assert_same_tree(a, b) -> None:
    """The same nested dicts and lists, their tensors bit-identical."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tree(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    else:
        assert a == b


def test_a_run_with_measures_trains_bit_identically_to_one_without(runs):
    off, on = read_metrics(runs / "off"), read_metrics(runs / "on")
    assert without_measures(on) == off
    final = {name: torch.load(checkpoint.path(runs / name, 40), weights_only=True)
             for name in ("off", "on")}
    on, off = (final[name]["state"] for name in ("on", "off"))
    assert on.keys() == off.keys()
    for part in ("model", "optimizer", "streams"):  # streams: dropout's
        assert_same_tree(on[part], off[part])
    timing = ("wall_time_s", "train_time_s")
    assert {k: v for k, v in read_summary(runs / "on").items() if k not in timing} == \
        {k: v for k, v in read_summary(runs / "off").items() if k not in timing}


def test_measured_steps_are_logged_once_each_in_the_step_s_row(runs):
    rows = read_metrics(runs / "on")
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) == [0, 1, 7, 20, 25, 33, 40]
    by_step = {r["step"]: r for r in rows}
    assert "val/acc" in by_step[20] and "ics/h4/l2" in by_step[20] \
        and "landscape/beta" in by_step[20]
    assert set(by_step[7]) == {"step"} | {f"landscape/{k}" for k in (
        "loss", "loss_min", "loss_max", "loss_range", "grad_norm", "grad_change_min",
        "grad_change_max", "beta")}
    assert by_step[1]["ics/h1/l2"] == 0.0 and by_step[1]["ics/h1/cos"] == 1.0
    assert by_step[1]["ics/h2/l2"] > 0
    # the figure readers see evaluations as before, and the measures apart
    run = next(r for r in find_runs([runs]) if r.dir.name == "on")
    assert run.metrics["step"].tolist() == [0, 20, 40]
    assert run.measures["step"].tolist() == [1, 7, 20, 25, 33]


def test_a_population_member_measures_what_its_solo_run_measures(runs):
    for k, solo in enumerate(("on", "solo1")):
        together, alone = read_metrics(runs / f"pop{k}"), read_metrics(runs / solo)
        assert [r["step"] for r in together] == [r["step"] for r in alone]
        for a, b in zip(together, alone, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if key.startswith(MEASURE_PREFIXES):
                    assert math.isclose(a[key], b[key], rel_tol=1e-3, abs_tol=1e-6), (k, key)
    lr_differs = [read_metrics(runs / f"pop{k}")[2]["landscape/loss_range"] for k in (0, 1)]
    assert abs(lr_differs[0] - lr_differs[1]) > 1e-3  # the members' numbers are their own


def test_a_killed_and_resumed_run_logs_the_same_measures_as_an_uninterrupted_one(
        runs, tmp_path, monkeypatch):
    cfg = compose_config([*SMOKE, *MEMBERS[0], *MEASURED, "trainer.checkpoint_every=20"])
    # killed after the checkpoint at 20 and the measured rows of 25 and 33
    stop_before_step(monkeypatch, 36, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        train_population([cfg], [tmp_path])
    assert [r["step"] for r in read_metrics(tmp_path)][-2:] == [25, 33]
    monkeypatch.undo()
    train_population([cfg], [tmp_path])
    assert read_summary(tmp_path)["resumed_from_step"] == 20
    assert (tmp_path / "metrics.jsonl").read_text() == (runs / "on" / "metrics.jsonl").read_text()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-2])["step"] == 33


# --- figure scripts read evaluations as before ---------------------------------------------


def with_measures(rows):
    """The rows the same run logs with measures on: measure keys in the evaluation rows,
    and rows of their own at measured steps between evaluations."""
    out = []
    for row in rows:
        if row["step"]:
            out.append({"step": row["step"] - 5, "ics/h2/l2": 0.1, "landscape/beta": 3.0})
        out.append(row | {"ics/h2/l2": 0.2, "ics/h2/cos": 0.9})
    return out


def store_pair(root, overrides_per_run, curves):
    """The same hand-built run store twice: `plain/` without measures, `measured/` where
    every other run measured (its config asks for measures, its metrics.jsonl holds their
    rows; the summaries are the same): runs that differ in measures only are one setup."""
    from tests.test_experiment_sweep import make_run

    for name in ("plain", "measured"):
        for i, (overrides, rows) in enumerate(zip(overrides_per_run, curves, strict=True)):
            extra = ["measures.ics.every=5"] if name == "measured" and i % 2 == 0 else []
            run_dir = make_run(root / name / f"run{i}", [*overrides, *extra], rows)
            if extra:
                (run_dir / "metrics.jsonl").write_text(
                    "".join(json.dumps(r) + "\n" for r in with_measures(rows)))
    return root / "plain", root / "measured"


def test_aggregate_gives_the_same_tables_for_runs_with_measures(tmp_path, capsys):
    from bnrepro.experiments import sweep
    from tests.test_experiment_sweep import MNIST, curve

    runs = [([*MNIST, "model.norm=bn", f"optim.lr={lr}", f"seed={s}"],
             curve([0.1, 0.5 + lr / 4 + s / 100, 0.9 - s / 50]))
            for lr in (0.1, 1.0) for s in (0, 1)]
    plain, measured = store_pair(tmp_path, *zip(*runs, strict=True))
    outputs = []
    for store in (plain, measured):
        sweep.main([str(store), "--out", str(tmp_path / f"out_{store.name}")])
        csv = (tmp_path / f"out_{store.name}").glob("*.csv")
        def same_names(text, store=store):
            return text.replace(str(store), "STORE").replace(f"out_{store.name}", "OUT")

        outputs.append((same_names(capsys.readouterr().out),
                        {p.name: same_names(p.read_text()) for p in csv}))
    assert outputs[0] == outputs[1] and outputs[0][1]


def test_fig2_gives_the_same_numbers_for_runs_with_measures(tmp_path):
    from bnrepro.experiments import fig2
    from tests.test_experiment_sweep import curve

    base = ["experiment=fig2_cifar", "dataset=cifar10-jpeg", "trainer.max_steps=40",
            "trainer.eval_every=20"]
    runs = [([*base, f"fig2_variant={v}", f"seed={s}"], curve([0.1, 0.3 + s / 10 + b, 0.4 + b]))
            for v, b in (("baseline", 0.0), ("bn_x5", 0.1)) for s in (0, 1)]
    plain, measured = store_pair(tmp_path, *zip(*runs, strict=True))
    numbers = [fig2.write(fig2.analyse(store), tmp_path / f"out_{store.name}")
               for store in (plain, measured)]
    texts = [json.dumps(n, sort_keys=True, default=str).replace(str(store), "STORE")
             for n, store in zip(numbers, (plain, measured), strict=True)]
    assert texts[0] == texts[1]
    assert numbers[0]["eval_steps"] == [0, 20, 40]
