"""Notebook 06's side-by-side table: its "dpo-only" column must be rewritten with the DPO term
alone switched on (it was once rewritten with the model left at sft+dpo, showing SFT+DPO twice)."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat

STACKED = Path(__file__).resolve().parent.parent / "notebooks" / "06_stacked_inference.ipynb"


def dpo_only_rewrites(source: str) -> list[ast.Call]:
    """The calls whose result is assigned to `dpo_only`."""
    tree = ast.parse(source)
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "dpo_only" for t in node.targets)
            and isinstance(node.value, ast.Call)]


def switched_to_dpo_only(call: ast.Call) -> bool:
    return any(k.arg == "adapter" and isinstance(k.value, ast.Constant)
               and k.value.value == "dpo-only" for k in call.keywords)


def test_dpo_only_column_is_rewritten_by_the_dpo_only_system():
    nb = nbformat.read(STACKED, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    calls = dpo_only_rewrites(code)
    assert calls, "notebook 06 no longer makes its dpo_only column"
    assert all(switched_to_dpo_only(c) for c in calls), [ast.unparse(c) for c in calls]


def test_the_check_catches_the_old_defect():
    old = 'dpo_only = rewrite(model, tokenizer, drafts, cfg, desc="dpo-only")'
    assert not all(switched_to_dpo_only(c) for c in dpo_only_rewrites(old))
    assert all(switched_to_dpo_only(c) for c in dpo_only_rewrites(
        'dpo_only = h.rewrite(drafts, adapter="dpo-only")'))


def test_no_notebook_computes_its_own_confidence_interval():
    """One CI function for the series (metrics.bootstrap_ci): 06 once promised a t interval and
    computed a normal one by hand."""
    own = []
    for path in sorted(STACKED.parent.glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code" and ("1.96" in cell.source or "def mean_ci" in cell.source
                                             or "std(ddof=1)" in cell.source):
                own.append(f"{path.name} cell {i}")
    assert not own, own
