"""`make bench-profile` (`python -m bnrepro.bench.profile`): where a training step's time goes,
ours beside the peers `make bench` compares it with, op by op (torch.profiler).

For each net, the loops of the bench's unmet targets: the fastest plain loop and our single
run, the torch.func ensemble and our population at the same P; for the long tier's conv nets,
in channels_last, the plain loop and our single run, the members one after another and our
population. Each loop warms up, then `--steps` steps run under the profiler (ours: only its
training steps, the span the bench times). The table gives each op's self time in ms per
model-step: the ops where a loop spends more than its peer are what bounds its ratio. The
profiler adds a few microseconds per op, so totals are above the bench's times; compare
columns, not the bench's numbers.
Writes results/bench_profile.md (or --out).
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bnrepro.atomic import atomic_write_text
from bnrepro.bench import peers
from bnrepro.bench.ours import our_trainer
from bnrepro.bench.report import NET_TITLES
from bnrepro.bench.roofline import sgemm_gflops
from bnrepro.bench.timing import median_time
from bnrepro.bench.workloads import LONG_NETS, Workload, cnn_workload, mlp_workload
from bnrepro.train import resolve_device

TOP_OPS = 8  # each loop's most expensive ops; the table shows their union


def _activities(device: torch.device) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def _self_times(prof: profile, device: torch.device, model_steps: int) -> dict[str, float]:
    """op -> self time in ms per model-step (device time on a GPU, else CPU time)."""
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {e.key: getattr(e, key) / 1000 / model_steps for e in prof.key_averages()
            if getattr(e, key) > 0}


def profile_peer(setup: Callable[[], Callable[[int, int], float]], population_size: int,
                 device: torch.device, warmup: int, steps: int) -> dict[str, float]:
    sample = setup()
    sample(warmup, 1)
    with profile(activities=_activities(device)) as prof:
        sample(0, steps)
    return _self_times(prof, device, steps * population_size)


def ours_profile(w: Workload, population_size: int, warmup: int, steps: int,
                 extra: list[str] | None = None) -> profile:
    """Our trainer's steps warmup+1 .. warmup+steps under the profiler, nothing else;
    `extra`: config overrides."""
    activities = _activities(w.device)
    prof = profile(activities=activities)
    started: list[bool] = []

    # A population bigger than trainer.members_at_once trains in chunks, each with its own
    # timed span: the profiler collects during every span and pauses between them.
    def start() -> None:
        if started:
            prof.toggle_collection_dynamic(True, activities)
        else:
            prof.start()
        started.append(True)

    our_trainer(w, population_size, extra,
                span=(start, lambda: prof.toggle_collection_dynamic(False, activities)))(
        warmup, steps)
    prof.stop()
    return prof


def profile_ours(w: Workload, population_size: int, warmup: int, steps: int,
                 extra: list[str] | None = None) -> dict[str, float]:
    return _self_times(ours_profile(w, population_size, warmup, steps, extra), w.device,
                       steps * population_size)


def long_loops(w: Workload, population_size: int
               ) -> list[tuple[str, Callable[[int, int], dict[str, float]]]]:
    """(label, profile(warmup, steps)) for a long-tier net (workloads.LONG_NETS), all in
    channels_last, the layout the long tier trains in: the plain loop against our single run
    (the single-run target), its members one after another against our population (the
    population target)."""
    P, last = population_size, ["model.memory_format=channels_last"]
    return [
        ("plain loop, channels_last",
         lambda a, b: profile_peer(lambda: peers.plain_loop(w, True), 1, w.device, a, b)),
        ("bnrepro single run, channels_last", lambda a, b: profile_ours(w, 1, a, b, last)),
        (f"members one after another (plain loop x {P})",
         lambda a, b: profile_peer(lambda: peers.members_one_after_another(w, P), P,
                                   w.device, a, b)),
        (f"bnrepro population P={P}, channels_last",
         lambda a, b: profile_ours(w, P, a, b, last)),
    ]


def loops(w: Workload, population_size: int
          ) -> list[tuple[str, Callable[[int, int], dict[str, float]]]]:
    """(label, profile(warmup, steps)) for the loops of the bench's unmet targets."""
    # The CNN's plain loop both ways: which layout is faster depends on the CPU (channels_last
    # on the EPYC of earlier runs, contiguous on a Xeon with AVX-512, in make bench).
    layouts = [False, True] if w.net == "cnn" else [False]
    P = population_size
    return [
        *(("plain loop" + (", channels_last" if last else ""),
           lambda a, b, last=last: profile_peer(lambda: peers.plain_loop(w, last), 1, w.device,
                                                a, b)) for last in layouts),
        ("bnrepro single run", lambda a, b: profile_ours(w, 1, a, b)),
        (f"torch.func ensemble P={P}",
         lambda a, b: profile_peer(lambda: peers.func_ensemble(w, P), P, w.device, a, b)),
        (f"bnrepro population P={P}", lambda a, b: profile_ours(w, P, a, b)),
    ]


def product_ceiling(w: Workload, population_size: int, repeats: int = 5) -> dict[str, float]:
    """The MLP population's batched products alone, as a training step runs them (per layer:
    forward, weight gradient, and the input gradient but for the first layer), in GFLOP/s,
    beside this machine's sgemm: the most a step made of bmm could reach."""
    sizes = [int(math.prod(w.images.shape[1:])), *w.config.model.hidden, 10]
    P, B, d = population_size, w.batch_size, w.device
    layers = [(torch.randn(P, B, a, device=d), torch.randn(P, a, b, device=d),
               torch.randn(P, B, b, device=d)) for a, b in itertools.pairwise(sizes)]

    def products() -> None:
        for i, (x, weight, grad) in enumerate(layers):
            torch.bmm(x, weight)
            torch.bmm(x.transpose(1, 2), grad)
            if i:
                torch.bmm(grad, weight.transpose(1, 2))

    flops = sum(2 * P * B * x.shape[2] * weight.shape[2] * (3 if i else 2)
                for i, (x, weight, _) in enumerate(layers))
    return {"bmm_gflops": flops / median_time(products, 20, repeats, d) / 1e9,
            "sgemm_gflops": sgemm_gflops(d)}


def table(columns: Sequence[str], times: Sequence[dict[str, float]]) -> str:
    shown: list[str] = []
    for t in times:
        for op in sorted(t, key=t.get, reverse=True)[:TOP_OPS]:
            if op not in shown:
                shown.append(op)
    shown.sort(key=lambda op: -max(t.get(op, 0.0) for t in times))
    lines = ["| op (self time, ms per model-step) | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for op in shown:
        lines.append(f"| `{op}` | " + " | ".join(f"{t.get(op, 0.0):.3f}" for t in times) + " |")
    other = [sum(t.values()) - sum(t.get(op, 0.0) for op in shown) for t in times]
    lines.append("| every other op | " + " | ".join(f"{v:.3f}" for v in other) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(t.values()):.3f}**" for t in times)
                 + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps-mlp", type=int, default=200, help="profiled steps per loop")
    parser.add_argument("--steps-cnn", type=int, default=30, help="profiled steps per loop")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--mlp-population", type=int, default=64)
    parser.add_argument("--cnn-population", type=int, default=8)
    parser.add_argument("--steps-long", type=int, default=10,
                        help="profiled steps per loop of the long-tier nets")
    parser.add_argument("--long-population", type=int, default=4)
    parser.add_argument("--only", nargs="+", choices=("mlp", "cnn", *LONG_NETS),
                        default=["mlp", "cnn", *LONG_NETS])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default="data", help="dataset cache (as dataset.root)")
    parser.add_argument("--out", default="results/bench_profile.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    parts = [f"# Where a training step's time goes ({device.type}, {torch.get_num_threads()} "
             f"threads, torch {torch.__version__})\n",
             "Written by `make bench-profile` (`python -m bnrepro.bench.profile`): "
             f"{args.warmup} warm-up steps, then {args.steps_mlp} (MLP) / {args.steps_cnn} "
             f"(CNN) / {args.steps_long} (the long tier's nets) profiled steps per loop; each "
             "op's self time per model-step. Under the "
             "profiler every op costs a few microseconds more: compare the columns, not the "
             "totals with `make bench`.\n"]
    for net in args.only:
        if net == "mlp":
            w, P, steps = mlp_workload(args.data_root, device), args.mlp_population, \
                args.steps_mlp
        elif net == "cnn":
            w, P, steps = cnn_workload(device), args.cnn_population, args.steps_cnn
        else:
            w, P, steps = cnn_workload(device, net=net), args.long_population, args.steps_long
        labels, times = [], []
        for label, run in (loops if net in ("mlp", "cnn") else long_loops)(w, P):
            print(f"  {net}: profiling {label} ({steps} steps)", flush=True)
            labels.append(label)
            times.append(run(args.warmup, steps))
        parts.append(f"## {net}: {NET_TITLES[net]}\n\n{table(labels, times)}\n")
        if net == "mlp":
            c = product_ceiling(w, P)
            parts.append(f"The population's batched products alone (P={P}: per layer forward, "
                         "weight gradient and input gradient but for the first layer, "
                         f"unprofiled): {c['bmm_gflops']:.1f} GFLOP/s, against "
                         f"{c['sgemm_gflops']:.1f} for a 2048^3 sgemm "
                         f"({100 * c['bmm_gflops'] / c['sgemm_gflops']:.0f}%): the share of "
                         "the roofline a step made of nothing but its products would reach.\n")
    text = "\n".join(parts)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    return text


if __name__ == "__main__":
    main()
