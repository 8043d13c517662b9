"""The architecture's boundaries, read from the source: no import cycle, and the student side never
imports the server package (what both need lives in ``common/``)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "protos", "student_trainer", "teacher_server")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    graph = _graph()
    assert "student_trainer.engine.loop" in graph["student_trainer.cli"]  # imported inside main()
    assert "student_trainer.distill.kd" in graph["student_trainer.distill"]  # from .kd import KD
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back_through_others():
    assert _cycles(_graph()) == []


def test_the_student_side_never_imports_the_teacher_server():
    graph = _graph()
    leaks = {name: sorted(t for t in targets if t.split(".")[0] == "teacher_server")
             for name, targets in graph.items() if name.startswith("student_trainer")}
    assert {name: t for name, t in leaks.items() if t} == {}


# --- the house bar: sizes a reader can hold, and configs instead of parsed flags ----------------------------
MAX_FUNCTION, MAX_CLASS = 80, 150
SIZE_EXEMPT = {"build_parser"}  # a parser's flag list reads best in one place
TYPED = ("student_trainer/query", "student_trainer/distill", "student_trainer/teachers",
         "student_trainer/engine")  # below the CLI: configs, never an argparse namespace


def _sources(*packages: str):
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not path.name.endswith("_pb2.py") and not path.name.endswith("_pb2_grpc.py"):
                yield path, ast.parse(path.read_text(), str(path))


def _too_long(tree: ast.AST, kinds: tuple, limit: int) -> list[str]:
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, kinds) and node.end_lineno - node.lineno + 1 > limit and node.name not in SIZE_EXEMPT]


def test_no_function_over_80_lines_and_no_class_over_150():
    found = {}
    for path, tree in _sources("common", "student_trainer", "teacher_server"):
        long = (_too_long(tree, (ast.FunctionDef, ast.AsyncFunctionDef), MAX_FUNCTION)
                + _too_long(tree, (ast.ClassDef,), MAX_CLASS))
        if long:
            found[str(path.relative_to(ROOT))] = long
    assert found == {}


def test_below_the_cli_nothing_reads_parsed_flags():
    reads = {}
    for path, tree in _sources(*TYPED):
        names = sorted({f"args.{node.attr}" for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                        and isinstance(node.value, ast.Name) and node.value.id == "args"})
        if names:
            reads[str(path.relative_to(ROOT))] = names
    assert reads == {}
    assert _too_long(ast.parse("def f():\n" + "    pass\n" * 90), (ast.FunctionDef,), MAX_FUNCTION)  # it can fail
