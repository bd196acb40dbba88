"""The package's shape (helpers/README.md): stages import only earlier stages, no import cycle,
and imports sit at a module's top unless the comment above says which slow library they defer."""
import ast
from pathlib import Path

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
ORDER = ("core", "data", "quant", "train", "infer", "evaluate", "course", "tools")
# ranked DPO pairs (optional, notebook 05) are the SFT model's samples ranked by the training judge
UPWARD = {("train/preferences.py", "infer"), ("train/preferences.py", "evaluate")}


def modules():
    return {p: ast.parse(p.read_text(encoding="utf-8")) for p in HELPERS.rglob("*.py")}


def helpers_imports(tree):
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
            and n.module.startswith("helpers.")]


def test_every_module_is_in_a_stage_folder():
    loose = [p.name for p in HELPERS.glob("*.py") if p.name != "__init__.py"]
    assert not loose and {p.name for p in HELPERS.iterdir() if p.is_dir()} - {"__pycache__"} == set(ORDER)


def test_stages_import_only_earlier_stages():
    wrong = []
    for path, tree in modules().items():
        own = path.relative_to(HELPERS).parts[0]
        for node in helpers_imports(tree):
            other = node.module.split(".")[1]
            rel = str(path.relative_to(HELPERS))
            if ORDER.index(other) > ORDER.index(own) and (rel, other) not in UPWARD:
                wrong.append(f"{rel} imports {node.module}")
    assert not wrong, wrong


def test_no_import_cycle():
    graph = {}
    for path, tree in modules().items():
        name = ".".join(("helpers",) + path.relative_to(HELPERS).with_suffix("").parts)
        graph[name] = {n.module for n in helpers_imports(tree)}
    seen, done = set(), set()

    def visit(node, trail):
        assert node not in trail, " -> ".join(trail[trail.index(node):] + [node])
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, trail + [node])
        done.add(node)

    for node in graph:
        visit(node, [])


def first_imports_of_runs(fn):
    """The first import of each run of consecutive imports in a function's blocks."""
    for node in ast.walk(fn):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for i, stmt in enumerate(block):
                if isinstance(stmt, (ast.Import, ast.ImportFrom)) and \
                        (i == 0 or not isinstance(block[i - 1], (ast.Import, ast.ImportFrom))):
                    yield stmt


def test_imports_inside_functions_defer_a_slow_library_and_say_so():
    unexplained = []
    for path, tree in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in first_imports_of_runs(fn):
                if not lines[node.lineno - 2].strip().startswith("# deferred:"):
                    unexplained.append(f"{path.relative_to(HELPERS)}:{node.lineno}")
    assert not unexplained, unexplained


def test_the_cycle_check_catches_a_cycle():
    graph = {"a": {"b"}, "b": {"a"}}
    try:
        def visit(node, trail):
            assert node not in trail
            for nxt in graph[node]:
                visit(nxt, trail + [node])
        visit("a", [])
    except AssertionError:
        return
    raise AssertionError("a two-module cycle went unnoticed")


def test_the_readme_tree_lists_every_module():
    """helpers/README.md gives each module's one-line job: no module may be missing or extra."""
    import re

    listed, folder = set(), None
    for line in (HELPERS / "README.md").read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^  (\w+)/\s", line):
            folder = m.group(1)
        elif (m := re.match(r"^    (\w+\.py)\b", line)) and folder:
            listed.add(f"{folder}/{m.group(1)}")
    actual = {str(p.relative_to(HELPERS)) for p in HELPERS.rglob("*.py") if p.name != "__init__.py"}
    assert listed == actual, {"missing": sorted(actual - listed), "extra": sorted(listed - actual)}
