"""Decode speed of the exported humanizer: MLX fp32, MLX 4-bit, llama.cpp GGUF, in one run.

    python bench/runtimes.py [--preset workshop] [--prompt-tokens 128] [--decode-tokens 48]
                             [--batch 8] [--repeats 3]

The model is the preset's humanizer as helpers/tools/export.py exports it: SFT+DPO fused (the SFT adapter
or the base when that is all the run has). MLX 4-bit is the same fused model through mlx's
QuantizedLinear (group 64); llama.cpp runs the GGUF files helpers.tools.export writes, through
llama-cpp-python's C API (skipped, with a line saying so, when it is not installed). Decoding is
greedy, single-stream and `--batch` streams decoded together. The runtimes are measured in turns,
repeats interleaved and rotated, so that a busy machine slows all of them alike; medians are
reported as ratios to MLX fp32. "agrees": how many of the first 16 greedy tokens of a real rewrite
prompt match MLX fp32's (16 = the same text).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from inference import batched_decode, greedy, prefill_and_decode, rotated_medians
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.models import llama

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.env import matmul_gflops
from helpers.core.io import atomic_write_json
from helpers.infer.decode import prompt_tokens
from helpers.infer.systems import trained_systems
from helpers.tools import export

DRAFT = ("In today's fast-paced world, the city council has unveiled a comprehensive plan to "
         "revitalize the riverfront, featuring 12 new parks and a 3-mile bike path by 2027.")
AGREE_TOKENS = 16


class MLXRuntime:
    def __init__(self, model):
        self.model = model

    def single(self, prompt: list[int], n: int) -> float:
        return prefill_and_decode(self.model, mx.array(prompt), n)[1]

    def batched(self, prompt: list[int], batch: int, n: int) -> float:
        return batched_decode(self.model, mx.array(prompt), batch, n)

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        return [int(t) for t, _ in generate_step(mx.array(prompt), self.model, max_tokens=n,
                                                 sampler=greedy)]


class LlamaCppRuntime:
    """llama.cpp through llama-cpp-python's C API: `n_seq` sequences decoded together, one token
    each per llama_decode call (what llama-server does for parallel requests)."""

    def __init__(self, path: Path, n_threads: int, n_seq: int, n_ctx_per_seq: int):
        import llama_cpp as L

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # else it logs every graph
        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.contexts = {}
        for n in sorted({1, n_seq}):
            params = L.llama_context_default_params()
            params.n_ctx, params.n_seq_max = n * n_ctx_per_seq, n
            params.n_batch = params.n_ubatch = max(n, n_ctx_per_seq)
            params.n_threads = params.n_threads_batch = n_threads
            self.contexts[n] = (L.llama_init_from_model(self.model, params),
                                L.llama_batch_init(params.n_batch, 0, n))

    def _decode(self, ctx, batch, items: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(items)
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        if self.L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, ctx, i: int) -> int:
        logits = self.L.llama_get_logits_ith(ctx, i)
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def decode(self, prompt: list[int], n_seq: int, n: int) -> tuple[list[list[int]], float]:
        """(greedy tokens of every sequence, decode tokens/s after the prompts)."""
        ctx, batch = self.contexts[n_seq]
        self.L.llama_memory_clear(self.L.llama_get_memory(ctx), True)
        tokens = []
        for seq in range(n_seq):
            self._decode(ctx, batch, [(t, p, seq, p == len(prompt) - 1) for p, t in enumerate(prompt)])
            tokens.append([self._argmax(ctx, len(prompt) - 1)])
        start = time.perf_counter()
        for step in range(n - 1):
            self._decode(ctx, batch, [(tokens[s][-1], len(prompt) + step, s, True)
                                      for s in range(n_seq)])
            for s in range(n_seq):
                tokens[s].append(self._argmax(ctx, s))
        return tokens, n_seq * (n - 1) / (time.perf_counter() - start)

    def single(self, prompt, n):
        return self.decode(prompt, 1, n + 1)[1]

    def batched(self, prompt, batch, n):
        return self.decode(prompt, batch, n + 1)[1]

    def greedy(self, prompt, n):
        return self.decode(prompt, 1, n)[0][0]


def quantized_copy(model, config: dict, bits: int = 4, group_size: int = 64):
    """The same weights in a fresh model, quantized with mlx's QuantizedLinear/QuantizedEmbedding."""
    copy = llama.Model(llama.ModelArgs.from_dict(config))
    copy.load_weights(tree_flatten(model.parameters()), strict=True)
    nn.quantize(copy, group_size=group_size, bits=bits)
    mx.eval(copy.parameters())
    copy.eval()
    return copy


def trained_adapter(cfg) -> str:
    """The most trained system of the run: sft+dpo once DPO has run, else sft, else base."""
    return trained_systems(cfg)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads")
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py

    cfg = get_config(args.preset)
    adapter = trained_adapter(cfg)
    gflops_before = matmul_gflops()
    model, tokenizer, config = export.fused_humanizer(cfg, adapter)
    runtimes = {"MLX fp32 (fused)": MLXRuntime(model),
                "MLX 4-bit (group 64)": MLXRuntime(quantized_copy(model, config))}
    missing = None
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        missing = "llama.cpp: not installed (pip install llama-cpp-python builds it from source)"
    real_prompt = prompt_tokens(tokenizer, DRAFT, cfg.system_prompt)
    with tempfile.TemporaryDirectory() as tmp:
        if missing is None:
            fields = export.humanizer_gguf_fields(cfg, tokenizer, config["vocab_size"])
            context = max(args.prompt_tokens, len(real_prompt)) + args.decode_tokens + 16
            for outtype in ("f32", "f16", "q8_0"):
                path = export.write_humanizer_gguf(cfg, model, config, fields,
                                                   Path(tmp) / outtype / f"h-{outtype}.gguf", outtype)
                runtimes[f"llama.cpp GGUF {outtype.upper()}"] = LlamaCppRuntime(
                    path, args.threads, args.batch, context)
        reference = runtimes["MLX fp32 (fused)"].greedy(real_prompt, AGREE_TOKENS)
        agrees = {}
        for name, runtime in runtimes.items():
            tokens = runtime.greedy(real_prompt, AGREE_TOKENS)
            agrees[name] = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b),
                                AGREE_TOKENS)
            print(f"  {name:22s} greedy: {tokenizer.decode(tokens)!r}", flush=True)
        prompt = mx.random.randint(100, 40000, (args.prompt_tokens,), key=mx.random.key(0)).tolist()
        table = rotated_medians(list(runtimes), args.repeats, lambda name: {
            "decode": runtimes[name].single(prompt, args.decode_tokens),
            "batched": runtimes[name].batched(prompt[:64], args.batch, args.decode_tokens // 2)})
    gflops_after = matmul_gflops()
    ref = table["MLX fp32 (fused)"]
    print(f"\npreset {cfg.preset}, humanizer {adapter} fused; prompt {args.prompt_tokens} tokens, "
          f"{args.decode_tokens} decoded (batched: {args.batch} streams x {args.decode_tokens // 2}); "
          f"median of {args.repeats}; llama.cpp threads {args.threads}; matmul "
          f"{gflops_before:.0f} GFLOP/s before, {gflops_after:.0f} after (machine load)")
    print(f"{'runtime':22s} {'decode tok/s':>13s} {'x MLX fp32':>11s} "
          f"{'batch-' + str(args.batch) + ' tok/s':>15s} {'x MLX fp32':>11s} {'agrees':>7s}")
    for name, row in table.items():
        print(f"{name:22s} {row['decode']:13.1f} {row['decode'] / ref['decode']:11.2f} "
              f"{row['batched']:15.1f} {row['batched'] / ref['batched']:11.2f} "
              f"{agrees[name]:4d}/{AGREE_TOKENS}")
    if missing:
        print(missing)
    atomic_write_json(cfg.path("bench_runtimes.json"), {
        "args": vars(args), "adapter": adapter, "gflops": [gflops_before, gflops_after],
        "tokens_per_s": table, "agrees": agrees, "llama_cpp": missing or "installed"})


if __name__ == "__main__":
    main()
