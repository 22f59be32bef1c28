"""The import rules between the parts (docs/architecture.md), read off the source with ``ast``.

- Each part imports only the parts below it (``ALLOWED``): ``common`` nothing of ours; a service
  ``common`` and other services' public modules; the learner and evaluation ``common`` and the
  services' public modules; the CLI and launchers (``rethinker``) anything.  Imports inside
  functions count as much as those at the top of a module: a lazy import is still a dependency.
- Another service is reached only through its public modules (``PUBLIC``: its client, its API
  package), never its internals.
- No cycle among the imports that run when a module is loaded (top-level imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# part name -> the module prefix it owns (longest prefix wins)
PARTS = {
    "common": "common",
    "devtools": "devtools",
    "weight_transport": "weight_transport",
    "verifier": "services.verifier",
    "buffer": "services.buffer",
    "rollout": "services.rollout",
    "services": "services",  # the namespace package itself
    "learner": "learner",
    "evaluation": "evaluation",
    "rethinker": "rethinker",
}

ALLOWED = {
    "common": set(),
    "devtools": {"common"},
    "weight_transport": {"common"},
    "services": set(),
    "verifier": {"common"},
    "buffer": {"common"},
    "rollout": {"common", "devtools", "weight_transport", "verifier", "buffer"},
    "evaluation": {"common", "verifier", "rollout"},
    "learner": {"common", "devtools", "weight_transport", "buffer", "evaluation"},
    "rethinker": set(PARTS),
}

# what other parts may import from a service
PUBLIC = {
    "verifier": {"services.verifier", "services.verifier.client", "services.verifier.main"},
    "buffer": {"services.buffer", "services.buffer.client", "services.buffer.main"},
    "rollout": {"services.rollout", "services.rollout.client", "services.rollout.engines", "services.rollout.main"},
}
ENTRY_POINTS = {"services.verifier.main", "services.buffer.main", "services.rollout.main"}  # for the CLI only


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for prefix in {p.split(".")[0] for p in PARTS.values()}:
        base = ROOT / prefix
        if base.is_dir():
            for f in base.rglob("*.py"):
                out[_module_name(f)] = f
    return out


SOURCES = _sources()


def part_of(module: str) -> str | None:
    best = None
    for name, prefix in PARTS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(PARTS[best]):
                best = name
    return best


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    pkg = module.split(".")
    is_pkg = SOURCES[module].name == "__init__.py"
    base = pkg if is_pkg else pkg[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, *, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in ``module``."""
    tree = ast.parse(SOURCES[module].read_text(), filename=str(SOURCES[module]))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # top-level statements, and imports nested in top-level if/try blocks
        stack, nodes = list(nodes), []
        while stack:
            n = stack.pop()
            nodes.append(n)
            if isinstance(n, (ast.If, ast.Try)):
                if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING":
                    continue
                stack.extend(n.body + getattr(n, "orelse", []) + [s for h in getattr(n, "handlers", []) for s in h.body])
    out = []
    for n in nodes:
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = _resolve(module, n)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base for a in n.names]
        else:
            continue
        for name in names:
            if part_of(name) is not None:
                out.append((name, n.lineno))
    return out


def test_the_parts_exist():
    assert {part_of(m) for m in SOURCES} >= {"common", "verifier", "buffer", "rollout", "learner", "evaluation", "rethinker"}


def test_each_part_imports_only_the_parts_below_it():
    bad = []
    for module in sorted(SOURCES):
        mine = part_of(module)
        for name, line in imports_of(module):
            theirs = part_of(name)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{module}:{line} ({mine}) imports {name} ({theirs})")
    assert bad == []


def test_other_parts_reach_a_service_only_through_its_public_modules():
    bad = []
    for module in sorted(SOURCES):
        mine = part_of(module)
        for name, line in imports_of(module):
            theirs = part_of(name)
            if theirs in PUBLIC and theirs != mine:
                if name not in PUBLIC[theirs] or (name in ENTRY_POINTS and mine != "rethinker"):
                    bad.append(f"{module}:{line} imports {name}")
    assert bad == []


def test_nothing_below_the_cli_imports_it():
    bad = [f"{m}:{line} imports {name}" for m in SOURCES if part_of(m) != "rethinker"
           for name, line in imports_of(m) if part_of(name) == "rethinker"]
    assert bad == []


def test_no_import_cycle_among_module_level_imports():
    graph = {m: sorted({n for n, _ in imports_of(m, top_level_only=True) if n in SOURCES and n != m}) for m in SOURCES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan, iterative enough for this graph's depth
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strongconnect(v)
    # a package's __init__ importing its own submodules and those importing siblings is normal;
    # a cycle that crosses parts is not
    crossing = [c for c in cycles if len({part_of(m) for m in c}) > 1]
    assert crossing == []


def test_the_checker_reports_a_planted_violation(tmp_path, monkeypatch):
    """The checker is not vacuous: a lazy import of a service planted in a copy of a common module
    is reported, as is a learner reaching into a service's internals."""
    for module, planted_import in (("common.config", "from services.buffer.client import BufferClient"),
                                   ("learner.sync", "from services.rollout.actor import Actor")):
        planted = tmp_path / f"{module}.py"
        planted.write_text(SOURCES[module].read_text() + f"\n\ndef _planted():\n    {planted_import}\n")
        monkeypatch.setitem(SOURCES, module, planted)
    with pytest.raises(AssertionError, match="common.config"):
        test_each_part_imports_only_the_parts_below_it()
    with pytest.raises(AssertionError, match="learner.sync"):
        test_other_parts_reach_a_service_only_through_its_public_modules()
