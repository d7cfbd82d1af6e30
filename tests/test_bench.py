"""`make bench` (bnrepro.bench): every row present with sane numbers, FLOPs counted right,
targets reading the right rows, peers that train what they claim, our trainer timed on its
steps alone. Speed ratios are never asserted: the bench prints each target as met / not met."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from bnrepro.bench import peers, report
from bnrepro.bench.__main__ import main
from bnrepro.bench.roofline import training_step_flops
from bnrepro.bench.timing import Row
from bnrepro.bench.workloads import LONG_NETS, IndexStream, cnn_workload, mlp_workload
from bnrepro.config import compose_config
from bnrepro.run.store import read_metrics
from bnrepro.train import train_population
from tests.conftest import REPO

CPU = torch.device("cpu")


def conv_flops(batch: int, layers: list[tuple[int, int, int]], linear: list[tuple[int, int]],
               first_input_grad: bool = False) -> dict[str, int]:
    """Direct count: 2 FLOPs per multiply-add; forward, weight gradient, input gradient (none
    for the net's first layer)."""
    conv = [batch * 2 * a * b * 9 * h * h for a, b, h in layers]
    mm = [batch * 2 * a * b for a, b in linear]
    first = conv[0] if conv else mm[0]
    total_conv, total_mm = 3 * sum(conv), 3 * sum(mm)
    if conv:
        total_conv -= first
    else:
        total_mm -= first
    return {"matmul": total_mm, "conv": total_conv}


@pytest.fixture(scope="module")
def mlp(mnist):
    return mlp_workload(REPO / "data", CPU, eval_images=10)


def test_flops_are_forward_plus_both_gradients(mlp):
    assert training_step_flops(mlp) == conv_flops(
        60, [], [(784, 100), (100, 100), (100, 100), (100, 10)])
    cnn = cnn_workload(CPU, num_train=200, eval_images=10)
    assert training_step_flops(cnn) == conv_flops(
        64, [(3, 8, 32), (8, 16, 16), (16, 32, 8)], [(32 * 4 * 4, 128), (128, 10)])


def test_the_ensemble_trains_each_member_as_its_own_plain_loop(mlp):
    """A wrong loss scale (the mean over P*B examples) would give each member 1/P of its
    gradient; a wrong index would train a member on another's batch. (The MLP: in the CNN,
    float rounding can flip a max-pool's choice between near-equal values.)"""
    w = copy.copy(mlp)
    w.lr = 1.0  # updates far above float rounding
    torch.manual_seed(0)
    models = [w.build() for _ in range(3)]
    alone = [copy.deepcopy(m) for m in models]
    step, params = peers.ensemble_step(w, models)
    index = torch.stack([torch.randperm(len(w.labels))[:w.batch_size] for _ in range(3)])
    step(index)
    for k, model in enumerate(alone):
        optimizer = torch.optim.SGD(model.parameters(), lr=w.lr, momentum=w.momentum,
                                    weight_decay=w.weight_decay)
        F.cross_entropy(model(w.inputs(w.images[index[k]])), w.labels[index[k]]).backward()
        optimizer.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name][k], p.detach(), atol=1e-4, rtol=1e-4)


def test_index_stream_gives_each_member_a_permutation_per_epoch():
    stream = IndexStream(12, 4, 2, CPU)
    epoch = torch.cat([stream.next() for _ in range(3)], dim=1)
    for member in epoch:
        assert sorted(member.tolist()) == list(range(12))
    assert not torch.equal(epoch[0], epoch[1])  # members draw their own orders


def test_on_step_is_called_after_every_update_before_its_evaluation(mnist, tmp_path):
    """Our rows time the span between two on_step calls: an evaluation inside it would be
    counted as training."""
    cfg = compose_config(["experiment=fig1_mnist", "debug=smoke", "trainer.max_steps=4",
                          "trainer.eval_every=2", f"dataset.root={REPO / 'data'}"])
    calls = []

    def on_step(step: int) -> None:
        logged = [row["step"] for row in read_metrics(tmp_path / "run")]
        calls.append((step, logged))

    train_population([cfg], [tmp_path / "run"], on_step)
    assert calls == [(1, [0]), (2, [0]), (3, [0, 2]), (4, [0, 2])]


def row(key: str, *samples: float) -> Row:
    """A timed row of the bench (net from the key), its samples given: one per round."""
    r = Row(key.split("/")[0], key, key, "ours" in key, 1, lambda: None)
    r.samples = list(samples)
    return r


def test_targets_read_their_rows_and_say_what_is_missing():
    rows = [row("mlp/plain", 2.0), row("mlp/ours1", 1.0), row("mlp/ensemble16", 3.0),
            row("mlp/ours16", 1.0), row("mlp/ensemble64", 1.2), row("mlp/ours64", 1.0),
            row("cnn/plain", 10.0), row("cnn/plain_channels_last", 8.0), row("cnn/ours1", 9.0),
            row("cnn/ours4", 6.0), row("cnn/ours8", 7.0), row("cnn/sequential8", 8.4)]
    found = report.targets(rows, {"mlp": 0.6}, {"full_run": {"evaluation_fraction": 0.25}})
    values = [(t.value, t.met) for t in found]
    assert values[0] == (2.0, True)  # mlp plain / ours single
    assert values[1][0] == pytest.approx(8 / 9) and values[1][1] is False  # fastest plain: 8
    assert values[2] == (3.0, True) and values[3][0] == pytest.approx(1.2)
    assert values[3][1] is False
    assert values[4] == (None, None)  # no cnn ensemble row: not measured, not "not met"
    assert values[5][0] == pytest.approx(0.6) and values[5][1] is True  # roofline 0.6/1.0
    assert values[6][0] == pytest.approx(8.4 / 7) and values[6][1] is True  # slowest is P=8
    assert values[7][1] is False  # 1.2 < the 1.3 aim
    assert values[8] == (0.25, False)  # evaluation: at most 20%


def test_each_round_gives_its_own_ratio_and_a_verdict_the_rounds_split_says_so():
    rows = [row("cnn/sequential8", 9.0, 9.0, 9.0), row("cnn/ours4", 8.0, 8.0, 8.0),
            row("cnn/ours8", 8.5, 9.5, 8.9),  # the slowest population, round by round
            row("mlp/plain", 2.0, 2.0, 2.2), row("mlp/ours1", 1.0, 1.0)]  # failed in round 3
    found = report.targets(rows, {}, None, cnn_populations=(4, 8))

    def target(starts: str) -> report.Target:
        (hit,) = [t for t in found if t.text.startswith(starts)]
        return hit

    sequential, aim = target("cnn: our slowest population"), target("cnn (aim)")
    single = target("mlp: our single run")
    assert sequential.value == pytest.approx(9.0 / 8.9) and sequential.met is True
    assert sequential.rounds == pytest.approx([9 / 8.5, 9 / 9.5, 9 / 8.9])
    assert sequential.settled is False  # round 2 says not met
    assert "not settled" in sequential.line() and "rounds 0.95x..1.06x" in sequential.line()
    assert aim.met is False and aim.settled is True and "not settled" not in aim.line()
    assert single.rounds == [2.0, 2.0] and single.settled is True  # round 3 has no ours1
    record = sequential.as_dict()
    assert record["settled"] is False and len(record["rounds"]) == 3
    assert report.Target.from_dict(record).line() == sequential.line()
    evaluation = report.targets(rows, {}, {"full_run": {"evaluation_fraction": 0.1}})[-1]
    assert evaluation.rounds == [] and evaluation.settled is None


def test_long_net_targets_take_our_fastest_knob_and_each_layouts_population():
    P = 4
    rows = [row("vgg/plain", 30.0), row("vgg/plain_channels_last", 24.0),
            row("vgg/compiled", 20.0), row(f"vgg/sequential{P}", 25.0), row("vgg/ours1", 22.0),
            row("vgg/ours1_channels_last", 17.0), row("vgg/ours1_compile", 18.0),
            row("vgg/ours1_compile_channels_last", 16.0),
            row(f"vgg/ours{P}", 21.0), row(f"vgg/ours{P}_channels_last", 20.0)]
    found = [t for t in report.targets(rows, {}, None, long={"vgg": P})
             if t.text.startswith("vgg")]
    values = [t.value for t in found]
    assert len(values) == 4
    assert values[0] == pytest.approx(24 / 16)  # the faster plain loop over our fastest
    assert values[1] == pytest.approx(20 / 16)
    assert values[2] == pytest.approx(25 / 20)  # our faster population
    # per layout: defaults 22/21, channels_last 17/20 (a population slower than its single
    # run): the worse one counts
    assert values[3] == pytest.approx(17 / 20)
    assert [t.met for t in found] == [True, True, True, False]


@pytest.mark.parametrize("net", LONG_NETS)
def test_the_peers_train_the_net_our_trainer_trains(net):
    """The plain nets mirror ours: the same parameter shapes, layer for layer (a missing
    block, another width or an extra bias would show), and the same conv FLOPs per step."""
    from bnrepro.models import build_model

    w = cnn_workload(CPU, num_train=200, eval_images=10, net=net)
    ours = build_model([w.config], (3, 32, 32))
    plain = w.build()
    assert sorted(p.numel() for p in plain.parameters()) == \
        sorted(p.numel() for p in ours.parameters())
    x = w.inputs(w.images[:w.batch_size])
    from bnrepro.bench.roofline import count_flops
    ours_flops = count_flops(lambda: ours(x.unsqueeze(0)).sum().backward())
    plain_flops = count_flops(lambda: plain(x).sum().backward())
    assert ours_flops["conv"] == plain_flops["conv"] > 0


def test_a_failing_row_is_recorded_and_the_rest_go_on():
    def broken():
        raise RuntimeError("no compiler\nmore detail")

    row = Row("mlp", "mlp/x", "x", False, 1, broken)
    row.run_sample(1, 1)
    row.run_sample(1, 1)
    assert row.error == "RuntimeError: no compiler" and row.samples == []


def test_quick_bench_records_every_row_with_sane_numbers(mnist, tmp_path):
    out = tmp_path / "bench.json"
    result = main(["--quick", "--out", str(out), "--data-root", str(REPO / "data")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    keys = [r["key"] for r in result["rows"]]
    mlp_p, cnn_p = (result["protocol"]["populations"][net] for net in ("mlp", "cnn"))
    assert keys == ["mlp/tutorial", "mlp/plain", "mlp/compiled",
                    *(f"mlp/ensemble{p}" for p in mlp_p), "mlp/processes", "mlp/ours1",
                    *(f"mlp/ours{p}" for p in mlp_p), "cnn/plain", "cnn/plain_channels_last",
                    f"cnn/ensemble{max(cnn_p)}", f"cnn/sequential{max(cnn_p)}", "cnn/ours1",
                    *(f"cnn/ours{p}" for p in cnn_p), f"cnn/ours{max(cnn_p)}_grouped",
                    f"cnn/ours{max(cnn_p)}_chunked",
                    *(f"{net}/{row}" for net in LONG_NETS for row in (
                        "plain", "plain_channels_last", "compiled", "sequential2", "ours1",
                        "ours1_channels_last", "ours1_compile", "ours1_compile_channels_last",
                        "ours2", "ours2_channels_last"))]
    for r in result["rows"]:
        assert "error" not in r, r
        if r["key"] in ("mlp/compiled", "mlp/processes") or r["key"].endswith("compiled") \
                or "_compile" in r["key"]:  # too slow to start for --quick
            assert r["skipped"] and r["ms_per_model_step"] is None
            continue
        ms = r["ms_per_model_step"]
        assert 0 < ms["min"] <= ms["median"] <= ms["max"] < math.inf, r
        assert r["roofline_fraction"] > 0 and r["speedup_vs_plain"] > 0
    roof = result["roofline"]
    assert roof["sgemm_gflops"] > 0 and all(c["gflops"] > 0 for c in roof["conv_rates"])
    assert all(c["grouped_ms"] > 0 and c["per_member_ms"] > 0
               for c in result["conv_execution"])
    assert result["pooling"] and all(r[f"{phase}_{way}_ms"] > 0 for r in result["pooling"]
                                     for phase in ("train", "eval") for way in ("torch", "ours"))
    ev = result["evaluation"]
    parts = ev["one_evaluation_s"]
    assert parts["whole_evaluation"] == pytest.approx(
        parts["alg2_statistics"] + parts["validation_and_test"] + parts["probes"], abs=1e-3)
    assert 0 < ev["full_run"]["evaluation_fraction"] < 1
    assert 0 < ev["short_run"]["not_training_fraction"] < 1
    measures = result["measures"]
    assert measures["step_ms"] > 0
    assert all(math.isfinite(measures[name]["ms"]) for name in ("ics", "landscape"))
    # every target measured, but those against the compiled loop (skipped by --quick)
    assert all(t["met"] in (True, False) for t in result["targets"]
               if "torch.compile" not in t["target"]), result["targets"]
    assert all(t["met"] is None for t in result["targets"] if "torch.compile" in t["target"])
    # every long-tier net: its four targets, each reading rows it measured (compile's skipped)
    for net in LONG_NETS:
        assert sum(t["target"].startswith(f"{net}:") for t in result["targets"]) == 4
        assert result["roofline"]["ms"][net] > 0
    table = out.with_suffix(".md").read_text()
    assert all(r["label"] in table for r in result["rows"])
    assert "Max-pooling of the folded layout" in table


@pytest.mark.slow
def test_separate_processes_start_together_and_time_their_steps(mlp):
    sample = peers.separate_processes(mlp, REPO / "data", 2)
    assert 0 < sample(2, 5) < math.inf


def test_the_profile_holds_our_timed_steps_and_nothing_else(mlp):
    """bench.profile's "ours" column covers steps warmup+1 .. warmup+steps only: each of the
    MLP's 3 BN layers runs its backward once per step (set-up and the evaluations at step 0
    and at the end run none, warm-up steps run theirs outside), so the profile holds exactly
    3 x steps of them."""
    from bnrepro.bench.profile import ours_profile, table

    steps = 4
    prof = ours_profile(mlp, 1, warmup=3, steps=steps)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls["aten::native_batch_norm_backward"] == 3 * steps
    assert calls["aten::native_batch_norm"] == 3 * steps  # no evaluation's forward passes
    # A population in two chunks: both chunks' timed steps, and only those, are profiled
    prof = ours_profile(mlp, 4, warmup=3, steps=steps, extra=["trainer.members_at_once=2"])
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls["aten::native_batch_norm_backward"] == 2 * 3 * steps
    assert calls["aten::native_batch_norm"] == 2 * 3 * steps
    text = table(["a", "b"], [{"x": 2.0, "y": 1.0}, {"x": 1.0, "z": 0.5}])
    assert "| `x` | 2.000 | 1.000 |" in text and "| **total** | **3.000** | **1.500** |" in text


def test_our_sample_adds_up_the_timed_spans_of_every_chunk(mlp, monkeypatch):
    """A population in chunks runs steps 1..warmup+steps once per chunk: the sample is the sum
    of the chunks' timed spans per model-step (the last chunk's span alone would halve it)."""
    from bnrepro.bench import ours

    ticks = iter([10.0, 13.0, 20.0, 25.0])  # chunk 1: 3 s timed, chunk 2: 5 s timed
    monkeypatch.setattr(ours.time, "perf_counter", lambda: next(ticks))

    def two_chunks(configs, dirs, on_step):
        for _ in range(2):
            for step in range(1, 2 + 4 + 1):
                on_step(step)

    monkeypatch.setattr(ours, "train_population", two_chunks)
    ms = ours.our_trainer(mlp, 4)(2, 4)
    assert ms == pytest.approx((3 + 5) / 4 / 4 * 1000)


def test_the_long_nets_profile_runs_every_loop_in_channels_last():
    """bench.profile's long-tier columns are the loops of the long targets, in the layout the
    long tier trains in: every conv of each loop sees a channels_last input (a column left
    contiguous would profile another layout than the one the bench's target compares). Not
    every conv: a strided 1x1 shortcut reads a strided view (peers.py, models/layers.py)."""
    from bnrepro.bench.profile import long_loops
    from bnrepro.bench.workloads import cnn_workload

    w = cnn_workload(torch.device("cpu"), num_train=256, eval_images=64, net="resnet20")
    formats: list[bool] = []
    original = torch.nn.functional.conv2d

    def recording(x, *args, **kwargs):
        formats.append(x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                       and not x.is_contiguous())
        return original(x, *args, **kwargs)

    loops = long_loops(w, 2)
    assert [label for label, _ in loops] == [
        "plain loop, channels_last", "bnrepro single run, channels_last",
        "members one after another (plain loop x 2)", "bnrepro population P=2, channels_last"]
    for label, run in loops[:2]:
        formats.clear()
        torch.nn.functional.conv2d = recording
        try:
            times = run(1, 1)
        finally:
            torch.nn.functional.conv2d = original
        assert times and sum(times.values()) > 0
        assert formats and sum(formats) >= 0.8 * len(formats), (label, formats)
