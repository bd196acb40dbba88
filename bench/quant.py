"""Benchmark: KL-sensitivity mixed precision vs uniform quantization at equal size.

Measured in one run on the preset's model (workshop: SmolLM2-135M-Instruct):
- the wall time of the sensitivity scan, computed from scratch (the cache is not read, only
  refreshed, so notebook 02 afterwards is instant);
- for each uniform bit-width b: held-out KL (vs the dequantized reference) of uniform b-bit and
  of the measured mixed allocation at the same effective bpw (within +-0.05), their ratio, bpw,
  size on disk (each model is saved in mlx-lm format to a temporary folder) and decode tokens/s
  of the real quantized model.
Targets: mixed >= 2x lower mean KL than uniform at equal bpw; scan <= 10 minutes on 2 CPU cores.
Timings on a shared machine are pessimistic. Results also go to runs/<preset>/bench_quant.json.

    python bench/quant.py [--preset workshop] [--uniform 4 5] [--protect lm_head]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from helpers import quant
from helpers.config import get_config
from helpers.io import atomic_write_json
from helpers.models import load_model, save_mlx_model, set_compute_dtype

SCAN_TARGET_S = 600
KL_TARGET_RATIO = 2.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="workshop")
    parser.add_argument("--uniform", type=int, nargs="+", default=[4, 5])
    parser.add_argument("--protect", nargs="*", default=None,
                        help="protections for the mixed allocation (default: the preset's)")
    args = parser.parse_args()
    cfg = get_config(args.preset)
    protect = tuple(cfg.protect if args.protect is None else args.protect)

    model, tokenizer, config = load_model(cfg.model, keep_quantized=False, return_config=True)
    start = time.perf_counter()
    sens = quant.sensitivity_scan(cfg, model, tokenizer, reuse_cache=False)
    scan_s = time.perf_counter() - start
    units, group = sens["units"], sens["group_size"]

    configs = {}
    for b in args.uniform:
        uniform = quant.uniform_bits(units, b)
        bpw = quant.bits_per_weight(uniform, units, group)
        configs[f"uniform {b}-bit"] = uniform
        configs[f"mixed @ {bpw:.2f}"] = quant.allocate(sens, bpw, cfg.candidate_bits, protect)
    held = quant.preset_heldout(cfg, model, tokenizer)
    table = quant.compare(model, held, sens, configs, progress=False).set_index("config")

    prompt = quant.speed_prompt(cfg, tokenizer)
    speed = quant.decode_speed(model, tokenizer, prompt, cfg.quant_decode_tokens)
    table["file MB"], table["decode tok/s"] = 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, bits in configs.items():
            qmodel, qconfig = quant.quantize_model(quant.clone_model(model), config, bits, group)
            folder = save_mlx_model(qmodel, tokenizer, qconfig, Path(tmp) / "m")
            table.loc[name, "file MB"] = quant.file_bytes(folder) / 2**20
            set_compute_dtype(qmodel, "float32")
            table.loc[name, "decode tok/s"] = quant.decode_speed(
                qmodel, tokenizer, prompt, cfg.quant_decode_tokens)["decode_tok_s"]

    print(f"model {cfg.model} (reference: dequantized, float32), preset {cfg.preset}")
    print(f"candidate bits {sens['candidate_bits']}, measured {sens['measured_bits']}, "
          f"group {group}, protect {protect}, calibration {sens['calibration']['rows']}x"
          f"{sens['calibration']['tokens_per_row']} tokens, held-out {len(held.mask)} texts / "
          f"{int(held.mask.sum())} tokens")
    print(f"sensitivity scan: {scan_s:.0f} s for {len(units)} units "
          f"(target <= {SCAN_TARGET_S} s: {'met' if scan_s <= SCAN_TARGET_S else 'MISSED'})")
    print(f"float32 reference decode: {speed['decode_tok_s']:.1f} tok/s")
    cols = ["bpw", "kl", "kl_lo", "kl_hi", "ppl", "file MB", "decode tok/s"]
    print(table[cols].round(4).to_string())
    pairs = []
    for b in args.uniform:
        u = table.loc[f"uniform {b}-bit"]
        m = table.loc[f"mixed @ {u.bpw:.2f}"]
        ratio = u.kl / m.kl
        pairs.append({"uniform_bits": b, "uniform_bpw": u.bpw, "mixed_bpw": m.bpw,
                      "uniform_kl": u.kl, "mixed_kl": m.kl, "ratio": ratio})
        print(f"{b}-bit: uniform KL {u.kl:.4f} at {u.bpw:.3f} bpw, mixed KL {m.kl:.4f} at "
              f"{m.bpw:.3f} bpw (|diff| {abs(u.bpw - m.bpw):.3f}) -> {ratio:.2f}x lower "
              f"(target >= {KL_TARGET_RATIO}x: {'met' if ratio >= KL_TARGET_RATIO else 'MISSED'})")
    atomic_write_json(cfg.path("bench_quant.json"), {
        "scan_seconds": scan_s, "protect": list(protect), "pairs": pairs,
        "reference_decode_tok_s": speed["decode_tok_s"],
        "table": table.reset_index().to_dict(orient="records")})


if __name__ == "__main__":
    main()
