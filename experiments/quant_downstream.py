"""Does the quantized base matter downstream? The same SFT adapter trained on two bases of equal size.

Notebook 03 saves the KL-knapsack + GPTQ model at cfg.target_bpw (runs/<preset>/quantized_model).
This script builds the uniform round-to-nearest model that stores exactly the same bits per weight
(at 5.0 bpw: 4-bit in groups of 32), then trains notebook 04's SFT adapter on each base with the
same data, seed and steps, and compares on validation data only (held-out training paragraphs,
never the evaluation items):
- validation loss per answer token, on the same rows, paired;
- the rewrites of `--n` validation drafts: the training judge's P(AI) (never an evaluation
  detector), meaning similarity and facts kept, paired differences with 95% bootstrap CIs.

Each arm is a named experiment: runs/<preset>/base-uniform/ and runs/<preset>/base-mixed/ (the
mixed arm starts from the default run's SFT checkpoint, which train() resumes only when its
settings match). Training resumes from checkpoints, so an interrupted run continues.

    python experiments/quant_downstream.py --preset workshop --n 40
    python experiments/quant_downstream.py --preset workshop --table-only   # rebuild the table
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.io import read_json
from helpers.core.models import load_model, save_mlx_model
from helpers.core.statistics import format_ci
from helpers.core.text_measures import fact_preservation
from helpers.data.prepare import load_prepared, one_per_paragraph
from helpers.evaluate.embedding import Embedder
from helpers.evaluate.experiments import save_experiment
from helpers.evaluate.meaning import meaning_similarity
from helpers.evaluate.tables import markdown_table
from helpers.evaluate.trained_detectors import training_judge
from helpers.evaluate.verdicts import paired_difference
from helpers.evaluate.verdicts import reading as results_reading
from helpers.infer.rewrite import rewrite
from helpers.quant.anchors import uniform_at
from helpers.quant.apply import quantize_model
from helpers.quant.scan import load_sensitivity
from helpers.quant.units import bits_per_weight, uniform_bits
from helpers.train.base import load_base
from helpers.train.batches import sft_dataset
from helpers.train.lora import add_lora, lora_config
from helpers.train.losses import evaluate_sft
from helpers.train.sft import train_sft

ARMS = {"uniform": "base-uniform", "mixed": "base-mixed"}


def build_uniform_base(cfg, out_dir) -> dict:
    """Save the uniform RTN model storing exactly notebook 03's target bpw; returns its bits and
    group size. An error when no uniform bit-width and group size store that target."""
    sens = load_sensitivity(cfg)
    uniform = uniform_at(sens["units"], cfg.target_bpw, sens["candidate_bits"])
    if uniform is None:
        raise SystemExit(f"no uniform quantization stores exactly target_bpw={cfg.target_bpw} "
                         "(try 4.5 or 5.0)")
    bits, group = uniform
    bits_by_path = uniform_bits(sens["units"], bits)
    if not (out_dir / "config.json").exists():
        model, tokenizer, config = load_model(cfg.model, keep_quantized=False, return_config=True)
        qmodel, qconfig = quantize_model(model, config, bits_by_path, group)
        save_mlx_model(qmodel, tokenizer, {**qconfig, "quantized_from": cfg.model}, out_dir)
    return {"bits": bits, "group_size": group,
            "bpw": bits_per_weight(bits_by_path, sens["units"], group)}


def seed_from_default_run(default_cfg, arm_cfg) -> None:
    """Copy the default run's SFT checkpoint and log into the arm (same base: same training)."""
    source = default_cfg.runs_dir / "checkpoints" / "sft"
    target = arm_cfg.runs_dir / "checkpoints" / "sft"
    if (source / "state.json").exists() and not target.exists():
        shutil.copytree(source, target)
        shutil.copy(default_cfg.runs_dir / "sft_log.csv", arm_cfg.runs_dir / "sft_log.csv")


def train_arm(arm_cfg, val_rows: list[dict], drafts: list[str]) -> dict:
    """SFT on the arm's base; per-row validation loss and the rewrites of `drafts`."""
    model, tokenizer = load_base(arm_cfg)
    add_lora(model, lora_config(arm_cfg, "sft"), seed=arm_cfg.seed)
    start = time.perf_counter()
    log = train_sft(model, tokenizer, arm_cfg, load_prepared(arm_cfg))
    val_set = sft_dataset(val_rows, tokenizer, arm_cfg)
    losses = [evaluate_sft(model, [item], 1) for item in val_set]
    outputs = rewrite(model, tokenizer, drafts, arm_cfg, desc=arm_cfg.experiment)
    return {"train_s": time.perf_counter() - start, "val_loss": losses, "outputs": outputs,
            "val_curve": {r["step"]: r["loss"] for r in log if r["split"] == "val"}}


def paired_rows(measures: dict, n_boot: int, seed: int) -> list[dict]:
    """measures {name: {"uniform": values, "mixed": values}} (same items) -> one row per measure:
    each arm's mean and the paired difference mixed - uniform with its 95% bootstrap CI."""
    rows = []
    for name, arms in measures.items():
        diff = paired_difference(arms["uniform"], arms["mixed"], n_boot, seed)
        rows.append({"measure": name, "uniform": diff.pop("first"), "mixed": diff.pop("second"),
                     "mixed - uniform": diff})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--n", type=int, default=40, help="validation drafts (one per paragraph)")
    parser.add_argument("--steps", type=int, default=None, help="SFT steps (default: the preset's)")
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild the .md table from the saved .json, without training")
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py
    if args.table_only:
        cfg = get_config(args.preset)
        result = read_json(cfg.path("experiments") / "quant_downstream.json")
        result.setdefault("preset", cfg.preset)  # older results lack it
        return save_experiment(cfg.path("experiments"), "quant_downstream", result, markdown)

    default_cfg = get_config(args.preset, experiment="")
    steps = {"sft_steps": args.steps} if args.steps else {}
    cfgs = {arm: get_config(args.preset, experiment=name, **steps) for arm, name in ARMS.items()}
    mixed_base = default_cfg.runs_dir / "quantized_model"
    if not (mixed_base / "config.json").exists():
        raise SystemExit(f"{mixed_base} does not exist: run notebook 03 first")
    uniform = build_uniform_base(default_cfg, cfgs["uniform"].path("quantized_model"))
    quant_results = read_json(default_cfg.runs_dir / "quant_results.json")  # notebook 03's
    chosen = quant_results["chosen"]
    if not 0 <= uniform["bpw"] - chosen["bpw"] < 0.1:  # the knapsack may leave a little unspent
        raise SystemExit(f"unequal sizes: mixed {chosen['bpw']:.3f} bpw, uniform {uniform['bpw']:.3f}")
    if cfgs["mixed"].sft_steps == default_cfg.sft_steps:
        seed_from_default_run(default_cfg, cfgs["mixed"])

    splits = load_prepared(default_cfg)
    val_rows = splits["val"][:max(default_cfg.val_examples, 32)]
    items = one_per_paragraph(splits["val"], args.n, default_cfg.seed + 1)
    drafts = [r["ai"] for r in items]
    arms = {arm: train_arm(cfg, val_rows, drafts) for arm, cfg in cfgs.items()}

    judge = training_judge(default_cfg, splits)
    embedder = Embedder(default_cfg.embedder)
    measures = {"validation loss (nats/token)": {a: r["val_loss"] for a, r in arms.items()}}
    measures[f"P(AI) {judge.name}"] = {a: judge.score(r["outputs"]) for a, r in arms.items()}
    measures["meaning"] = {a: meaning_similarity(embedder, r["outputs"], drafts) for a, r in arms.items()}
    measures["facts kept"] = {a: [fact_preservation(d, o) for d, o in zip(drafts, r["outputs"])]
                              for a, r in arms.items()}
    rows = paired_rows(measures, default_cfg.n_bootstrap, default_cfg.seed)

    heldout = {r["config"].rsplit(" @ ", 1)[0]: r for r in quant_results["comparison"]
               if r["target"] == default_cfg.target_bpw}
    base_kl = {arm: heldout.get(name, {}).get("kl") for arm, name in
               (("uniform", "uniform"), ("mixed", "KL knapsack + GPTQ"))}
    command = "python " + " ".join(sys.argv)
    result = {
        "command": command, "date": dt.date.today().isoformat(), "preset": default_cfg.preset,
        "uniform": uniform, "mixed_bpw": chosen["bpw"], "base_kl": base_kl, "rows": rows,
        "n_drafts": len(drafts), "n_val_rows": len(val_rows), "steps": cfgs["uniform"].sft_steps,
        "train_s": {a: r["train_s"] for a, r in arms.items()},
        "val_curve": {a: r["val_curve"] for a, r in arms.items()}}
    save_experiment(default_cfg.path("experiments"), "quant_downstream", result, markdown)


def reading(measure: str, diff: dict) -> str:
    """What the paired CI of mixed - uniform says, in words."""
    return results_reading(measure, diff, "mixed better", "mixed worse")


def markdown(result: dict) -> str:
    """The README table, from the saved result (so it can be rebuilt without training)."""
    uniform, base_kl = result["uniform"], result["base_kl"]
    kl = lambda v: f"{v:.3f}" if v is not None else "—"  # noqa: E731
    table = markdown_table(
        ["measure", f"uniform {uniform['bits']}-bit g{uniform['group_size']}",
         "KL knapsack + GPTQ", "mixed − uniform [95% CI]", "reading"],
        [["base: KL to float32 (notebook 03)", kl(base_kl["uniform"]), kl(base_kl["mixed"]), "—",
          "—"]]
        + [[r["measure"], f"{r['uniform']:.3f}", f"{r['mixed']:.3f}",
            format_ci(r["mixed - uniform"], 3), reading(r["measure"], r["mixed - uniform"])]
           for r in result["rows"]])
    caption = (f"Preset `{result['preset']}`, uniform at {uniform['bpw']:.3f} and mixed at "
               f"{result['mixed_bpw']:.3f} stored bpw, SFT {result['steps']} steps on each (same "
               f"data and seed); validation loss on {result['n_val_rows']} validation rows, "
               f"rewrites of {result['n_drafts']} validation drafts (held-out training paragraphs, "
               f"not the evaluation items), {result['date']}, generated by `{result['command']}`. "
               "Reading: lower loss and P(AI), higher meaning and facts are better; a CI that "
               "includes 0 shows no difference.\n\n")
    return caption + table + "\n"


if __name__ == "__main__":
    main()
