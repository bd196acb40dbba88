"""Quantization benchmark: every method at equal stored bits per weight, measured in one run.

Methods: uniform round-to-nearest, mlx-lm's rule-based mixed_4_6 (like llama.cpp's Q4_K_M),
mlx-lm's gradient-sensitivity allocation, our KL knapsack, GPTQ rounding on uniform and on
the knapsack, and the GPTQ-aware knapsack (KLs scaled by GPTQ's output-error ratio). Every method is counted with the same stored-bit accounting (helpers.quant
`stored_bits`), evaluated on held-out validation paragraphs (KL to the float32 reference with a
95% bootstrap CI over texts, perplexity), with the time each one costs.

Usage: python bench/quant.py [--preset workshop] [--texts 64] [--targets 4.25 4.5 5.0 5.5]
       python bench/quant.py --table-only   # rebuild the README table from the saved result
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.io import atomic_write_json, atomic_write_text, read_json
from helpers.core.models import load_model
from helpers.core.statistics import format_ci, paired_bootstrap_ci
from helpers.evaluate.tables import markdown_table
from helpers.evaluate.verdicts import verdict
from helpers.quant.allocate import GPTQ_AWARE, equal_size_methods
from helpers.quant.anchors import ANCHORS, gradient_anchor
from helpers.quant.calibration import gptq_calibration, preset_calibration
from helpers.quant.evaluate import compare, preset_heldout
from helpers.quant.gptq_rounding import GPTQRounding, gptq_error_ratios
from helpers.quant.scan import sensitivity_scan

KL_TARGET_RATIO = 2.0  # versus uniform, at 4.5 and 5.0 bpw
OURS = "KL knapsack + GPTQ"
OURS_METHODS = (OURS, GPTQ_AWARE)  # each gets its verdicts


def shared_passes(cfg, model, tokenizer, targets, reuse_scan: bool) -> dict:
    """The one-off passes the methods need, each timed: the KL scan, GPTQ's Hessians, the
    gradient scores."""
    timings = {}
    start = time.perf_counter()
    sens = sensitivity_scan(cfg, model, tokenizer, reuse_cache=reuse_scan)
    timings["KL scan"] = time.perf_counter() - start
    start = time.perf_counter()
    rounding = GPTQRounding(model, gptq_calibration(cfg, tokenizer), cfg.group_size,
                                  cfg.gptq_damp)
    timings["GPTQ Hessians"] = time.perf_counter() - start
    start = time.perf_counter()
    ratios = gptq_error_ratios(rounding, sens["units"], sens["candidate_bits"])
    timings["GPTQ error ratios"] = time.perf_counter() - start
    start = time.perf_counter()
    gradient = gradient_anchor(model, preset_calibration(cfg, tokenizer), targets,
                                     sens["candidate_bits"], cfg.group_size)
    timings["gradient scores"] = time.perf_counter() - start
    return {"sens": sens, "rounding": rounding, "gradient": gradient, "ratios": ratios,
            "timings": timings}


def ratio_rows(table, targets):
    """Per target: each method's KL ratio to uniform (at that bpw) and to the best anchor."""
    out = []
    for target, part in table.groupby("target", sort=True):
        uniform = part[part.method == "uniform"]
        anchors = part[part.method.isin(ANCHORS)]
        for _, row in part.iterrows():
            out.append({**row.to_dict(),
                        "x uniform": uniform.kl.iloc[0] / row.kl if len(uniform) else float("nan"),
                        "x best anchor": anchors.kl.min() / row.kl if len(anchors) else float("nan")})
    return out


def ratio_ci(rows, target, numerator: str, n_boot: int = 2000, ours: str = OURS) -> dict | None:
    """mean KL of `numerator` / mean KL of ours at `target`, with a paired bootstrap 95% CI over
    the held-out texts (both methods were evaluated on the same texts); None when either method
    has no row there (no uniform bit-width stores exactly 4.25 bpw in groups of 64)."""
    def kl_of(method):
        found = rows[(rows.target == target) & (rows.method == method)].kl_per_text
        return found.iloc[0] if len(found) else None

    numerator, ours = kl_of(numerator), kl_of(ours)
    if numerator is None or ours is None:
        return None
    return paired_bootstrap_ci(lambda a, b: a.mean() / b.mean(), numerator, ours, n_boot=n_boot)


def verdict_line(rows, target, ours: str = OURS) -> str:
    """Ours against uniform (>= KL_TARGET_RATIO at 4.5 and 5.0 bpw) and against the gradient
    anchor (> 1), each judged on its CI: met, not shown (the CI straddles the limit), not met."""
    vs_uniform = ratio_ci(rows, target, "uniform", ours=ours)
    vs_gradient = ratio_ci(rows, target, "gradient (mlx-lm)", ours=ours)
    line = (f"{target} bpw: {ours} is {format_ci(vs_uniform, 2)}x lower than uniform "
            f"({'no uniform stores this size' if vs_uniform is None else 'paired CI'}) and "
            f"{format_ci(vs_gradient, 2)}x lower than the gradient anchor (> 1: "
            f"{verdict(vs_gradient, 1.0, '>')})")
    if target in (4.5, 5.0):
        line += f"; target >= {KL_TARGET_RATIO}x vs uniform: {verdict(vs_uniform, KL_TARGET_RATIO, '>=')}"
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="workshop")
    parser.add_argument("--texts", type=int, default=64, help="held-out texts (quant_eval_texts)")
    parser.add_argument("--targets", type=float, nargs="+", default=[4.25, 4.5, 5.0, 5.5])
    parser.add_argument("--reuse-scan", action="store_true",
                        help="take the KL scan from the cache (its time is then not measured)")
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild the README table from the saved bench_quant.json")
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py
    import pandas as pd

    if args.table_only:
        cfg = get_config(args.preset)
        result = read_json(cfg.path("bench_quant.json"))
        result.setdefault("date", dt.date.fromtimestamp(cfg.path("bench_quant.json").stat().st_mtime)
                          .isoformat())  # older results lack these
        result.setdefault("command", f"python bench/quant.py --preset {args.preset} "
                                     f"--texts {result['heldout_texts']}")
        table = pd.DataFrame(result["table"])
        result["verdicts"] = [verdict_line(table, t, ours) for ours in OURS_METHODS
                              if ours in set(table.method)
                              for t in sorted({r["target"] for r in result["table"]})
                              if any(r["method"] == "gradient (mlx-lm)" and r["target"] == t
                                     for r in result["table"])]  # the --targets points
        return write_markdown(cfg, result)

    cfg = get_config(args.preset, quant_eval_texts=args.texts)
    model, tokenizer = load_model(cfg.model, keep_quantized=False)
    passes = shared_passes(cfg, model, tokenizer, args.targets, args.reuse_scan)
    sens, rounding = passes["sens"], passes["rounding"]
    methods = equal_size_methods(model, sens, args.targets, sens["candidate_bits"],
                                       rounding, passes["gradient"], cfg.protect,
                                       gptq_ratios=passes["ratios"])
    held = preset_heldout(cfg, model, tokenizer)
    configs = {f"{m['method']} @ {m['target']}": m["plan"] for m in methods}
    table = compare(model, held, sens, configs, progress=False)
    table["method"] = [m["method"] for m in methods]
    table["target"] = [m["target"] for m in methods]
    table["method s"] = [m["seconds"] for m in methods]
    rows = pd.DataFrame(ratio_rows(table, args.targets))

    print(f"model {cfg.model} (reference: dequantized, float32), preset {cfg.preset}, group "
          f"{sens['group_size']}, candidate bits {sens['candidate_bits']} (measured "
          f"{sens['measured_bits']}, per-kind fit at {sens['fit_bits']}), protect {cfg.protect}")
    print(f"held-out: {len(held.mask)} validation paragraphs, {int(held.mask.sum())} tokens; "
          f"KL scan calibration {sens['calibration']['rows']}x"
          f"{sens['calibration']['tokens_per_row']} tokens, GPTQ {cfg.gptq_calib_texts}x"
          f"{cfg.gptq_calib_tokens}")
    timings = passes["timings"] | {"GPTQ rounding (all plans)": rounding.rounding_seconds}
    print("shared passes: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    show = rows.assign(**{"KL [95% CI]": [f"{r.kl:.4f} [{r.kl_lo:.4f}, {r.kl_hi:.4f}]"
                                           for r in rows.itertuples()]})
    cols = ["target", "method", "bpw", "KL [95% CI]", "x uniform", "x best anchor", "ppl", "MB",
            "method s", "eval s"]
    print(show[cols].round(3).to_string(index=False))
    result = {"preset": cfg.preset, "date": dt.date.today().isoformat(),
              "command": "python " + " ".join(sys.argv), "heldout_texts": len(held.mask),
              "timings_s": timings, "table": rows.to_dict(orient="records")}
    atomic_write_json(cfg.path("bench_quant.json"), result)  # the measurements first: kept whatever follows
    result["verdicts"] = [verdict_line(rows, target, ours) for ours in OURS_METHODS
                          for target in args.targets]
    print("\n".join(result["verdicts"]))
    atomic_write_json(cfg.path("bench_quant.json"), result)
    write_markdown(cfg, result)


def write_markdown(cfg, result: dict) -> None:
    """runs/<preset>/experiments/bench_quant.md, the table `make readme` copies into README."""
    def number(value, digits):
        return "—" if value is None or value != value else f"{value:.{digits}f}"  # NaN: no uniform

    body = [[f"{r['target']:g}", r["method"], f"{r['bpw']:.3f}",
             f"{r['kl']:.3f} [{r['kl_lo']:.3f}, {r['kl_hi']:.3f}]", number(r["x uniform"], 2),
             number(r["x best anchor"], 2), f"{r['ppl']:.2f}", f"{r['method s']:.0f}",
             f"{r['eval s']:.0f}"] for r in result["table"]]
    passes = ", ".join(f"{k} {v:.0f} s" for k, v in result["timings_s"].items())
    text = (f"Generated by `{result['command']}` on {result['date']} (preset `{result['preset']}`, "
            f"{result['heldout_texts']} held-out validation paragraphs; mean KL to the float32 "
            "reference with a 95% bootstrap CI over texts). Shared passes: " + passes + ". "
            "Method s: building that plan past the shared passes; eval s: measuring it.\n\n"
            + markdown_table(["target bpw", "method", "stored bpw", "KL [95% CI]", "× uniform",
                              "× best anchor", "perplexity", "method s", "eval s"], body)
            + "\n\nRatios of mean KL with paired bootstrap 95% CIs over the same texts:\n\n"
            + "\n".join(f"- {line}" for line in result["verdicts"]) + "\n")
    out = cfg.path("experiments")
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "bench_quant.md", text)


if __name__ == "__main__":
    main()
