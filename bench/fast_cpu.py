"""mlx-lm's stock kernels against helpers/core/fast_cpu.py's (MLX exp, numpy for big arrays), in one run.

    python bench/fast_cpu.py [--preset workshop] [--batch 8] [--tokens 250] [--decode-batch 32]
                             [--decode-tokens 32] [--train-batch 4] [--repeats 5]

The jobs the series spends its time on: a prefill (rewriting's prompts, notebook 07's scorers,
DPO's reference log-probs), batched decoding (notebooks 05-06), decoding one sequence (the CLI and
the server) and a compiled LoRA training step (notebooks 04-05). Stock and fast are measured in
turns in one process (rotated, medians after a warm-up round), then how far the fast kernels move
the logits. Ratios > 1: fast_cpu is faster.
"""
from __future__ import annotations

import argparse
import time

import mlx.core as mx
from inference import greedy, prefill_and_decode, rotated_medians
from mlx.nn.utils import value_and_grad
from mlx_lm.generate import BatchGenerator

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.env import matmul_gflops
from helpers.train.base import load_base
from helpers.train.lora import add_lora, lora_config
from helpers.train.losses import sft_loss


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=250)
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py

    cfg = get_config(args.preset)
    model, _ = load_base(cfg)
    tokens = mx.random.randint(100, 40000, (args.batch, args.tokens), key=mx.random.key(0))

    def decode():
        model.eval()
        generator = BatchGenerator(model, sampler=greedy, completion_batch_size=args.decode_batch,
                                   prefill_batch_size=8)
        generator.insert([tokens[0].tolist()] * args.decode_batch,
                         [args.decode_tokens] * args.decode_batch)
        with generator.stats() as stats:
            while generator.next_generated():
                pass
        generator.close()
        return stats.generation_tps

    add_lora(model, lora_config(cfg))
    lengths = mx.array([[args.tokens // 2, args.tokens]] * args.train_batch)
    step = {}  # one compiled training step per kernel set, as helpers/train/trainer.py compiles it

    def train_step(name):
        if name not in step:
            loss_and_grad = value_and_grad(model, lambda b, n: sft_loss(model, b, n)[0])
            step[name] = mx.compile(loss_and_grad)
        model.train()
        loss, grads = step[name](tokens[:args.train_batch], lengths)
        mx.eval(loss, grads)
        model.eval()

    def measure(name):
        fast_cpu.install(force=True) if name == "fast" else fast_cpu.uninstall()
        prefill = seconds(lambda: mx.eval(model.model(tokens)))  # no lm_head: as in generation
        single = prefill_and_decode(model, tokens[0], args.decode_tokens)[1]
        return {"prefill ms": 1000 * prefill, "decode tok/s": decode(), "decode B=1 tok/s": single,
                "train step ms": 1000 * seconds(lambda: train_step(name))}

    gflops = matmul_gflops()
    model.eval()
    table = rotated_medians(["stock", "fast"], args.repeats, measure)
    fast_cpu.uninstall()
    stock_logits = model(tokens)
    fast_cpu.install(force=True)
    fast_logits = model(tokens)
    diff = float(mx.abs(fast_logits - stock_logits).max())
    agree = float((fast_logits.argmax(-1) == stock_logits.argmax(-1)).mean())

    stock, fast = table["stock"], table["fast"]
    print(f"\npreset {cfg.preset}; prefill of {args.batch} x {args.tokens} tokens, decode "
          f"{args.decode_batch} sequences x {args.decode_tokens} tokens; LoRA training step of "
          f"{args.train_batch} x {args.tokens} tokens; median of {args.repeats}; "
          f"matmul {gflops:.0f} GFLOP/s")
    print(f"{'job':18s} {'stock':>10s} {'fast':>10s} {'speed-up':>9s}")
    for key in stock:
        ratio = stock[key] / fast[key] if "ms" in key else fast[key] / stock[key]
        print(f"{key:18s} {stock[key]:10.1f} {fast[key]:10.1f} {ratio:8.2f}x")
    print(f"logits: max |fast - stock| {diff:.1e}; same argmax at {agree:.1%} of positions")


if __name__ == "__main__":
    main()
