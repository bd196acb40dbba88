"""Proof that inference computes what training computed: the logits of one example under every
way this series builds the SFT+DPO model, compared pairwise (notebook 06).

    training graph     mlx-lm's LoRALinear with the SFT adapter, the DPO adapter added on top,
                       the last DPO checkpoint's weights, in training mode (as train_dpo ran it)
    stacked inference  base + adapters/sft + adapters/dpo, loaded as the Humanizer loads them
    fused              both terms folded into fp32 weights (what generation decodes with)
    merged (mlx-lm)    the single rank-(r1 + r2) adapter, loaded by mlx-lm alone
    stacked, DPO off   against the SFT adapter loaded by mlx-lm alone: DPO's reference policy

"Same computation" pairs must agree to 1e-5. Fused and merged add the same terms in another order,
so in fp32 they may differ in the last digits; they are compared in float64 as well, where a
wrong merge would still show and rounding does not. Every model here is built fresh from the
files (the base read once, each model a new one on its weights): the caller's model is never
touched.
"""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.utils import load_adapters

from helpers.core.precision import set_compute_dtype
from helpers.quant.apply import clone_model
from helpers.train.adapters import ADAPTER_FILE, load_stacked, read_adapter_config
from helpers.train.base import load_base
from helpers.train.merge import fused_view
from helpers.train.stacked import add_dpo_adapter, set_adapters

COMPARISONS = [("stacked inference", "training graph", "same computation"),
               ("stacked, DPO off", "SFT alone (mlx-lm)", "same computation"),
               ("fused", "stacked inference", "same sums, other order"),
               ("merged (mlx-lm)", "stacked inference", "same sums, other order")]


def fresh_bases(cfg):
    """A function giving a new base model each call: read (and dequantized) from the files once,
    each one a new model on those weights (a quantized base, which clone_model cannot rebuild, is
    read again)."""
    base, _ = load_base(cfg)
    if any(isinstance(m, nn.QuantizedLinear) for _, m in base.named_modules()):
        return lambda: load_base(cfg)[0]
    return lambda: clone_model(base)


def all_logits(cfg, x: mx.array, adapters: Path, checkpoint: Path, merged: Path) -> dict:
    """{name: logits of x} for every model of the module docstring, fp32 and (where the order of
    the sums differs) fp64."""
    sft, dpo = adapters / "sft", adapters / "dpo"
    fresh = fresh_bases(cfg)
    logits = {}
    for dtype, suffix in (("float32", ""), ("float64", ", fp64")):
        model = fresh()
        load_stacked(model, sft, dpo)
        set_compute_dtype(model, dtype)
        logits["stacked inference" + suffix] = model(x)
        with fused_view(model):
            logits["fused" + suffix] = model(x)
        set_adapters(model, sft=True, dpo=False)
        logits["stacked, DPO off" + suffix] = model(x)
        base = fresh()
        load_adapters(base, str(merged))
        set_compute_dtype(base, dtype)
        logits["merged (mlx-lm)" + suffix] = base(x)

    model = fresh()
    load_adapters(model, str(sft))
    logits["SFT alone (mlx-lm)"] = model(x)
    add_dpo_adapter(model, read_adapter_config(dpo))
    weights = mx.load(str(checkpoint / ADAPTER_FILE))
    model.load_weights([(k.replace(".lora_", ".dpo_"), v) for k, v in weights.items()],
                       strict=False)
    model.train(cfg.lora_dropout == 0)  # training mode, unless dropout would make it random
    logits["training graph"] = model(x)
    return logits


def max_diff(a: mx.array, b: mx.array) -> float:
    return mx.abs(a.astype(mx.float64) - b.astype(mx.float64)).max().item()


def exactness_report(cfg, x: mx.array, adapters: Path, checkpoint: Path, merged: Path):
    """(table of max |Δ logit| per comparison, passed?) on the tokens x (1, T)."""
    # deferred: pandas is slow to import, and only this path needs it
    import pandas as pd

    logits = all_logits(cfg, x, Path(adapters), Path(checkpoint), Path(merged))
    rows = [{"model": a, "compared with": b, "relation": relation,
             "max |Δ logit| fp32": max_diff(logits[a], logits[b]),
             "max |Δ logit| fp64": None if relation == "same computation"
             else max_diff(logits[a + ", fp64"], logits[b + ", fp64"])}
            for a, b, relation in COMPARISONS]
    table = pd.DataFrame(rows)
    scale = mx.abs(logits["stacked inference"]).max().item()
    same = table.relation == "same computation"
    passed = bool((table[same]["max |Δ logit| fp32"] <= 1e-5).all()
                  and (table[~same]["max |Δ logit| fp64"] <= 1e-9).all()
                  and (table[~same]["max |Δ logit| fp32"] <= 1e-5 * scale).all())
    return table, passed
