"""`make gpu-check`: what a session with a GPU runs as is, in under 10 minutes on one GPU,
writing one report (results/gpu_check.md):

    python -m bnrepro.gpu_check                    # on CUDA; results/gpu_check.md
    python -m bnrepro.gpu_check --device cpu       # every section, tiny, on the CPU (a test)

Sections (SECTIONS, in order): the versions and precision flags; the tests marked `gpu`; a
short run of every experiment's smoke profile (conf/experiment/*.yaml with debug=smoke, and
the deep linear net), each summary completed with the GPU recorded; a run killed and resumed;
a mixed-dropout population killed and resumed regrouped (trainer.members_at_once); the same
CNN run twice, bytes compared, deterministic on and off; population vs solo runs, convs
grouped vs per member, TF32 on and off; host synchronisations per training step
(torch.cuda.set_sync_debug_mode); the bench's rows on the device.

Each section runs in a subprocess of its own under its own time budget (BUDGETS_S), so a
section that fails, hangs or crashes the CUDA context is recorded as such and the others
still run. A section writes its lines as it goes: one cut off by its budget still reports
what it got to. `--device cpu` runs the same code, tiny, on the CPU: the report's plumbing
(tests/test_gpu_check.py); sections that need CUDA say they were skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Shares of the whole check's time (--budget, default TOTAL_BUDGET_S: 10 minutes less the
# start of the process and the report), in seconds at the default; the CPU's tiny sections get
# CPU_BUDGET_S each.
BUDGETS_S = {"versions": 30, "gpu_tests": 90, "smoke": 150, "resume": 45, "regrouped": 45,
             "twice": 50, "population_solo": 55, "syncs": 30, "bench": 50}
TOTAL_BUDGET_S = 545
CPU_BUDGET_S = 240
SMOKE_AT_ONCE = 4  # smoke experiments trained side by side on the GPU (16 CPU cores there)
# Metrics may differ this much between a population and its solo runs, or a regrouped and an
# uninterrupted population, before the check fails (tests/test_population.py's reasoning:
# float32 kernels that batch differently; a mix-up moves them by 1e-2 or more).
SAME_RUN_ATOL = 1e-3
SYNC_WARNING = "synchroniz"  # torch's sync debug warning: "called a synchronizing CUDA operation"


@dataclass
class Context:
    """What a section gets: the device, where to write, and whether to be tiny (the CPU)."""

    device: str
    work: Path
    result: Path | None = None
    budget_s: float = CPU_BUDGET_S  # this section's time, all its subprocesses included
    lines: list[str] = field(default_factory=list)
    status: str = "ok"

    @property
    def tiny(self) -> bool:
        return self.device == "cpu"

    def say(self, line: str) -> None:
        """Add a line to the report, at once (a section cut off keeps what it said)."""
        self.lines.append(line)
        self.save()

    def save(self) -> None:
        if self.result is not None:
            tmp = self.result.with_suffix(".tmp")
            tmp.write_text(json.dumps({"status": self.status, "lines": self.lines}))
            tmp.replace(self.result)


class CheckFailed(AssertionError):
    """A section found what it checks for to be wrong (the message says what)."""


def require(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


# ---- small shared steps ------------------------------------------------------------------

def mnist_overrides(ctx: Context, *extra: str) -> list[str]:
    """fig1's MLP on MNIST, smoke-sized (tiny on the CPU), on the checked device."""
    tiny = ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=2",
            "probe.num_examples=20", "dataset.val_size=200", "trainer.test_examples=200",
            "trainer.population_batches=2"] if ctx.tiny else \
        ["trainer.max_steps=60", "trainer.eval_every=20", "trainer.checkpoint_every=20"]
    return ["experiment=fig1_mnist", "debug=smoke", f"trainer.device={ctx.device}",
            "trainer.progress=false", *tiny, *extra]


def cnn_overrides(ctx: Context, *extra: str) -> list[str]:
    """A small CNN (fig2's BN-x5 on CIFAR on a GPU; on MNIST, a quarter wide, on the CPU)."""
    if ctx.tiny:
        return mnist_overrides(ctx, "model=cnn", "model.width_multiplier=0.25", *extra)
    from bnrepro.data.datasets import first_available

    return ["experiment=fig2_cifar", f"dataset={first_available(['cifar10', 'cifar10-jpeg'])}",
            "fig2_variant=bn_x5", "debug=smoke", f"trainer.device={ctx.device}",
            "trainer.progress=false", "trainer.max_steps=40", "trainer.eval_every=20", *extra]


def train(overrides: Sequence[str], run_dirs: Sequence[Path],
          members: Sequence[Sequence[str]] = ((),), on_step: Callable[[int], None] | None = None
          ) -> list[dict]:
    """Train one population in this process: a member per entry of `members` (its own
    overrides on top of `overrides`), into `run_dirs`; returns the summaries."""
    from bnrepro.config import compose_config
    from bnrepro.train import train_population

    cfgs = [compose_config([*overrides, *own]) for own in members]
    return train_population(cfgs, list(run_dirs), on_step)


class Stop(Exception):
    """Raised from on_step: a kill at a known step, after a checkpoint."""


def train_until(step: int, overrides: Sequence[str], run_dirs: Sequence[Path],
                members: Sequence[Sequence[str]] = ((),)) -> None:
    """`train`, killed right after the update of `step` (before its evaluation)."""
    def on_step(s: int) -> None:
        if s == step:
            raise Stop(f"stopped at step {step}")

    with contextlib.suppress(Stop):
        train(overrides, run_dirs, members, on_step)


def largest_difference(a: list[dict], b: list[dict]) -> tuple[float, str]:
    """The largest |difference| between two runs' metric rows, and its key (inf when the rows
    do not line up)."""
    if [r["step"] for r in a] != [r["step"] for r in b]:
        return math.inf, "steps"
    worst, where = 0.0, "-"
    for row_a, row_b in zip(a, b, strict=True):
        for key in row_a.keys() & row_b.keys():
            x, y = row_a[key], row_b[key]
            if isinstance(x, int | float) and isinstance(y, int | float):
                d = abs(x - y) if math.isfinite(x) and math.isfinite(y) else \
                    (0.0 if x == y or (x != x and y != y) else math.inf)
                if d > worst:
                    worst, where = d, key
            elif x != y:
                return math.inf, key
    return worst, where


def metrics(run_dir: Path) -> list[dict]:
    from bnrepro.run.store import read_metrics

    return read_metrics(run_dir)


def weights(run_dir: Path) -> dict:
    """The final checkpoint's weights of a run."""
    import torch

    from bnrepro.run import checkpoint

    return torch.load(checkpoint.path(run_dir, checkpoint.steps(run_dir)[0]),
                      map_location="cpu", weights_only=True)["state"]["model"]


def same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def on_the_device(ctx: Context, summary: dict, ends: tuple[str, ...] = ("completed",)) -> None:
    """Fail unless the summary says its run ended as one of `ends`, with the device and
    numerics recorded."""
    machine = summary.get("machine") or {}
    require(summary["status"] in ends, f"status {summary['status']}: {summary['reason']}")
    require("precision" in machine, "summary's machine has no precision recorded")
    if not ctx.tiny:
        require(machine.get("gpu", "none") != "none", "summary records no GPU")


def python(*args: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python <args>` from the repo root, output captured."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=max(timeout, 1), env={**os.environ, **(env or {})})


def tail(text: str, lines: int = 5) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


# ---- the sections -------------------------------------------------------------------------

def versions(ctx: Context) -> None:
    import torch

    from bnrepro.device import PRECISIONS, configure, resolve_device
    from bnrepro.run import machine

    ctx.say(f"- torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}"
            f"; CUDA usable: {torch.cuda.is_available()}")
    device = resolve_device("auto")
    ctx.say(f"- trainer.device=auto resolves to {device}")
    if not ctx.tiny:
        device = resolve_device(ctx.device)  # DeviceError (why) when CUDA is unusable
        p = torch.cuda.get_device_properties(device)
        ctx.say(f"- {p.name}, compute capability {p.major}.{p.minor}, "
                f"{p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible")
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False) \
            if _on_path("nvidia-smi") else None
        ctx.say(f"- driver: {smi.stdout.strip() if smi and smi.returncode == 0 else 'unknown'}")
    ctx.say(f"- machine: {machine.one_line(machine.describe(device))}")
    ctx.say(f"- torch's flags before any run: matmul fp32 "
            f"{torch.backends.cuda.matmul.fp32_precision}, cuDNN conv fp32 "
            f"{torch.backends.cudnn.conv.fp32_precision}, cudnn.deterministic "
            f"{torch.backends.cudnn.deterministic}, benchmark {torch.backends.cudnn.benchmark}")
    for precision in PRECISIONS:
        for deterministic in (True, False):
            recorded = configure(device, precision, deterministic)
            ctx.say(f"- precision={precision} deterministic={deterministic}: "
                    + ", ".join(f"{k} {v}" for k, v in recorded.items()
                                if k not in ("precision", "deterministic")))
    configure(device)


def _on_path(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def gpu_tests(ctx: Context) -> None:
    """`pytest -m gpu` with the GPUs shown (tests/conftest.py hides them otherwise). On the
    CPU only test_device.py's, which skip: the plumbing."""
    where = ["tests/test_device.py"] if ctx.tiny else ["tests"]
    env = {} if ctx.tiny else {"BNREPRO_TEST_GPU": "1"}
    result = python("-m", "pytest", "-m", "gpu", "-q", "-n", "0", "-p", "no:cacheprovider",
                    *where, timeout=ctx.budget_s - 5, env=env)
    ctx.say(f"- `pytest -m gpu {' '.join(where)}`: {tail(result.stdout, 1)}")
    require(result.returncode in (0, 5), f"pytest exit {result.returncode}: "
                                         f"{tail(result.stdout, 15)}")
    if not ctx.tiny:
        require(" passed" in result.stdout and " skipped" not in result.stdout.splitlines()[-1],
                "a GPU test did not run (skipped) on the GPU")


def smoke_commands(ctx: Context) -> dict[str, list[str]]:
    """Every experiment's smoke profile (one seed), and the deep linear net, on the device."""
    out = ctx.work / "smoke"
    if ctx.tiny:
        return {"fig1_mnist": ["-m", "bnrepro.train", "-m", *mnist_overrides(ctx), "seed=0",
                               f"hydra.sweep.dir={out / 'fig1_mnist'}"],
                "dln": ["-m", "bnrepro.train_dln", "steps=4", "log_every=2", "seeds=[0]",
                        "measures.ics.every=2", "measures.landscape.every=2", "progress=false",
                        f"device={ctx.device}", f"out_dir={out / 'dln'}"]}
    from bnrepro.data.datasets import first_available

    cifar = first_available(["cifar10", "cifar10-jpeg"])
    commands = {}
    for config in sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")):
        dataset = [f"dataset={cifar}"] if "cifar" in config else []
        commands[config] = ["-m", "bnrepro.train", "-m", f"experiment={config}", *dataset,
                            "debug=smoke", "seed=0", f"trainer.device={ctx.device}",
                            "trainer.progress=false", f"hydra.sweep.dir={out / config}"]
    commands["dln"] = ["-m", "bnrepro.train_dln", "steps=200", "seeds=[0]", "progress=false",
                       "measures.ics.every=100", "measures.landscape.every=100",
                       f"device={ctx.device}", f"out_dir={out / 'dln'}"]
    return commands


def smoke(ctx: Context) -> None:
    from bnrepro.run.store import read_summary

    commands = smoke_commands(ctx)
    deadline = time.monotonic() + ctx.budget_s - 10

    def run(name: str) -> tuple[str, str | None]:
        left = deadline - time.monotonic()
        if left < 5:
            return name, "not run: the section's budget was spent"
        started = time.monotonic()
        try:
            result = python(*commands[name], timeout=left)
        except subprocess.TimeoutExpired:
            return name, f"timed out after {left:.0f} s"
        seconds = time.monotonic() - started
        summaries = [read_summary(p.parent) for p in
                     (ctx.work / "smoke" / name).rglob("summary.json")]
        problems = [] if result.returncode == 0 else [f"exit {result.returncode}: "
                                                      f"{tail(result.stderr)}"]
        for s in summaries:
            try:
                on_the_device(ctx, s, ("completed", "diverged"))  # a smoke rate may diverge
            except CheckFailed as err:
                problems.append(str(err))
        gpus = sorted({(s.get("machine") or {}).get("gpu", "?") for s in summaries})
        ctx.say(f"- {name}: {len(summaries)} runs in {seconds:.0f} s on {', '.join(gpus)}"
                + (f"; {len(problems)} problems: {problems[0]}" if problems else ", all completed"))
        return name, "; ".join(problems) or (None if summaries else "no summary written")

    with ThreadPoolExecutor(1 if ctx.tiny else SMOKE_AT_ONCE) as pool:
        failed = [f"{name}: {why}" for name, why in pool.map(run, commands) if why]
    require(not failed, "; ".join(failed))


def resume(ctx: Context) -> None:
    """Killed after a checkpoint (dropout on: its stream is the device's), resumed, compared
    with an uninterrupted run."""
    overrides = mnist_overrides(ctx, "model.dropout=0.2")
    stop = 3 if ctx.tiny else 30
    killed, clean = ctx.work / "resume" / "killed", ctx.work / "resume" / "clean"
    train_until(stop, overrides, [killed])
    summary = train(overrides, [killed])[0]
    train(overrides, [clean])
    on_the_device(ctx, summary)
    diff, key = largest_difference(metrics(killed), metrics(clean))
    ctx.say(f"- killed before step {stop}'s evaluation, resumed from step "
            f"{summary['resumed_from_step']}: metrics {'identical' if diff == 0 else 'differ'} "
            f"(largest |difference| {diff:.3g}, {key}); final weights "
            f"{'identical' if same_weights(killed, clean) else 'differ'}")
    require(summary["resumed_from_step"] is not None, "the rerun did not resume")
    require(diff == 0, f"the resumed run differs from the uninterrupted one ({key}: {diff:.3g})")


def regrouped(ctx: Context) -> None:
    """Four members, dropout 0 to 0.5, killed, resumed two at a time (members_at_once=2),
    compared with the population trained uninterrupted, all at once."""
    members = [(f"seed={k}", f"model.dropout={p}") for k, p in enumerate((0.0, 0.2, 0.5, 0.3))]
    overrides = mnist_overrides(ctx)
    stop = 3 if ctx.tiny else 30
    killed = [ctx.work / "regrouped" / f"killed{k}" for k in range(len(members))]
    clean = [ctx.work / "regrouped" / f"clean{k}" for k in range(len(members))]
    train_until(stop, overrides, killed, members)
    resumed = train([*overrides, "trainer.members_at_once=2"], killed, members)
    train(overrides, clean, members)
    worst = max((largest_difference(metrics(a), metrics(b)) + (k,)
                 for k, (a, b) in enumerate(zip(killed, clean, strict=True))),
                key=lambda t: t[0])
    ctx.say(f"- resumed from step {resumed[0]['resumed_from_step']} as 2 + 2 members: largest "
            f"|difference| from the uninterrupted population {worst[0]:.3g} ({worst[1]}, member "
            f"{worst[2]})")
    for s in resumed:
        on_the_device(ctx, s)
    require(worst[0] <= SAME_RUN_ATOL, f"regrouped members differ by {worst[0]:.3g} ({worst[1]})")


def twice(ctx: Context) -> None:
    """The same CNN run twice, deterministic on and off: metrics and weights compared."""
    for deterministic in (True, False):
        dirs = [ctx.work / "twice" / f"det_{deterministic}_{k}" for k in range(2)]
        for d in dirs:
            on_the_device(ctx, train(cnn_overrides(
                ctx, f"trainer.deterministic={str(deterministic).lower()}"), [d])[0])
        same_metrics = (dirs[0] / "metrics.jsonl").read_bytes() == \
            (dirs[1] / "metrics.jsonl").read_bytes()
        same = same_metrics and same_weights(*dirs)
        diff, key = largest_difference(*(metrics(d) for d in dirs))
        ctx.say(f"- deterministic={deterministic}: metrics.jsonl bytes "
                f"{'identical' if same_metrics else 'differ'}, final weights "
                f"{'identical' if same_weights(*dirs) else 'differ'} (largest |difference| "
                f"{diff:.3g}, {key})")
        if deterministic:
            require(same, "two deterministic runs of one config differ")


def population_solo(ctx: Context) -> None:
    """A CNN population of two against each member alone, convs grouped and per member,
    TF32 off and on: the largest |difference| of their metrics."""
    members = [("seed=0", "optim.lr=0.05"), ("seed=1", "optim.lr=0.1")]
    precisions = ("ieee",) if ctx.tiny else ("ieee", "tf32")
    ctx.say("| convs | precision | largest abs. difference, population vs solo |")
    ctx.say("|---|---|---|")
    problems = []
    for execution in ("grouped", "per_member"):
        for precision in precisions:
            base = cnn_overrides(ctx, f"model.conv_execution={execution}",
                                 f"trainer.precision={precision}")
            where = ctx.work / "population_solo" / f"{execution}_{precision}"
            together = [where / f"pop{k}" for k in range(len(members))]
            train(base, together, members)
            diffs = []
            for k, own in enumerate(members):
                train(base, [where / f"solo{k}"], [own])
                diffs.append(largest_difference(metrics(together[k]), metrics(where / f"solo{k}")))
            worst = max(diffs, key=lambda d: d[0])
            ctx.say(f"| {execution} | {precision} | {worst[0]:.3g} ({worst[1]}) |")
            if not math.isfinite(worst[0]):
                problems.append(f"{execution}/{precision}: rows differ in {worst[1]}")
    # Numbers to read, not to judge: grouped convs sum in another order than a member's own
    # (a probe quantile of a few steps moves by 1e-3 on the CPU); rows that do not line up
    # are a bug.
    require(not problems, "population and solo runs differ in shape: " + "; ".join(problems))


def syncs(ctx: Context) -> None:
    """Host synchronisations per training step (torch.cuda.set_sync_debug_mode("warn")),
    counted between two steps that have no evaluation between them."""
    if ctx.tiny:
        ctx.status = "skipped"
        ctx.say("- skipped: CUDA only (the CPU has no host-device synchronisation)")
        return
    import torch

    for name, overrides in (("MLP", mnist_overrides(ctx, "model.dropout=0.2")),
                            ("CNN", cnn_overrides(ctx))):
        seen: list[int] = []
        sites: Counter[str] = Counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(overrides, [ctx.work / "syncs" / name],
                      on_step=lambda _, seen=seen, caught=caught: seen.append(len(caught)))
            finally:
                torch.cuda.set_sync_debug_mode(0)
        is_sync = [SYNC_WARNING in str(w.message) for w in caught]
        sites.update(f"{Path(w.filename).name}:{w.lineno}"
                     for w, sync in zip(caught, is_sync, strict=True) if sync)
        from bnrepro.config import compose_config

        every = compose_config(overrides).trainer.eval_every
        per_step = [sum(is_sync[a:b])
                    for s, (a, b) in enumerate(zip(seen, seen[1:], strict=False), start=2)
                    if (s - 1) % every]  # step s-1 had no evaluation after it
        ctx.say(f"- {name}: syncs per training step median "
                f"{statistics.median(per_step) if per_step else '?'}, max "
                f"{max(per_step) if per_step else '?'} over {len(per_step)} steps; most "
                f"frequent sites (whole run): "
                + ", ".join(f"{site} x{n}" for site, n in sites.most_common(4)))


def bench(ctx: Context) -> None:
    """The bench's MLP and CNN rows on the device (few steps: rows, not a measurement)."""
    out = ctx.work / "bench"
    sizes = ["--quick", "--only", "mlp"] if ctx.tiny else \
        ["--repeats", "1", "--warmup", "5", "--steps-mlp", "50", "--steps-cnn", "20",
         "--no-compile", "--only", "mlp", "cnn"]
    result = python("-m", "bnrepro.bench", "--device", ctx.device, *sizes,
                    "--out", str(out / "bench.json"), "--markdown", str(out / "bench.md"),
                    timeout=ctx.budget_s - 5)
    require(result.returncode == 0, f"bench exit {result.returncode}: {tail(result.stderr)}")
    ctx.say(f"- {tail(result.stdout, 1)}")
    table = [line for line in (out / "bench.md").read_text().splitlines()
             if line.startswith("|")]
    for line in table:
        ctx.say(line)
    require(bool(table), "the bench wrote no rows")


@dataclass(frozen=True)
class Section:
    title: str
    run: Callable[[Context], None]


SECTIONS: dict[str, Section] = {
    "versions": Section("Versions and precision flags", versions),
    "gpu_tests": Section("Tests marked gpu", gpu_tests),
    "smoke": Section("Every experiment's smoke profile on the device", smoke),
    "resume": Section("Kill and resume on the device", resume),
    "regrouped": Section("A mixed-dropout population resumed regrouped", regrouped),
    "twice": Section("The same CNN run twice (deterministic on / off)", twice),
    "population_solo": Section("Population vs solo (convs grouped / per member, TF32 off / on)",
                               population_solo),
    "syncs": Section("Host synchronisations per training step", syncs),
    "bench": Section("The bench's rows on the device", bench),
}


# ---- running the sections and writing the report -------------------------------------------

@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | skipped | timed out | not run
    seconds: float
    lines: list[str]


def run_section(name: str, command: Sequence[str], budget_s: float, result: Path) -> Outcome:
    """Run one section's `command` (a process that writes `result`: {"status", "lines"} as it
    goes) under `budget_s`; whatever happens, an Outcome that says what it got to."""
    started = time.monotonic()
    saved = {"status": "failed", "lines": []}
    # A session of its own: a section cut off is ended with every process it started
    # (training subprocesses too), so none of them goes on using the GPU.
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=budget_s)
        problem = None if proc.returncode == 0 else f"exit {proc.returncode}: {tail(stderr, 8)}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        problem = f"timed out after its {budget_s:.0f} s budget"
    if result.is_file():
        saved = json.loads(result.read_text())
    status, lines = saved["status"], list(saved["lines"])
    if problem and status != "failed":  # cut off or crashed before it said why
        status = "timed out" if problem.startswith("timed out") else "failed"
        lines.append(f"- **{problem}**")
    return Outcome(name, status, time.monotonic() - started, lines)


def section_main(name: str, ctx: Context) -> int:
    """One section in this process (the child side of run_section)."""
    ctx.save()
    try:
        SECTIONS[name].run(ctx)
    except Exception as err:
        ctx.status = "failed"
        where = traceback.extract_tb(err.__traceback__)[-1]
        ctx.say(f"- **failed: {type(err).__name__}: {str(err)[:800]}** "
                f"({Path(where.filename).name}:{where.lineno})")
        return 1
    ctx.save()
    return 0


def report(outcomes: Sequence[Outcome], device: str, seconds: float) -> str:
    from bnrepro.run import machine

    lines = [f"# GPU check ({device})", "",
             f"`python -m bnrepro.gpu_check --device {device}`, {seconds:.0f} s on "
             f"{machine.one_line(machine.describe())}.", "",
             "| section | status | seconds |", "|---|---|---|"]
    lines += [f"| {SECTIONS[o.name].title} | {o.status} | {o.seconds:.0f} |" for o in outcomes]
    for o in outcomes:
        lines += ["", f"## {SECTIONS[o.name].title}: {o.status}", "", *o.lines]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda: the check; cpu: every section tiny (the plumbing)")
    parser.add_argument("--out", default="results/gpu_check.md", help="the report")
    parser.add_argument("--work", default=None, help="runs go here (default: a temporary "
                                                     "folder, removed afterwards)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S,
                        help="seconds for the whole check, shared out as BUDGETS_S says (a "
                             "section's own, in a section's process)")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    if "BNREPRO_DATA_MIRROR" not in os.environ and (REPO / "shared" / "datasets").is_dir():
        os.environ["BNREPRO_DATA_MIRROR"] = str(REPO / "shared" / "datasets")
    if args.section:  # a child: one section
        return section_main(args.section, Context(args.device, Path(args.work),
                                                  Path(args.result), args.budget))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(args.work or tmp).resolve()
        outcomes = []
        for name in args.only:
            # The CPU's tiny sections have no total to keep to (a test's, not a GPU's time)
            left = math.inf if args.device == "cpu" else \
                args.budget - (time.monotonic() - started)
            share = CPU_BUDGET_S if args.device == "cpu" else \
                BUDGETS_S[name] * args.budget / sum(BUDGETS_S.values())
            budget = min(share, left)
            if budget < 10:
                outcomes.append(Outcome(name, "not run", 0, [f"- the check's {args.budget:.0f} s "
                                                             f"were spent"]))
                continue
            (work / name).mkdir(parents=True, exist_ok=True)
            result = work / name / "result.json"
            command = [sys.executable, "-m", "bnrepro.gpu_check", "--section", name,
                       "--device", args.device, "--work", str(work), "--result", str(result),
                       "--budget", str(budget)]
            outcome = run_section(name, command, budget, result)
            print(f"gpu-check: {name}: {outcome.status} in {outcome.seconds:.0f} s", flush=True)
            outcomes.append(outcome)
        text = report(outcomes, args.device, time.monotonic() - started)
    from bnrepro.atomic import atomic_write_text

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    print(f"gpu-check: wrote {out}")
    return 0 if all(o.status in ("ok", "skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
