"""The import graph of the project, computed from the source: packages form layers, each importing only
from the layers below it, and no module takes part in an import cycle (docs/architecture.md draws it).

Every import counts, also the ones inside functions: a lazy import is still an arrow. The one
composition root is the `fleet` command (fleet/cli.py, fleet/commands/ and the `fleet up` demo they run):
it names every package's commands and sits above all of them; the rest of the `fleet` package is a
library low in the stack.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lowest first. A module may import from its own layer's package or any layer below, never above.
LAYERS: tuple[tuple[str, str], ...] = (
    ("model_repository", "the data plane seen from outside Triton: artifacts, packs, configs, S3 sync, the "
                         "data-plane contract, the Triton admin client, the project's data files"),
    ("fleet", "every FLEET_* setting, the user's client, install extras, local processes, the stack harness"),
    ("adfilter", "the OpenRTB ad-filter model"),
    ("loadtest", "locust users, drivers and reports"),
    ("control_plane", "REST API, registry, reconciler, deployment targets"),
    ("deploy", "container images and runbook rehearsals"),
    ("benchmarks", "measurements against baselines"),
    ("fleet command", "the `fleet` command and the `fleet up` demo: the composition root"),
)
COMMAND = ("fleet.cli", "fleet.commands", "fleet.demo", "fleet.demo_models")
PACKAGES = [name for name, _ in LAYERS if name != "fleet command"]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (the deepest known module of each dotted name)."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            dotted = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in dotted:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer_of(module: str) -> int:
    names = [name for name, _ in LAYERS]
    if any(module == name or module.startswith(f"{name}.") for name in COMMAND):
        return names.index("fleet command")
    return names.index(module.split(".")[0])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_package_imports_only_from_layers_below_it():
    upward = sorted(f"{module} -> {target}" for module, targets in graph().items() for target in targets
                    if layer_of(target) > layer_of(module))
    assert upward == [], "an arrow from a lower layer up to a higher one (LAYERS above, docs/architecture.md)"


def test_no_module_takes_part_in_an_import_cycle():
    assert cycles(graph()) == []


def test_the_layering_check_finds_what_it_must():
    """The checks themselves: a cycle and an upward arrow in a made-up graph are reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("model_repository.contract") < layer_of("fleet.client") < layer_of("control_plane.app")
    assert layer_of("fleet.cli") > layer_of("benchmarks.suite")
    assert imports("model_repository.generator", ROOT / "model_repository" / "generator.py", modules()) >= {
        "model_repository.profiles"}
