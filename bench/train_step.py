"""A compiled SFT step with logits for every position against logits from the first answer position.

    python bench/train_step.py [--preset workshop] [--batches 3] [--repeats 3]

The first batches notebook 04 trains on (the preset's data, batch size and order), each through
the compiled LoRA step as helpers/train/losses.py builds it: once with the vocabulary projection and the
cross-entropy over every position (start 0), once from the training set's first answer position
(train.first_answer_position), which is what train_sft uses. Measured in turns in one process
(rotated, medians after a warm-up round that also compiles); the losses must agree. Ratio > 1:
starting at the answer is faster.
"""
from __future__ import annotations

import argparse
import time

import mlx.core as mx
from inference import rotated_medians
from mlx.nn.utils import value_and_grad

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.data.prepare import load_prepared
from helpers.train.base import load_base
from helpers.train.batches import batch_order, first_answer_position, pad_batch, sft_dataset
from helpers.train.lora import add_lora, lora_config
from helpers.train.losses import sft_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py

    cfg = get_config(args.preset, notebook="04")
    model, tokenizer = load_base(cfg)
    add_lora(model, lora_config(cfg))
    train_set = sft_dataset(load_prepared(cfg)["train"], tokenizer, cfg)
    lengths = [len(t) for t, _ in train_set]
    batches = [pad_batch([train_set[i] for i in batch_order(
        lengths, cfg.batch_size, step, cfg.seed)]) for step in range(1, args.batches + 1)]
    starts = {"every position": 0, "from the answer": first_answer_position(train_set)}
    steps = {name: mx.compile(value_and_grad(model, lambda b, n, s=s: sft_loss(model, b, n, s)[0]))
             for name, s in starts.items()}
    losses = {}

    def measure(name):
        model.train()
        tic = time.perf_counter()
        values = []
        for batch in batches:
            loss, grads = steps[name](*batch)
            mx.eval(loss, grads)
            values.append(loss.item())
        losses[name] = values
        return {"step ms": 1000 * (time.perf_counter() - tic) / len(batches)}

    table = rotated_medians(list(starts), args.repeats, measure)
    widths = [b.shape[1] for b, _ in batches]
    full, cut = table["every position"]["step ms"], table["from the answer"]["step ms"]
    gap = max(abs(a - b) for a, b in zip(losses["every position"], losses["from the answer"]))
    print(f"\npreset {cfg.preset}; {len(batches)} SFT batches of {cfg.batch_size} (widths {widths}); "
          f"first answer position {starts['from the answer']}; median of {args.repeats}")
    print(f"step ms: every position {full:.0f}, from the answer {cut:.0f}, speed-up {full / cut:.2f}x; "
          f"largest loss difference {gap:.1e}")


if __name__ == "__main__":
    main()
