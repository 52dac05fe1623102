"""The package's import structure: one direction, no circles (docs/architecture.md).

Read from the source with ``ast`` (function-level imports included: an import inside a
function that dodges a circle at load time is still a circle in the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

import airflow_provider_vonage_studio

PACKAGE = "airflow_provider_vonage_studio"
ROOT = Path(airflow_provider_vonage_studio.__file__).parent

#: Layers, lowest first; a module may import only its own layer's modules or lower ones.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("exceptions", "_compat"),
    ("calls",),
    (
        "ledger",
        "outcome",
        "windows",
        "campaign",
        "signing",
        "destinations",
        "params",
        "validation",
        "timeutil",
    ),
    ("events", "links"),
    ("hooks",),
    ("batch", "recipients", "recipient_sources", "results"),
    ("triggers",),
    ("operators", "sensors", "notifications"),
)


#: Upward edges kept on purpose, each with its reason and its end.
ALLOWED_UPWARD = {
    # error_event / error_from_event moved to events; outcome resolves the old names lazily
    # (module __getattr__) for one release, until 0.3.0.
    (f"{PACKAGE}.outcome", f"{PACKAGE}.events"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # ``from package import module`` imports the module.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in _imports(path, name) if t in modules and t != name}
        # A package's own __init__ importing its modules is how it re-exports them, and a
        # module of a package importing the package's siblings is not a dependency on
        # __init__: drop submodule -> own package edges.
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def _layer(module: str) -> int | None:
    short = module.removeprefix(PACKAGE + ".").split(".")[0]
    for index, names in enumerate(LAYERS):
        if short in names:
            return index
    return None


def test_no_import_circles() -> None:
    graph = _graph()
    visiting: list[str] = []
    done: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            circles.append([*visiting[visiting.index(node) :], node])
            return
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not circles, "\n".join(" -> ".join(circle) for circle in circles)


def test_imports_run_from_the_airflow_roles_down() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in sorted(_graph().items())
        for target in sorted(targets)
        if (low := _layer(source)) is not None and (high := _layer(target)) is not None and high > low
        if (source, target) not in ALLOWED_UPWARD
    ]
    assert not upward, "\n".join(upward)


def test_the_domain_core_needs_only_the_standard_library() -> None:
    tree = ast.parse((ROOT / "calls.py").read_text(encoding="utf-8"))
    third_party = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert third_party <= {"__future__", "hashlib", "json", "re", "dataclasses", "datetime", "enum", "typing"}
