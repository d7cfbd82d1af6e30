"""The bench's results: the JSON record, the markdown tables, and the issue's targets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bnrepro.bench import pooling
from bnrepro.bench.timing import Row
from bnrepro.bench.workloads import CONV_NETS

# Our single-run rows of a long-tier net: the defaults and each speed knob (its fastest counts)
SINGLE_KNOBS = ("", "_channels_last", "_compile", "_compile_channels_last")
POPULATION_KNOBS = ("", "_channels_last")


@dataclass
class Target:
    text: str
    value: float | None  # None: a row it needs has no timing
    threshold: float
    unit: str = "x"  # "x": a speed ratio; "%": a fraction
    at_most: bool = False  # met when value <= threshold (else >=)
    # The same ratio from each round's samples alone (rows of one round run minutes apart at
    # most, so a round pairs like with like); empty where the target has no rounds
    rounds: list[float] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self._meets(self.value)

    def _meets(self, value: float) -> bool:
        return value <= self.threshold if self.at_most else value >= self.threshold

    @property
    def settled(self) -> bool | None:
        """Whether every round agrees with the verdict of the medians; None without rounds."""
        if self.met is None or len(self.rounds) < 2:
            return None
        return all(self._meets(r) == self.met for r in self.rounds)

    def as_dict(self) -> dict:
        return {"target": self.text, "value": None if self.value is None else
                round(self.value, 4), "threshold": self.threshold, "unit": self.unit,
                "at_most": self.at_most, "met": self.met,
                "rounds": [round(r, 4) for r in self.rounds], "settled": self.settled}

    @classmethod
    def from_dict(cls, d: dict) -> Target:
        return cls(d["target"], d["value"], d["threshold"], d["unit"], d["at_most"],
                   d.get("rounds", []))

    def line(self) -> str:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[self.met]

        def show(x: float) -> str:
            return f"{x:.0%}" if self.unit == "%" else f"{x:.2f}x"

        shown = "n/a" if self.value is None else show(self.value)
        if self.settled is not None:
            shown += (f" (rounds {show(min(self.rounds))}..{show(max(self.rounds))}"
                      f"{'' if self.settled else ', not settled: rounds on both sides'})")
        return (f"{verdict}: {self.text}: {shown} (target {'<=' if self.at_most else '>='} "
                f"{show(self.threshold)})")


def medians(rows: Sequence[Row]) -> dict[str, float]:
    return {r.key: r.spread.median for r in rows if r.spread is not None}


def rounds(rows: Sequence[Row]) -> list[dict[str, float]]:
    """Per round, each row's sample of that round (rows that failed midway drop out)."""
    count = max((len(r.samples) for r in rows), default=0)
    return [{r.key: r.samples[i] for r in rows if i < len(r.samples)} for i in range(count)]


def plain_keys(net: str) -> list[str]:
    """The plain in-memory loops of a net: the MLP's, or a conv net's in both layouts."""
    return [f"{net}/plain"] + ([] if net == "mlp" else [f"{net}/plain_channels_last"])


def fastest(ms: dict[str, float], keys: Sequence[str]) -> float | None:
    found = [ms[k] for k in keys if k in ms]
    return min(found) if found else None


def best_plain(net: str, ms: dict[str, float]) -> float | None:
    return fastest(ms, plain_keys(net))


def ratio(slow: float | None, fast: float | None) -> float | None:
    return None if slow is None or fast is None else slow / fast


def long_net_specs(net: str, P: int
                   ) -> list[tuple[str, Callable[[dict[str, float]], float | None], float, str]]:
    """The issue's targets for a long-tier net (bench.__main__.long_rows): our fastest single
    run (defaults, channels_last, compiled, or both) >= 1.3x the faster plain eager loop and >= 1x
    the compiled one; our faster population >= 1.2x its members one after another; and a
    population never slower per member than a single run, layout for layout."""
    singles = [f"{net}/ours1{knob}" for knob in SINGLE_KNOBS]
    populations = [f"{net}/ours{P}{knob}" for knob in POPULATION_KNOBS]

    def population_vs_single(ms: dict[str, float]) -> float | None:
        found = [ratio(ms.get(f"{net}/ours1{knob}"), ms.get(f"{net}/ours{P}{knob}"))
                 for knob in POPULATION_KNOBS]
        found = [r for r in found if r is not None]
        return min(found) if found else None

    return [
        (f"{net}: our fastest single run (defaults, channels_last, compiled, or both) vs the "
         "faster plain eager loop (contiguous or channels_last), per step",
         lambda ms: ratio(best_plain(net, ms), fastest(ms, singles)), 1.3, "x"),
        (f"{net}: our fastest single run vs the plain loop under torch.compile, per step",
         lambda ms: ratio(ms.get(f"{net}/compiled"), fastest(ms, singles)), 1.0, "x"),
        (f"{net}: our faster population P={P} (defaults or channels_last) vs its members "
         f"one after another (plain loop x {P}), per model-step",
         lambda ms: ratio(ms.get(f"{net}/sequential{P}"), fastest(ms, populations)), 1.2, "x"),
        (f"{net}: a population P={P} vs our single run, per model-step, the worse of the two "
         "layouts", population_vs_single, 1.0, "x"),
    ]


def targets(rows: Sequence[Row], roofline: dict[str, float], evaluation: dict | None,
            mlp_populations: Sequence[int] = (16, 64), cnn_populations: Sequence[int] = (4, 8),
            long: Mapping[str, int] | None = None) -> list[Target]:
    """The issue's targets, each from this run's medians, and from each round alone; `long`:
    the long-tier nets measured, each with its population size."""
    largest = max(cnn_populations)
    sizes = ", ".join(map(str, cnn_populations))

    def slowest_population_vs_sequential(ms: dict[str, float]) -> float | None:
        populations = [ms[f"cnn/ours{p}"] for p in cnn_populations if f"cnn/ours{p}" in ms]
        return ratio(ms.get(f"cnn/sequential{largest}"), max(populations, default=None))

    P_mlp = max(mlp_populations)
    specs: list[tuple[str, Callable[[dict[str, float]], float | None], float, str]] = [
        *((f"{net}: our single run vs the fastest plain in-memory loop, per step",
           lambda ms, net=net: ratio(best_plain(net, ms), ms.get(f"{net}/ours1")), 1.0, "x")
          for net in ("mlp", "cnn")),
        *((f"{net}: our population P={P} vs the torch.func ensemble P={P}, per model-step",
           lambda ms, net=net, P=P: ratio(ms.get(f"{net}/ensemble{P}"),
                                          ms.get(f"{net}/ours{P}")), 1.5, "x")
          for net, P in [*(("mlp", P) for P in mlp_populations), ("cnn", largest)]),
        (f"mlp: our population P={P_mlp}, share of the measured roofline",
         lambda ms: ratio(roofline.get("mlp"), ms.get(f"mlp/ours{P_mlp}")), 0.5, "%"),
        (f"cnn: our slowest population (P={sizes}) vs its members trained one after another, "
         "per model-step", slowest_population_vs_sequential, 1.0, "x"),
        ("cnn (aim): the same", slowest_population_vs_sequential, 1.3, "x"),
        *(spec for net, P in (long or {}).items() for spec in long_net_specs(net, P)),
    ]
    ms, per_round = medians(rows), rounds(rows)
    found = []
    for text, measure, threshold, unit in specs:
        value = measure(ms)
        paired = [measure(r) for r in per_round]
        found.append(Target(text, value, threshold, unit, rounds=[] if value is None else
                            [v for v in paired if v is not None]))
    fraction = None if evaluation is None else evaluation["full_run"]["evaluation_fraction"]
    found.append(Target("evaluation's share of a Fig. 1 run's time (default cadence)",
                        fraction, 0.2, "%", at_most=True))
    return found


def row_record(row: Row, roofline_ms: float | None, reference_ms: float | None) -> dict:
    spread = row.spread
    record = {"net": row.net, "key": row.key, "label": row.label, "ours": row.ours,
              "population_size": row.population_size,
              "ms_per_model_step": None if spread is None else spread.as_dict(),
              "samples_ms": [round(s, 4) for s in row.samples],
              "roofline_fraction": None if spread is None or roofline_ms is None else
              round(roofline_ms / spread.median, 4),
              "speedup_vs_plain": None if spread is None or reference_ms is None else
              round(reference_ms / spread.median, 3)}
    for key, value in (("note", row.note), ("error", row.error), ("skipped", row.skipped)):
        if value:
            record[key] = value
    return record | row.extra


# The bench's nets and their data (workloads.py), as its tables name them.
NET_TITLES = {"mlp": "Fig. 1 MLP (784-100-100-100-10, sigmoid, BN, batch 60, MNIST)",
              **{net: title for net, (title, _) in CONV_NETS.items()}}


def _long_protocol(protocol: dict) -> str:
    """The long-tier nets' own warm-up and step counts, where the run measured them."""
    nets = [net for net in protocol["steps"] if net not in ("mlp", "cnn")]
    if not nets:
        return ""
    net = nets[0]
    return (f", {protocol.get('warmups', {}).get(net, protocol['warmup'])} + "
            f"{protocol['steps'][net]} for the long-tier nets ({', '.join(nets)})")


def markdown(result: dict) -> str:
    """results/bench.md: the tables docs/speed.md includes."""
    m, p = result["machine"], result["protocol"]
    cpu = f", vector ISA {m['cpu_capability']}" if "cpu_capability" in m else ""
    out = [f"Measured by `make bench` on {m['device']} ({m['device_name']}{cpu}), "
           f"{m['threads']} threads, torch {m['torch']}: {p['repeats']} rounds of every row, "
           f"each sample {p['warmup']} warm-up + {p['steps']['mlp']} (MLP) / "
           f"{p['steps']['cnn']} (CNN) timed steps{_long_protocol(p)}; median (min..max) ms "
           "per model-step."]
    for net, title in NET_TITLES.items():
        rows = [r for r in result["rows"] if r["net"] == net]
        if not rows:
            continue
        out += ["", f"**{title}**", "",
                "| loop | P | ms / model-step | speed-up vs plain loop | % of roofline |",
                "|---|---|---|---|---|"]
        for r in rows:
            s = r["ms_per_model_step"]
            if s is None:
                shown = r.get("skipped") or r.get("error") or "not measured"
                out.append(f"| {r['label']} | {r['population_size']} | {shown} | | |")
                continue
            speedup = "" if r["speedup_vs_plain"] is None else f"{r['speedup_vs_plain']:.2f}x"
            roof = "" if r["roofline_fraction"] is None else f"{r['roofline_fraction']:.0%}"
            out.append(f"| {r['label']} | {r['population_size']} | {s['median']:.3f} "
                       f"({s['min']:.3f}..{s['max']:.3f}) | {speedup} | {roof} |")
    roof = result.get("roofline")
    if roof:
        convs = ", ".join(f"{c['input'][1]}->{c['out_channels']} at {c['input'][2]}x"
                          f"{c['input'][3]}: {c['gflops']:.1f}" for c in roof["conv_rates"])
        out += ["", f"Roofline: sgemm {roof['sgemm_gflops']:.1f} GFLOP/s "
                    f"({roof['sgemm_size']}^3); lone convs, forward + backward, batch 64, "
                    f"GFLOP/s: {convs}. FLOPs per model-step (counted by FlopCounterMode, "
                    f"forward + backward): MLP {roof['flops']['mlp']['matmul'] / 1e6:.1f} M "
                    f"matmul; CNN {roof['flops']['cnn']['matmul'] / 1e6:.1f} M matmul + "
                    f"{roof['flops']['cnn']['conv'] / 1e6:.1f} M conv. Roofline ms per "
                    f"model-step: MLP {roof['ms']['mlp']:.3f}, CNN {roof['ms']['cnn']:.3f}."]
    if roof and roof.get("long_conv_rates"):
        out += ["", "Roofline of the long-tier nets (their convs timed alone the same way), FLOPs "
                    "per model-step and ms per model-step: " + "; ".join(
                        f"{net} {roof['flops'][net]['matmul'] / 1e6:.1f} M matmul + "
                        f"{roof['flops'][net]['conv'] / 1e6:.1f} M conv, {roof['ms'][net]:.3f} ms"
                        for net in roof["long_conv_rates"]) + "."]
    ev = result.get("evaluation")
    if ev:
        one, full, short = ev["one_evaluation_s"], ev["full_run"], ev["short_run"]
        out += ["", f"Evaluation of a Fig. 1 population (P={ev['population_size']}): one "
                    f"evaluation {one['whole_evaluation']:.3f} s (Alg. 2 statistics "
                    f"{one['alg2_statistics']:.3f}, validation + test "
                    f"{one['validation_and_test']:.3f}, probes {one['probes']:.3f}); a full "
                    f"run's {full['evaluations']} evaluations {full['evaluation_s']:.0f} s "
                    f"against {full['training_s']:.0f} s of training: "
                    f"{full['evaluation_fraction']:.0%} of its time. A {short['steps']}-step "
                    f"run (evaluations every {short['eval_every']}): "
                    f"{short['not_training_fraction']:.0%} of its wall time is not training "
                    "(evaluations, set-up, checkpoint)."]
    measures = result.get("measures")
    if measures:
        out += ["", f"Santurkar measures (off by default), Fig. 1 population "
                    f"(P={measures['population_size']}), one training step "
                    f"{measures['step_ms']:.2f} ms: one gradient-ICS measurement "
                    f"{measures['ics']['ms']:.1f} ms ({measures['ics']['training_steps']:.1f} "
                    f"steps), one loss-landscape measurement {measures['landscape']['ms']:.1f} "
                    f"ms ({measures['landscape']['training_steps']:.1f} steps)."]
    conv = result.get("conv_execution")
    if conv:
        out += ["", "Population conv, ms per member (forward + backward, batch 64): "
                    "lone conv / grouped / per member", "",
                "| conv | P | lone | grouped | per member |", "|---|---|---|---|---|"]
        out += [f"| {c['conv']} | {c['P']} | {c['alone_ms']:.3f} | {c['grouped_ms']:.3f} | "
                f"{c['per_member_ms']:.3f} |" for c in conv]
    pool = result.get("pooling")
    if pool:
        out += ["", "Max-pooling of the folded layout, ms per model: torch's F.max_pool2d vs "
                    "models.pooling (the same floats; a contiguous input, as without "
                    "augmentation)", "", pooling.table(pool)]
    if result.get("targets"):
        out += ["", "Targets:", ""]
        out += [f"- {Target.from_dict(t).line()}" for t in result["targets"]]
    return "\n".join(out) + "\n"
