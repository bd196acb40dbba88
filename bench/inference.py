"""Prefill and decode speed of base, SFT, stacked (SFT + DPO), merged (one adapter) and fused, in one run.

    python bench/inference.py [--preset workshop] [--prompt-tokens 256] [--decode-tokens 64]
                              [--batch 32] [--repeats 3]

Uses the preset's trained adapters when they exist, else random adapters of the same shapes (speed
does not depend on the values). The variants are swapped in and out of one loaded model and
measured in turns, repeats interleaved, so that a busy machine slows all of them alike; medians
are reported with the ratio to base. Target: stacked decode >= 0.95 x base (generate.rewrite
decodes with the fused variant for that reason).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_unflatten
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.tuner.utils import load_adapters, remove_lora_layers

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.env import matmul_gflops
from helpers.core.io import atomic_write_json
from helpers.train.adapters import (
    load_stacked,
    read_adapter_config,
    save_dpo_adapter,
    save_sft_adapter,
)
from helpers.train.base import load_base
from helpers.train.lora import add_lora, lora_config, lora_layers
from helpers.train.merge import fuse, save_merged_adapter
from helpers.train.stacked import add_dpo_adapter, stacked_layers


def greedy(logprobs):
    return mx.argmax(logprobs, axis=-1)


def prefill_and_decode(model, prompt: mx.array, n_decode: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) for one sequence, through mlx-lm's generate_step."""
    start = time.perf_counter()
    steps = generate_step(prompt, model, max_tokens=n_decode + 1, sampler=greedy)
    next(steps)  # the prompt's forward pass and the first token
    first = time.perf_counter()
    for _ in steps:
        pass
    end = time.perf_counter()
    return prompt.size / (first - start), n_decode / (end - first)


def batched_decode(model, prompt: mx.array, batch: int, n_decode: int) -> float:
    """Decode tokens/s over `batch` sequences decoded together (mlx-lm's BatchGenerator)."""
    generator = BatchGenerator(model, sampler=greedy, completion_batch_size=batch,
                               prefill_batch_size=batch)
    generator.insert([prompt.tolist()] * batch, [n_decode] * batch)
    with generator.stats() as stats:
        while generator.next_generated():
            pass
    generator.close()
    return stats.generation_tps


def rotated_medians(names: list[str], repeats: int, measure) -> dict:
    """{name: {metric: median}} of measure(name) -> {metric: tokens/s} over `repeats` rounds,
    after a warm-up round that is discarded; each round starts one name later, so that no
    variant always runs first (a machine's load drifts)."""
    results = {name: {} for name in names}
    for repeat in range(repeats + 1):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            values = measure(name)
            print(f"  repeat {repeat} {name:22s} " + "  ".join(
                f"{key} {value:7.1f}" for key, value in values.items()) + " tok/s", flush=True)
            if repeat:  # round 0 warms up
                for key, value in values.items():
                    results[name].setdefault(key, []).append(value)
    return {name: {key: statistics.median(v) for key, v in r.items()} for name, r in results.items()}


def ensure_adapters(cfg, model, folder: Path) -> tuple[Path, Path]:
    """The preset's trained adapters, or random ones of the same shapes written to `folder`."""
    sft, dpo = cfg.runs_dir / "adapters" / "sft", cfg.runs_dir / "adapters" / "dpo"
    if (sft / "adapters.safetensors").exists() and (dpo / "adapters.safetensors").exists():
        return sft, dpo
    print("no trained adapters for this preset: using random ones of the same shapes")
    add_lora(model, lora_config(cfg, "sft"), seed=cfg.seed)
    add_dpo_adapter(model, lora_config(cfg, "dpo"), seed=cfg.seed)
    for _, layer in stacked_layers(model):
        layer.lora_b = 0.01 * mx.random.normal(layer.lora_b.shape)
        layer.dpo_b = 0.01 * mx.random.normal(layer.dpo_b.shape)
    save_sft_adapter(model, folder / "sft", lora_config(cfg, "sft"))
    save_dpo_adapter(model, folder / "dpo", lora_config(cfg, "dpo"))
    remove_lora_layers(model)
    return folder / "sft", folder / "dpo"


def build_variants(cfg, model, folder: Path) -> dict[str, list]:
    """{variant: [(module path, module)]} for the target linears of each variant."""
    sft_dir, dpo_dir = ensure_adapters(cfg, model, folder)
    load_adapters(model, str(sft_dir))
    variants = {"sft": lora_layers(model)}
    names = {n for n, _ in variants["sft"]}
    remove_lora_layers(model)
    variants["base"] = [(n, m) for n, m in model.named_modules() if n in names]
    load_stacked(model, sft_dir, dpo_dir)
    variants["stacked (sft+dpo)"] = lora_layers(model)
    merged_dir = save_merged_adapter(model, folder / "merged", read_adapter_config(sft_dir),
                                          read_adapter_config(dpo_dir))
    fuse(model)
    variants["fused (sft+dpo)"] = [(n, m) for n, m in model.named_modules() if n in names]
    model.update_modules(tree_unflatten(variants["base"]))
    load_adapters(model, str(merged_dir))
    variants["merged (one adapter)"] = lora_layers(model)
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--decode-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py

    cfg = get_config(args.preset)
    gflops_before = matmul_gflops()
    model, _ = load_base(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(cfg, model, Path(tmp))
    order = ["base", "sft", "stacked (sft+dpo)", "merged (one adapter)", "fused (sft+dpo)"]
    prompt = mx.random.randint(100, 40000, (args.prompt_tokens,), key=mx.random.key(0))

    def measure(name):
        model.update_modules(tree_unflatten(variants[name]))
        prefill, decode = prefill_and_decode(model, prompt, args.decode_tokens)
        return {"prefill": prefill, "decode": decode,
                "batched": batched_decode(model, prompt[:64], args.batch, args.decode_tokens // 2)}

    table = rotated_medians(order, args.repeats, measure)
    gflops_after = matmul_gflops()
    base = table["base"]
    print(f"\npreset {cfg.preset}, fp32 compute (fake-quant {cfg.fake_quant}); prompt "
          f"{args.prompt_tokens} tokens, {args.decode_tokens} decoded; median of {args.repeats}; "
          f"matmul {gflops_before:.0f} GFLOP/s before, {gflops_after:.0f} after (machine load)")
    print(f"{'variant':22s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'x base':>7s} "
          f"{'batch-' + str(args.batch) + ' tok/s':>15s} {'x base':>7s}")
    for name, row in table.items():
        print(f"{name:22s} {row['prefill']:14.1f} {row['decode']:13.1f} "
              f"{row['decode'] / base['decode']:7.2f} {row['batched']:15.1f} "
              f"{row['batched'] / base['batched']:7.2f}")
    ratio = table["fused (sft+dpo)"]["decode"] / base["decode"]
    print(f"\nstacked adapters as generate.rewrite runs them (fused): {ratio:.2f} x base decode "
          f"(target >= 0.95); unfused: {table['stacked (sft+dpo)']['decode'] / base['decode']:.2f} x")
    atomic_write_json(cfg.path("bench_inference.json"), {
        "args": vars(args), "gflops": [gflops_before, gflops_after], "tokens_per_s": table})


if __name__ == "__main__":
    main()
