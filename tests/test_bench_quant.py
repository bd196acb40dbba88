"""bench/quant.py's verdicts: ratios of mean KL with paired CIs over the same held-out texts."""
import importlib.util

import pandas as pd

from helpers.config import REPO_ROOT

spec = importlib.util.spec_from_file_location("bench_quant", REPO_ROOT / "bench" / "quant.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def rows(target, uniform, gradient, ours):
    return pd.DataFrame([{"target": target, "method": m, "kl_per_text": kl} for m, kl in
                         (("uniform", uniform), ("gradient (mlx-lm)", gradient), (bench.OURS, ours))])


def test_ratio_ci_is_paired_over_texts():
    ci = bench.ratio_ci(rows(4.5, [0.25, 1.25], [0.25, 0.25], [0.25, 0.25]), 4.5, "uniform")
    assert ci["mean"] == 3.0 and ci["lo"] == 1.0 and ci["hi"] == 5.0  # resamples: 1, 3 or 5


def test_verdicts_need_the_whole_ci_past_the_limit():
    met = bench.verdict_line(rows(4.5, [0.4] * 4, [0.15] * 4, [0.1] * 4), 4.5)
    assert met == ("4.5 bpw: KL knapsack + GPTQ is 4.00 [4.00, 4.00]x lower than uniform and "
                   "1.50 [1.50, 1.50]x lower than the gradient anchor (> 1: met); "
                   "target >= 2.0x vs uniform: met")
    unsure = bench.verdict_line(rows(5.0, [0.1, 0.5], [0.05, 0.05], [0.1, 0.1]), 5.0)
    assert unsure.endswith("(> 1: not met); target >= 2.0x vs uniform: not shown")
    assert "vs uniform" not in bench.verdict_line(rows(5.5, [0.4], [0.2], [0.1]), 5.5)
