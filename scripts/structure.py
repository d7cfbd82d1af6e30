"""The package's shape in numbers, for a before/after of a restructure (a developer's tool).

    python scripts/structure.py [--src src/bnrepro] [--walk]

- rooms: the modules of the package; folders: its subpackages; flat: modules at its top.
- floors: each module's floor is 0 if it imports no other module of the package, else one
  above the highest floor it imports (module-level imports, TYPE_CHECKING ones included).
- module cycles: modules that import each other (directly or through others).
- arrows back up: imports between two rooms (a top-level module or a subpackage) that lie on
  a cycle of the room graph: room A imports room B and B, through any path, imports A.
- the walk of `cfgs` (--walk): a smoke training of `train_population`, traced; every call
  whose arguments hold one of its configs (or a node of one) is a visit to that function's
  module; the walk is the sequence of visits with repeats collapsed; a climb is a step of the
  walk to a module on a higher floor than the one before it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package: str, known: set[str]) -> set[str]:
    """The package's modules this file imports (`from a.b import c` counts a.b.c if it is a
    module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            if name.split(".")[0] == package:
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in known:
                    found.add(name)
    return found


def graph(src: Path) -> dict[str, set[str]]:
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    edges = {m: imports(p, src.name, set(files)) - {m} for m, p in files.items()}
    # a package's __init__ is imported by everything below it: not an arrow of its own
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}


def floors(edges: dict[str, set[str]]) -> dict[str, int]:
    floor: dict[str, int] = {}

    def of(m: str, seen: tuple[str, ...] = ()) -> int:
        if m in floor:
            return floor[m]
        if m in seen:  # a cycle: count it once
            return 0
        floor[m] = 1 + max((of(t, (*seen, m)) for t in edges[m]), default=-1)
        return floor[m]

    for m in edges:
        of(m)
    return floor


def room(module: str, package: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else package


def arrows_back_up(edges: dict[str, set[str]], package: str) -> list[tuple[str, str]]:
    rooms: dict[str, set[str]] = defaultdict(set)
    for m, ts in edges.items():
        for t in ts:
            if room(m, package) != room(t, package):
                rooms[room(m, package)].add(room(t, package))

    def reaches(a: str, b: str) -> bool:
        stack, seen = [a], set()
        while stack:
            x = stack.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                stack += rooms.get(x, ())
        return False

    return sorted((a, b) for a, ts in rooms.items() for b in ts if reaches(b, a))


def module_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in edges[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            group = []
            while (t := stack.pop()) != m:
                group.append(t)
            if group:
                cycles.append(sorted([m, *group]))

    for m in edges:
        if m not in index:
            visit(m)
    return cycles


def walk_of_cfgs(floor: dict[str, int]) -> list[str]:
    """Train a smoke population and trace where its configs go (module docstring)."""
    import tempfile

    from omegaconf import DictConfig

    from bnrepro.config import compose_config
    from bnrepro.train import train_population

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [compose_config(["experiment=fig1_mnist", "debug=smoke", f"seed={s}"])
                for s in (0, 1)]
        ids = {id(c) for c in cfgs}
        visits: list[str] = []

        def holds_cfg(value) -> bool:
            if isinstance(value, DictConfig):
                return id(value) in ids or id(value._get_root()) in ids
            if isinstance(value, list | tuple):
                return any(holds_cfg(v) for v in value[:4])
            return False

        def profile(frame, event, arg):
            if event != "call":
                return
            module = frame.f_globals.get("__name__", "")
            arguments = frame.f_code.co_varnames[:frame.f_code.co_argcount]
            if (module.startswith("bnrepro") and (not visits or visits[-1] != module)
                    and any(holds_cfg(frame.f_locals.get(n)) for n in arguments)):
                visits.append(module)

        sys.setprofile(profile)
        try:
            train_population(cfgs, [Path(tmp) / "a", Path(tmp) / "b"])
        finally:
            sys.setprofile(None)
    return visits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=Path("src/bnrepro"))
    parser.add_argument("--walk", action="store_true", help="also trace the walk of cfgs")
    args = parser.parse_args(argv)
    edges = graph(args.src)
    floor = floors(edges)
    package = args.src.name
    tops = {m.split(".")[1] for m in edges if "." in m}
    folders = sorted(t for t in tops if (args.src / t).is_dir())
    flat = sorted(tops - set(folders))
    print(f"rooms (modules): {len(edges)}; folders: {len(folders)} ({', '.join(folders)}); "
          f"flat modules: {len(flat)}; floors: {max(floor.values()) + 1}")
    back = arrows_back_up(edges, package)
    print(f"arrows back up (room imports on a cycle): {len(back)}"
          + "".join(f"\n  {a} -> {b}" for a, b in back))
    cycles = module_cycles(edges)
    print(f"module cycles: {len(cycles)}" + "".join(f"\n  {' <-> '.join(c)}" for c in cycles))
    if args.walk:
        visits = walk_of_cfgs(floor)
        steps = zip(visits, visits[1:], strict=False)
        climbs = sum(floor.get(b, 0) > floor.get(a, 0) for a, b in steps)
        print(f"walk of cfgs: {len(visits)} visits to {len(set(visits))} rooms, {climbs} climbs: "
              + " -> ".join(m.removeprefix(package + ".") for m in visits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
