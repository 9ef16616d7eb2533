#!/usr/bin/env python3
"""The import graph between loopline's packages, checked against its layers.

Every module under ``loopline/`` is parsed with :mod:`ast` (nothing is imported or run) and
every import of another loopline module is collected: at module level, inside functions (a
lazy import still runs, only later), under ``if TYPE_CHECKING:``, and module paths named in
string tables (``"loopline.daemon.serve_command"``, ``"loopline.engines.onnx_engine:OnnxEngine"``)
that ``importlib`` imports by name. Relative imports are resolved. The imports are then
aggregated to the graph between loopline's sub-packages and top-level modules
(``loopline.io``, ``loopline.daemon``, ``loopline.cli``, ...).

``LAYERS`` below lists those packages in data-flow order, lowest first. An import may go down
the table or stay within a layer; one that goes *up* (a lower layer importing a higher one)
is a violation, and so is every cycle between packages (a strongly connected component of
more than one package, whether within one layer or across layers).

Prints the layers, every edge (imports, how many lazy / by name / typing-only, one
``file:line``), then the upward imports and the cycles, each import with its ``file:line``.
Exit status 1 if there is any upward import, cycle or package missing from ``LAYERS``; 0
otherwise. ``--dot`` prints the same graph as Graphviz (upward edges red, cycles orange).

Usage: scripts/import_graph.py [--root PACKAGE_DIR] [--dot]
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "loopline"

#: loopline's packages by layer, lowest first (names relative to ``loopline``; ``__init__`` is
#: ``loopline/__init__.py`` itself). The live data flow is ingest → batch → engine → measure →
#: track → publish/record; below it the utilities everything shares, above it the tools that
#: consume the whole product.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # No loopline imports at all: the version, the exception types, switching the ML
    # libraries' network fetches off, "is this pid still the writer?", a line mask's skeleton
    # and centre line (geometry).
    ("base", ("_version", "errors", "_offline", "_procs", "geometry", "cli_args")),
    # Shared by every stage: reading frames and the run folder's tables (io), pixel size and
    # frame times (calibration), the shipped models and their operating points (models).
    # calibration imports io (within the layer, one way).
    ("shared", ("io", "calibration", "models")),
    # datasets: the dataset layout, the label geometry rules and the real-label importers;
    # synth: the frame generator, which writes that layout. Both are sources of frames and
    # labelled datasets, i.e. the ingest end of the flow, and they sit here because of who
    # imports them: engines (INT8 calibration frames are rendered by synth), analysis (a
    # dataset's labels as a stand-in engine), daemon (demo scene, simulator), and
    # evaluation, training, viewers (reading and writing the dataset layout). They need only
    # io, geometry and errors (synth imports datasets, one way), so nothing forces them
    # higher; the lowest of their importers (below engines) is the only place where none of
    # those imports runs up.
    ("ingest", ("datasets", "synth")),
    # One interface, one file per runtime: frames in, Detections out.
    ("engine", ("engines",)),
    # Detections → lines, loops, pile-ups (measure) → OnlineTracker (track) → series rows.
    ("measure+track", ("analysis",)),
    # The live daemon: sources (ingest), batcher, engine and measure workers, publisher and
    # recorder (publish/record), supervisor. At package granularity it drives everything
    # below, so it sits on top of the flow it orchestrates.
    ("live", ("daemon",)),
    # Tools that consume the whole product: they may import anything below.
    ("consumers", ("evaluation", "training", "reports", "viewers")),
    # The front doors: the Python API (api: analyse, open a run, engines, the live stream;
    # export: napari layer data and HyperSpy files of a run, built on api's Run), the package
    # itself (loopline/__init__.py re-exports the API, imported on first use) and the command
    # line, which looks every subcommand up by name.
    ("entry", ("api", "export", "__init__", "cli", "__main__")),
)

# A string constant naming a module (optionally ``:attribute``): imported by ``importlib``.
_MODULE_STRING = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")


@dataclass(frozen=True)
class Import:
    """One import of a package module by another module of the same package."""

    file: str  # relative to the package's parent folder, e.g. ``loopline/datasets/importers.py``
    line: int
    importer: str  # dotted module name of the importing module
    target: str  # dotted module name imported
    names: tuple[str, ...]  # the names taken from it (``from target import a, b``), or ()
    kind: str  # "top" (module level), "lazy" (inside a function), "typing", "by name"

    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def what(self) -> str:
        imported = f"{', '.join(self.names)} from {self.target}" if self.names else self.target
        return imported if self.kind == "top" else f"{imported} ({self.kind})"


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _walk(node: ast.AST, kind: str = "top") -> Iterator[tuple[ast.AST, str]]:
    """Every node under ``node`` with when an import there runs: "top", "lazy" or "typing"."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and kind == "top":
        kind = "lazy"
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        yield node, kind
        for child in node.body:
            yield from _walk(child, "typing")
        for child in node.orelse:
            yield from _walk(child, kind)
        return
    yield node, kind
    for child in ast.iter_child_nodes(node):
        yield from _walk(child, kind)


def scan(root: Path = ROOT) -> list[Import]:
    """Every import of a module of the package at ``root`` by another of its modules."""
    root = Path(root)
    files = sorted(root.rglob("*.py"))
    modules = {_module_name(f, root)[0] for f in files}
    top = root.name
    found: list[Import] = []
    for f in files:
        importer, is_package = _module_name(f, root)
        package = importer if is_package else importer.rpartition(".")[0]
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        docstrings = _docstrings(tree)
        rel = f.relative_to(root.parent).as_posix()

        def add(line: int, target: str, names: tuple[str, ...], kind: str, _f: str = rel,
                _importer: str = importer) -> None:  # fmt: skip
            found.append(Import(_f, line, _importer, target, names, kind))

        for node, kind in _walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == top:
                        add(node.lineno, alias.name, (), kind)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if target.split(".")[0] != top:
                    continue
                # ``from pkg import sub`` imports the module pkg.sub where there is one.
                plain = []
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        add(node.lineno, f"{target}.{alias.name}", (), kind)
                    else:
                        plain.append(alias.name)
                if plain:
                    add(node.lineno, target, tuple(plain), kind)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and _MODULE_STRING.fullmatch(node.value)
            ):
                target, _, attr = node.value.partition(":")
                if target in modules:  # not a logger's name such as "loopline.demo"
                    add(node.lineno, target, (attr,) if attr else (), "by name")
    return found


def node_of(module: str) -> str:
    """The graph node of a dotted module name: the package's direct child (or the package)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def edges_of(imports: Iterable[Import]) -> dict[tuple[str, str], list[Import]]:
    """The imports between different nodes, grouped by (importer node, imported node)."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        a, b = node_of(imp.importer), node_of(imp.target)
        if a != b:
            edges[a, b].append(imp)
    return dict(sorted(edges.items()))


def cycles(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(nodes) | set(succ)):
        if v not in index:
            strong(v)
    return sorted(out)


@dataclass
class Report:
    """The graph of a package and what in it breaks the layers."""

    package: str
    layers: dict[str, tuple[int, str]]  # node -> (layer index, layer name)
    nodes: list[str]
    edges: dict[tuple[str, str], list[Import]]
    upward: list[tuple[str, str]]
    cycles: list[list[str]]
    unlayered: list[str]

    @property
    def ok(self) -> bool:
        return not (self.upward or self.cycles or self.unlayered)


def check(root: Path = ROOT, layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> Report:
    """Scan the package at ``root`` and check its graph against ``layers`` (lowest first)."""
    root = Path(root)
    top = root.name
    imports = scan(root)
    edges = edges_of(imports)
    where: dict[str, tuple[int, str]] = {}
    for i, (name, members) in enumerate(layers):
        for m in members:
            where[top if m == "__init__" else f"{top}.{m}"] = (i, name)
    nodes = sorted({node_of(_module_name(f, root)[0]) for f in root.rglob("*.py")})
    unlayered = [n for n in nodes if n not in where]
    upward = [(a, b) for a, b in edges if a in where and b in where and where[a][0] < where[b][0]]
    return Report(top, where, nodes, edges, upward, cycles(nodes, edges), unlayered)


def _label(report: Report, node: str) -> str:
    i, name = report.layers.get(node, (-1, "?"))
    return f"{node} [{i} {name}]"


def print_text(report: Report, out=sys.stdout) -> None:
    p = report.package
    n_imports = sum(len(v) for v in report.edges.values())
    print(f"{p}: {len(report.nodes)} packages, {len(report.edges)} edges, "
          f"{n_imports} imports between packages", file=out)  # fmt: skip
    print("\nlayers, lowest first (an import may go down or stay within a layer):", file=out)
    by_layer: dict[tuple[int, str], list[str]] = defaultdict(list)
    for node, key in report.layers.items():
        by_layer[key].append(node)
    for (i, name), members in sorted(by_layer.items()):
        print(f"  {i} {name:<14} {', '.join(members)}", file=out)
    print("\nedges (imports; of them lazy/by name/typing-only; one example; UP: runs up):",
          file=out)  # fmt: skip
    width = max((len(a) + len(b) for a, b in report.edges), default=0) + 4
    for (a, b), imps in report.edges.items():
        kinds = "/".join(str(sum(i.kind == k for i in imps)) for k in ("lazy", "by name", "typing"))
        mark = "  UP" if (a, b) in report.upward else ""
        print(f"  {f'{a} -> {b}':<{width}} {len(imps):>3}  {kinds:<8} {imps[0].where()}{mark}",
              file=out)  # fmt: skip
    print(f"\nupward imports: {len(report.upward)} edge(s)", file=out)
    for a, b in report.upward:
        print(f"  {_label(report, a)} -> {_label(report, b)}", file=out)
        for imp in report.edges[a, b]:
            print(f"    {imp.where()}  {imp.what()}", file=out)
    print(f"\ncycles: {len(report.cycles)}", file=out)
    for comp in report.cycles:
        layers = {report.layers.get(n, (-1, "?")) for n in comp}
        within = f"within layer {next(iter(layers))[1]}" if len(layers) == 1 else "across layers"
        print(f"  {' <-> '.join(comp)} ({within})", file=out)
        for (a, b), imps in report.edges.items():
            if a in comp and b in comp:
                mark = "  UP" if (a, b) in report.upward else ""
                for imp in imps:
                    print(f"    {a} -> {b}  {imp.where()}  {imp.what()}{mark}", file=out)
    if report.unlayered:
        print(f"\nnot in LAYERS: {', '.join(report.unlayered)}", file=out)
    print("\nOK" if report.ok else "\nFAILED", file=out)


def print_dot(report: Report, out=sys.stdout) -> None:
    in_cycle = {n for comp in report.cycles for n in comp}
    print(f'digraph "{report.package}" {{', file=out)
    print("  rankdir=BT; node [shape=box, fontname=Helvetica];", file=out)
    by_layer: dict[tuple[int, str], list[str]] = defaultdict(list)
    for node in report.nodes:
        by_layer[report.layers.get(node, (-1, "unlayered"))].append(node)
    for (i, name), members in sorted(by_layer.items()):
        print(f'  subgraph "cluster_{i}" {{ label="{i} {name}"; rank=same;', file=out)
        for m in members:
            print(f'    "{m}";', file=out)
        print("  }", file=out)
    for (a, b), imps in report.edges.items():
        style = []
        if (a, b) in report.upward:
            style.append("color=red, penwidth=2")
        elif a in in_cycle and b in in_cycle:
            style.append("color=orange")
        attrs = ", ".join([f'label="{len(imps)}"', *style])
        print(f'  "{a}" -> "{b}" [{attrs}];', file=out)
    print("}", file=out)


def main(argv: Sequence[str] | None = None, *,
         layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> int:  # fmt: skip
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the package folder")
    parser.add_argument("--dot", action="store_true", help="print Graphviz instead")
    args = parser.parse_args(argv)
    report = check(args.root, layers)
    (print_dot if args.dot else print_text)(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
