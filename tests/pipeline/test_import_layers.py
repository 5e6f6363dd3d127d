"""The pipeline package's modules import each other in one direction only (no cycles).

graph (dependencies and order) needs nothing of the spec at run time; the stage interface
(stage.py) never imports the built-in stage kinds; stage kinds never import each other's
private helpers through the segment stage. Checked on the source: every import, also the
ones inside functions, counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medpipe.pipeline

PKG = Path(medpipe.pipeline.__file__).parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    type_checking = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skip = {id(x) for blk in type_checking for x in ast.walk(blk)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medpipe.pipeline"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("medpipe.pipeline")}
    return found


def _graph() -> dict[str, set[str]]:
    mods = {}
    for f in [*PKG.glob("*.py"), *(PKG / "stages").glob("*.py")]:
        rel = f.relative_to(PKG.parent.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        mods[name] = _imports(f) - {name}
    return mods


def test_no_import_cycles_in_the_pipeline_package() -> None:
    graph = _graph()
    pkg = "medpipe.pipeline"
    # the package __init__ re-exports, so edges into it are edges to everything: leave it out
    edges = {m: {d for d in deps if d != pkg and d in graph} for m, deps in graph.items() if m != pkg}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in edges.get(m, ()):
            assert seen.get(d) != 1, f"import cycle: {' -> '.join([*stack[stack.index(d):], d])}"
            if d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m)


def test_each_concept_has_one_home() -> None:
    graph = _graph()
    assert "medpipe.pipeline.spec" not in graph["medpipe.pipeline.graph"]
    assert not {d for d in graph["medpipe.pipeline.stage"] if d.startswith("medpipe.pipeline.stages")}
    assert "medpipe.pipeline.graph" in graph["medpipe.pipeline.spec"]  # the spec asks the graph for the order
    for name, deps in graph.items():
        if name.startswith("medpipe.pipeline.stages."):
            assert "medpipe.pipeline.stages.segment" not in deps or name == "medpipe.pipeline.stages.segment", name
