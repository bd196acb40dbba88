"""MiniLM's embedding speed with torch's default threads and with one torch thread, in one run.

    python bench/torch_threads.py [--texts 96] [--repeats 3]

Where OpenBLAS is preloaded (Linux, for MLX), torch's batched matmuls call it from each of torch's
threads and OpenBLAS starts its own threads inside each call; helpers.core.env's
`torch_threads_beside_openblas` gives torch one thread there. The two settings are measured in
turns (repeats interleaved), on the evaluation drafts of the preset's run when there are any, else
on the validation texts of the prepared data; the ratio is default / one thread. "same vectors":
the largest difference between the two settings' embeddings.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.env import blas_in_use
from helpers.data.prepare import load_prepared
from helpers.evaluate.embedding import Embedder


def texts_of(cfg, n: int) -> list[str]:
    rows = load_prepared(cfg)["val"]
    texts = [t for r in rows for t in (r["ai"], r["human"])]
    if len(texts) < n:
        texts = (texts * (n // max(len(texts), 1) + 1))
    return texts[:n]


def encode_seconds(embedder: Embedder, texts: list[str], threads: int | None):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        start = time.perf_counter()
        vectors = embedder.encode(texts)  # uncached: every repeat runs the model
        return time.perf_counter() - start, vectors
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    fast_cpu.install()  # as every entry point: the same process state the notebooks measure in
    import torch
    cfg = get_config(args.preset)
    texts = texts_of(cfg, args.texts)
    embedder = Embedder(cfg.embedder)
    default_threads = torch.get_num_threads()
    encode_seconds(embedder, texts[:8], None)  # warm-up
    times = {default_threads: [], 1: []}
    vectors = {}
    for _ in range(args.repeats):
        for threads in times:
            seconds, vectors[threads] = encode_seconds(embedder, texts, threads)
            times[threads].append(seconds)
    print(f"BLAS: {blas_in_use()}; {len(texts)} texts, median of {args.repeats}")
    for threads, seconds in times.items():
        print(f"  torch threads {threads}: {len(texts) / statistics.median(seconds):6.1f} texts/s")
    ratio = statistics.median(times[default_threads]) / statistics.median(times[1])
    print(f"  one thread is {ratio:.2f}x the speed of {default_threads}; "
          f"same vectors to {np.abs(vectors[1] - vectors[default_threads]).max():.1e}")


if __name__ == "__main__":
    main()
