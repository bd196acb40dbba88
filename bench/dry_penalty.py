"""What the DRY penalty costs in decoding speed, in one run: the preset's decoding with and without it.

    python bench/dry_penalty.py [--preset workshop] [--n 32] [--tokens 96] [--repeats 2]

The preset's trained humanizer (sft+dpo) rewrites the first `--n` evaluation drafts, each to at
most `--tokens` new tokens, with `dry_multiplier` 0 and the preset's value, in turns (repeats
interleaved, so that a busy machine slows both alike). The texts differ (that is what DRY is for),
so speed is generated tokens per second, median over repeats. Target: with DRY >= 0.9 x without.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.io import atomic_write_json
from helpers.data.prepare import load_prepared
from helpers.infer.decode import generate_tokens
from helpers.infer.humanizer import Humanizer


def tokens_per_second(humanizer: Humanizer, drafts: list[str], cfg) -> float:
    began = time.perf_counter()
    answers = generate_tokens(humanizer.model, humanizer.tokenizer, drafts, cfg, progress=False)
    return sum(map(len, answers)) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="workshop")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    fast_cpu.install()  # as every entry point: the same process state the notebooks measure in
    cfg = get_config(args.preset, experiment="", gen_max_tokens=args.tokens)
    if cfg.dry_multiplier == 0:
        raise SystemExit(f"preset {args.preset!r} decodes without DRY: nothing to compare")
    humanizer = Humanizer.load(cfg, "sft+dpo")
    drafts = [r["ai"] for r in load_prepared(cfg)["eval"][:args.n]]
    settings = {"without DRY": dataclasses.replace(cfg, dry_multiplier=0.0), "with DRY": cfg}
    tokens_per_second(humanizer, drafts[:4], cfg)  # warm-up: compile, caches
    speeds = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, setting in settings.items():
            speeds[name].append(tokens_per_second(humanizer, drafts, setting))
    medians = {name: statistics.median(v) for name, v in speeds.items()}
    ratio = medians["with DRY"] / medians["without DRY"]
    for name, value in medians.items():
        print(f"{name}: {value:.1f} generated tokens/s (median of {args.repeats})")
    print(f"with DRY / without: {ratio:.2f}x (target >= 0.9x)")
    atomic_write_json(cfg.path("experiments/bench_dry_penalty.json"),
                      {"preset": args.preset, "n": args.n, "tokens": args.tokens,
                       "tokens_per_second": speeds, "ratio": ratio})


if __name__ == "__main__":
    main()
