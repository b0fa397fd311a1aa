"""The package's layout (issue 18): stage subpackages whose imports all point down.

Every import of every module is read with ``ast`` (those inside functions too), so that a module may
import only from its own stage and the stages before it (``mvlip_utils.STAGES``) and the modules import
each other without a cycle. (A module's length is not limited: issue 26.)
"""

from __future__ import annotations

import ast
import graphlib
import textwrap
from pathlib import Path

import pytest

import mvlip_utils

PACKAGE = Path(mvlip_utils.__file__).resolve().parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}; ``from pkg import name`` counts as ``pkg.name`` when that
    is a module, else as ``pkg``."""
    top = root.name
    modules = {module_name(p, root): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [(base, alias.name) for alias in node.names]
            else:
                continue
            for base, member in targets:
                if base != top and not base.startswith(top + "."):
                    continue
                target = f"{base}.{member}" if member and f"{base}.{member}" in modules else base
                while target not in modules:  # import a.b.c: the deepest module that exists
                    target = target.rpartition(".")[0]
                if target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def stage_of(module: str, stages: tuple[str, ...]) -> int:
    """The index of a module's stage; the top package (``mvlip_utils`` itself) is below every stage."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    if parts[1] not in stages:
        raise AssertionError(f"{module} is in no stage: every module belongs to one of {stages}")
    return stages.index(parts[1])


def upward_imports(graph: dict[str, set[str]], stages: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} imports {d} ({stages[stage_of(d, stages)]} is above {stages[stage_of(m, stages)]})"
                  for m, deps in graph.items() for d in deps if stage_of(d, stages) > stage_of(m, stages))


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return exc.args[1]
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_every_module_lies_in_a_stage_with_a_one_line_docstring(graph):
    assert all(s in {m.split(".")[1] for m in graph if "." in m} for s in mvlip_utils.STAGES)
    for stage in mvlip_utils.STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and "\n" not in doc.strip(), f"{stage}/__init__.py: its job in one line"
    for module in graph:
        stage_of(module, mvlip_utils.STAGES)


def test_imports_point_down_the_stages(graph):
    assert upward_imports(graph, mvlip_utils.STAGES) == []


def test_modules_import_each_other_without_a_cycle(graph):
    assert import_cycle(graph) is None


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The same checks on a small package made to break them."""
    files = {"__init__.py": "", "low/__init__.py": "", "high/__init__.py": "",
             "low/a.py": "def f():\n    from ..high import b\n",    # upward, inside a function
             "low/c.py": "from . import d\n", "low/d.py": "from .c import x\n",  # a cycle
             "high/b.py": "from ..low.a import f\nimport pkg.low.c\n"}
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(textwrap.dedent(text))
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.high.b"] == {"pkg.low.a", "pkg.low.c"}
    assert upward_imports(graph, ("low", "high")) == ["pkg.low.a imports pkg.high.b (high is above low)"]
    assert set(import_cycle(graph)) in ({"pkg.low.c", "pkg.low.d"}, {"pkg.low.a", "pkg.high.b"})
