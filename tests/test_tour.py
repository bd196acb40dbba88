"""Notebook 00's zero-shot rewrite is notebook 07's "base zero-shot" system: the same base model
loader, prompt, decoding and cleaning (07 reads the base outputs that notebook 06 writes with
rewrite_eval_set on the stacked model switched to "base")."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import mlx.core as mx
import nbformat
import pytest

from helpers.core.config import get_config
from helpers.course.exercises import is_solution
from helpers.infer.rewrite import Rewrite, rewrite, rewrite_eval_set
from helpers.train.lora import add_lora, lora_config
from helpers.train.stacked import add_dpo_adapter, stacked_layers

from conftest import make_tiny_model

TOUR = Path(__file__).resolve().parent.parent / "notebooks" / "00_tour.ipynb"


def tour_code() -> ast.Module:
    """The notebook's code cells, exercises left out (they try other settings on purpose): the
    learner's open cell before each solution fold (the folds are markdown, never code)."""
    cells = nbformat.read(TOUR, as_version=4).cells
    exercises = {i - 1 for i, c in enumerate(cells) if c.cell_type == "markdown" and is_solution(c)}
    return ast.parse("\n".join(c.source for i, c in enumerate(cells)
                               if c.cell_type == "code" and i not in exercises))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == name]


def test_tour_rewrites_with_the_base_system_and_the_series_decoding():
    tree = tour_code()
    # the model comes from load_system(cfg, "base"), the loader of the evaluated systems
    base_names = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and isinstance(node.value, ast.Call)
                  and ast.unparse(node.value.func) == "load_system"
                  and [ast.unparse(a) for a in node.value.args] == ["cfg", "'base'"]
                  for target in ast.walk(node.targets[0]) if isinstance(target, ast.Name)}
    assert base_names, "00 must load its model with load_system(cfg, 'base')"
    rewrites = [c for c in calls(tree, "rewrite")
                if c.args and isinstance(c.args[0], ast.Name) and c.args[0].id in base_names]
    assert rewrites, "00 must rewrite with rewrite on the base system's model"
    for call in rewrites:
        assert ast.unparse(call.args[3]) == "cfg", "the rewrite must use cfg's decoding as it is"
        assert not {k.arg for k in call.keywords} & {"clean", "seed"}, \
            "the rewrite must keep rewrite's cleaning and seed"
    # and no prompt, sampler or cleaning of its own
    for own in ("apply_chat_template", "make_sampler", "clean_output", "chat_messages"):
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                    and ast.unparse(n.func).endswith(own)], f"00 calls {own} itself"


def test_the_check_fails_on_a_notebook_with_its_own_rewrite(monkeypatch, tmp_path):
    """The source check above catches the old notebook: its own prompt and greedy sampler."""
    own = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "prompt = tokenizer.apply_chat_template(data.chat_messages(d, cfg.system_prompt))\n"
        "text = stream_generate(model, tokenizer, prompt, sampler=make_sampler(temp=0.0))")])
    path = tmp_path / "00_tour.ipynb"
    nbformat.write(own, path)
    monkeypatch.setattr(sys.modules[__name__], "TOUR", path)
    with pytest.raises(AssertionError, match="load_system"):
        test_tour_rewrites_with_the_base_system_and_the_series_decoding()


@pytest.mark.slow
def test_base_zero_shot_of_the_evaluation_equals_the_tour_rewrite(tokenizer, tmp_path):
    """06 writes 07's base outputs from the stacked model with both adapters switched off; on the
    same weights they are exactly what 00's rewrite gives on the bare base."""
    cfg = get_config("smoke", gen_max_tokens=8, lora_layers=-1)
    bare, _ = make_tiny_model(seed=0)
    stacked, _ = make_tiny_model(seed=0)
    add_lora(stacked, lora_config(cfg), seed=0)
    add_dpo_adapter(stacked, lora_config(cfg, "dpo"), seed=1)
    for _, layer in stacked_layers(stacked):  # trained-looking adapters: they change outputs
        layer.lora_b = 0.5 * mx.random.normal(layer.lora_b.shape)
        layer.dpo_b = 0.5 * mx.random.normal(layer.dpo_b.shape)
    rows = [{"id": str(i), "domain": "test", "ai": draft, "human": "-"} for i, draft in
            enumerate(["The mill closed in 1931.", "A second draft, about the river and the town."])]
    records = rewrite_eval_set(cfg, stacked, tokenizer, rows, systems=("base", "sft+dpo"),
                                        out_path=tmp_path / "rewrites.jsonl")
    tour = rewrite(bare, tokenizer, [r["ai"] for r in rows], cfg, progress=False)
    assert [r["outputs"]["base"] for r in records] == tour
    assert [r["outputs"]["sft+dpo"] for r in records] != tour  # the switch matters: not vacuous


def test_eval_set_rewrites_are_read_back_only_for_the_same_key(tokenizer, tmp_path, monkeypatch):
    """A rerun of 06's cell reads rewrites.jsonl back; new adapter weights, a decoding field or
    other drafts generate again."""
    cfg = get_config("smoke", lora_layers=-1)
    stacked, _ = make_tiny_model(seed=0)
    add_lora(stacked, lora_config(cfg), seed=0)
    add_dpo_adapter(stacked, lora_config(cfg, "dpo"), seed=1)
    generated = []

    def fake_rewrite(model, tok, drafts, cfg, desc=""):
        generated.append(desc)
        return [Rewrite(f"{desc} {cfg.temperature} {d}", 3, desc == "sft")
                for d in drafts]

    monkeypatch.setattr("helpers.infer.rewrite.rewrite_detailed", fake_rewrite)
    rows = [{"id": "a", "domain": "d", "ai": "One draft.", "human": "-"}]
    out = tmp_path / "rewrites.jsonl"
    first = rewrite_eval_set(cfg, stacked, tokenizer, rows, ("base", "sft"), out)
    assert first[0]["hit_cap"] == {"base": False, "sft": True}  # recorded per system
    assert rewrite_eval_set(cfg, stacked, tokenizer, rows, ("base", "sft"), out) == first
    assert generated == ["base", "sft"]
    hotter = get_config("smoke", lora_layers=-1, temperature=0.5)
    assert rewrite_eval_set(hotter, stacked, tokenizer, rows, ("base", "sft"), out) != first
    layer = stacked_layers(stacked)[0][1]
    layer.dpo_b = layer.dpo_b + 1.0
    rewrite_eval_set(hotter, stacked, tokenizer, rows, ("base", "sft"), out)
    rewrite_eval_set(hotter, stacked, tokenizer, rows[:0] + [rows[0] | {"ai": "Two."}],
                              ("base", "sft"), out)
    assert generated == ["base", "sft"] * 4
