"""`make bench` (`python -m bnrepro.bench`): every row side by side, then the targets.

Writes results/bench.json and results/bench.md (`--quick`: a few steps and one round, for
tests; it writes only where --out says).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from bnrepro.atomic import atomic_write_json, atomic_write_text
from bnrepro.bench import conv_execution, peers, pooling, report, roofline
from bnrepro.bench.evaluation_cost import evaluation_cost
from bnrepro.bench.measures_cost import measures_cost
from bnrepro.bench.ours import our_trainer
from bnrepro.bench.timing import Row, run_rounds
from bnrepro.bench.workloads import LONG_NETS, Workload, cnn_workload, mlp_workload
from bnrepro.device import configure, resolve_device
from bnrepro.run import machine

SECTIONS = ("mlp", "cnn", "long", "roofline", "conv", "pool", "eval", "measures")


def mlp_rows(w: Workload, root: str, populations: Sequence[int], compile_skip: str | None,
             processes_skip: str | None) -> list[Row]:
    compiled = Row("mlp", "mlp/compiled", "plain loop + torch.compile(model)", False, 1,
                   lambda: None, note="compile time excluded (compile_s)", skipped=compile_skip)
    compiled.setup = partial(peers.compiled_loop, w, compiled.extra)
    processes = machine.cores()
    return [
        Row("mlp", "mlp/tutorial", "tutorial loop (torchvision MNIST + DataLoader)", False, 1,
            partial(peers.tutorial_loop, w)),
        Row("mlp", "mlp/plain", "plain in-memory loop", False, 1, partial(peers.plain_loop, w)),
        compiled,
        *(Row("mlp", f"mlp/ensemble{P}", f"torch.func ensemble P={P}", False, P,
              partial(peers.func_ensemble, w, P)) for P in populations),
        Row("mlp", "mlp/processes", f"plain loop in {processes} joblib processes x 1 thread",
            False, processes, partial(peers.separate_processes, w, root, processes),
            note="one process per member, as many at a time as there are cores",
            skipped=processes_skip),
        Row("mlp", "mlp/ours1", "bnrepro single run", True, 1, partial(our_trainer, w, 1)),
        *(Row("mlp", f"mlp/ours{P}", f"bnrepro population P={P}", True, P,
              partial(our_trainer, w, P)) for P in populations),
    ]


def cnn_rows(w: Workload, populations: Sequence[int]) -> list[Row]:
    P = max(populations)  # the peers that train a population, at the largest
    return [
        Row("cnn", "cnn/plain", "plain nn.Sequential loop", False, 1, partial(peers.plain_loop, w)),
        Row("cnn", "cnn/plain_channels_last", "plain loop, channels_last", False, 1,
            partial(peers.plain_loop, w, channels_last=True)),
        Row("cnn", f"cnn/ensemble{P}", f"torch.func ensemble P={P}", False, P,
            partial(peers.func_ensemble, w, P)),
        Row("cnn", f"cnn/sequential{P}", f"members one after another (plain loop x {P})", False,
            P, partial(peers.members_one_after_another, w, P)),
        Row("cnn", "cnn/ours1", "bnrepro single run", True, 1, partial(our_trainer, w, 1)),
        *(Row("cnn", f"cnn/ours{p}", f"bnrepro population P={p}", True, p,
              partial(our_trainer, w, p)) for p in populations),
        Row("cnn", f"cnn/ours{P}_grouped", f"bnrepro population P={P}, conv_execution=grouped",
            True, P, partial(our_trainer, w, P, ["model.conv_execution=grouped"]),
            note="forced grouped convs, next to auto's choice"),
        Row("cnn", f"cnn/ours{P}_chunked", f"bnrepro population P={P}, trainer.members_at_once="
            f"{P // 2}", True, P, partial(our_trainer, w, P, [f"trainer.members_at_once={P // 2}"]),
            note="two chunks trained one after another, the same floats as one population"),
    ]


def long_rows(w: Workload, P: int, compile_skip: str | None) -> list[Row]:
    """A long-tier net (workloads.LONG_NETS): the plain loops (contiguous, channels_last,
    compiled), its P members one after another, and ours single and as a population, each
    with the speed knobs model.memory_format and trainer.compile (single runs; and both)
    next to the defaults. The issue's targets (report.py) compare our fastest with the plain
    loops."""
    net = w.net
    compiled = Row(net, f"{net}/compiled", "plain loop + torch.compile(model)", False, 1,
                   lambda: None, note="compile time excluded (compile_s)", skipped=compile_skip)
    compiled.setup = partial(peers.compiled_loop, w, compiled.extra)
    channels_last = ["model.memory_format=channels_last"]
    return [
        Row(net, f"{net}/plain", "plain nn.Module loop", False, 1, partial(peers.plain_loop, w)),
        Row(net, f"{net}/plain_channels_last", "plain loop, channels_last", False, 1,
            partial(peers.plain_loop, w, channels_last=True)),
        compiled,
        Row(net, f"{net}/sequential{P}", f"members one after another (plain loop x {P})", False,
            P, partial(peers.members_one_after_another, w, P)),
        Row(net, f"{net}/ours1", "bnrepro single run", True, 1, partial(our_trainer, w, 1)),
        Row(net, f"{net}/ours1_channels_last", "bnrepro single run, model.memory_format="
            "channels_last", True, 1, partial(our_trainer, w, 1, channels_last)),
        Row(net, f"{net}/ours1_compile", "bnrepro single run, trainer.compile=true", True, 1,
            partial(our_trainer, w, 1, ["trainer.compile=true"]),
            note="compiled in set-up, before the timed steps", skipped=compile_skip),
        # both levers at once: Inductor fuses each norm with its activation (and the pooling
        # after it) into one pass over a channels_last activation
        Row(net, f"{net}/ours1_compile_channels_last", "bnrepro single run, trainer.compile="
            "true, channels_last", True, 1,
            partial(our_trainer, w, 1, ["trainer.compile=true", *channels_last]),
            note="compiled in set-up, before the timed steps", skipped=compile_skip),
        Row(net, f"{net}/ours{P}", f"bnrepro population P={P}", True, P,
            partial(our_trainer, w, P)),
        Row(net, f"{net}/ours{P}_channels_last", f"bnrepro population P={P}, "
            "model.memory_format=channels_last", True, P,
            partial(our_trainer, w, P, channels_last)),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few steps, one round, small populations, no torch.compile "
                             "and no worker processes (tests)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every row")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per sample")
    # Defaults sized for ~5-6 minutes on a quiet 2-core CPU (the step times)
    parser.add_argument("--steps-mlp", type=int, default=250, help="timed steps per sample")
    parser.add_argument("--steps-cnn", type=int, default=50, help="timed steps per sample")
    parser.add_argument("--mlp-populations", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--cnn-populations", type=int, nargs="+", default=[4, 8])
    # The long tier's nets take 20-100 ms a step here: fewer steps, the same rounds. Their rows
    # add, per net and round, (warm-up + steps) x (3 plain + P one after another + 3 single
    # runs of ours + 2 populations of P) model-steps: 20 x 18 = 360 at P=4, 1,080 over 3 rounds,
    # 3,240 for the three nets (plus compiling once per compiled row and sample, and our
    # trainer's two short evaluations per sample).
    parser.add_argument("--steps-long", type=int, default=15, help="timed steps per sample")
    parser.add_argument("--warmup-long", type=int, default=5,
                        help="untimed steps per sample of the long-tier nets")
    parser.add_argument("--long-population", type=int, default=4)
    parser.add_argument("--long-nets", nargs="+", choices=LONG_NETS, default=list(LONG_NETS))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default="data", help="dataset cache (as dataset.root)")
    parser.add_argument("--out", default=None, help="JSON (default results/bench.json; "
                                                    "--quick writes none unless given)")
    parser.add_argument("--markdown", default=None, help="default: the JSON's path, .md")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.steps_mlp, args.steps_cnn = 1, 2, 4, 2
        args.mlp_populations, args.cnn_populations = [2, 4], [2, 3]
        args.steps_long, args.warmup_long, args.long_population = 1, 1, 2
    elif args.out is None:
        args.out = "results/bench.json"
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine.cpu_model()
    long_nets = list(args.long_nets) if "long" in args.only else []
    steps = {"mlp": args.steps_mlp, "cnn": args.steps_cnn,
             **dict.fromkeys(long_nets, args.steps_long)}
    warmup = {"mlp": args.warmup, "cnn": args.warmup,
              **dict.fromkeys(long_nets, args.warmup_long)}
    result: dict = {
        # the trainer's defaults (ieee, deterministic): a row times what a run computes
        "machine": {"device": str(device), "device_name": name, **machine.describe(device),
                    **configure(device)},
        "protocol": {"repeats": args.repeats, "warmup": args.warmup, "warmups": warmup,
                     "steps": steps,
                     "populations": {"mlp": args.mlp_populations, "cnn": args.cnn_populations,
                                     **dict.fromkeys(long_nets, [args.long_population])},
                     "quick": args.quick,
                     "note": "rows run in rounds, each sample warm-up + timed steps; set-up "
                             "(data, building, compiling) untimed; CNN images random uint8"}}
    print(f"bench on {device} ({name}), {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}: {args.repeats} rounds x (warm-up {args.warmup} + "
          f"{args.steps_mlp} MLP / {args.steps_cnn} CNN steps)" + (
              f"; long-tier nets {', '.join(long_nets)}: warm-up {args.warmup_long} + "
              f"{args.steps_long} steps, P={args.long_population}" if long_nets else ""))
    if args.quick:  # small evaluations and CNN data: the quick run is for tests
        workloads = {"mlp": mlp_workload(args.data_root, device, eval_images=100),
                     "cnn": cnn_workload(device, num_train=1000, eval_images=100)}
    else:
        workloads = {"mlp": mlp_workload(args.data_root, device),
                     "cnn": cnn_workload(device)}
    for net in long_nets:
        workloads[net] = cnn_workload(device, net=net, **(
            {"num_train": 1000, "eval_images": 100} if args.quick else {}))
    compile_skip = "skipped (--quick)" if args.quick else \
        "skipped (--no-compile)" if args.no_compile else None
    processes_skip = "skipped (--quick)" if args.quick else \
        None if device.type == "cpu" else f"skipped (a CPU row; device {device})"
    rows: list[Row] = []
    if "mlp" in args.only:
        rows += mlp_rows(workloads["mlp"], args.data_root, args.mlp_populations, compile_skip,
                         processes_skip)
    if "cnn" in args.only:
        rows += cnn_rows(workloads["cnn"], args.cnn_populations)
    for net in long_nets:
        rows += long_rows(workloads[net], args.long_population, compile_skip)
    run_rounds(rows, warmup, steps, args.repeats)

    roofline_ms: dict[str, float] = {}
    if "roofline" in args.only:
        print(f"[{time.perf_counter() - started:.0f} s] roofline: counting FLOPs, timing sgemm "
              "and the CNN's convs")
        size = 256 if args.quick else 2048
        sgemm = roofline.sgemm_gflops(device, size, 1 if args.quick else 5)
        flops = {net: roofline.training_step_flops(w) for net, w in workloads.items()}
        rates = {net: roofline.conv_rates(w, 1 if args.quick else 5, 2 if args.quick else 10)
                 for net, w in workloads.items() if net != "mlp"}
        roofline_ms = {"mlp": roofline.roofline_ms(flops["mlp"], sgemm, []),
                       **{net: roofline.roofline_ms(flops[net], sgemm, r)
                          for net, r in rates.items()}}
        result["roofline"] = {"sgemm_gflops": round(sgemm, 2), "sgemm_size": size,
                              "conv_rates": rates["cnn"], "flops": flops,
                              "long_conv_rates": {net: rates[net] for net in long_nets},
                              "ms": {k: round(v, 4) for k, v in roofline_ms.items()}}
    ms = report.medians(rows)
    result["rows"] = [report.row_record(r, roofline_ms.get(r.net),
                                        report.best_plain(r.net, ms)) for r in rows]
    if "conv" in args.only:
        print(f"[{time.perf_counter() - started:.0f} s] conv execution: grouped vs per member")
        result["conv_execution"] = conv_execution.measure(
            device, (4,) if args.quick else conv_execution.POPULATIONS,
            conv_execution.SIZES[:1] if args.quick else conv_execution.SIZES,
            repeats=1 if args.quick else 3)
        print(conv_execution.table(result["conv_execution"]))
    if "pool" in args.only:
        print(f"[{time.perf_counter() - started:.0f} s] max-pooling: torch's vs ours")
        result["pooling"] = pooling.measure(device, sizes=pooling.SIZES[:1] if args.quick
                                            else pooling.SIZES, repeats=1 if args.quick else 3)
        print(pooling.table(result["pooling"]))
    if "eval" in args.only:
        print(f"[{time.perf_counter() - started:.0f} s] evaluation cost: a short Fig. 1 run and "
              "one evaluation's parts")
        result["evaluation"] = evaluation_cost(
            args.data_root, device, *((2, 2, 1) if args.quick else (2000, 500, 3)),
            quick=args.quick)
    if "measures" in args.only:
        print(f"[{time.perf_counter() - started:.0f} s] Santurkar measures: cost per measurement")
        result["measures"] = measures_cost(args.data_root, device,
                                           *((1, 2) if args.quick else (5, 10)))
    found = report.targets(rows, roofline_ms, result.get("evaluation"), args.mlp_populations,
                           args.cnn_populations, {net: args.long_population for net in long_nets})
    result["targets"] = [t.as_dict() for t in found]
    result["bench_seconds"] = round(time.perf_counter() - started, 1)

    text = report.markdown(result)
    print("\n" + text)
    if args.out:
        atomic_write_json(args.out, result)
        md = args.markdown or str(Path(args.out).with_suffix(".md"))
        atomic_write_text(md, text)
        print(f"wrote {args.out} and {md} ({result['bench_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
