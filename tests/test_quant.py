"""Sensitivity scan, allocation and mlx-lm-format saving, on the tiny random Llama."""
import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from helpers.core.cache import load_json, read_entries, save_json
from helpers.core.models import load_model, save_mlx_model
from helpers.core.precision import set_compute_dtype
from helpers.quant.allocate import GPTQ_AWARE, allocate, equal_size_methods
from helpers.quant.anchors import (
    allocate_by_score,
    bracketing_bits,
    gradient_anchor,
    gradient_scores,
    rule_based_bits,
)
from helpers.quant.apply import clone_model, expected_bytes, file_bytes, quantize_model
from helpers.quant.calibration import calibration_texts, calibration_tokens
from helpers.quant.gptq_rounding import GPTQRounding, gptq_aware, gptq_error_ratios
from helpers.quant.kl import Reference, fake_quantize, fake_quantized, token_kl
from helpers.quant.scan import (
    fit_per_kind,
    fit_sample,
    measure_units,
    predicted_kl,
    quantization_error,
)
from helpers.quant.units import (
    bits_per_weight,
    protected_units,
    quant_units,
    shapes_by_path,
    stored_bits,
    uniform_bits,
)

from conftest import make_tiny_model

GROUP = 64


def random_tokens(shape=(2, 24), seed=0):
    return mx.random.randint(0, 49152, shape, key=mx.random.key(seed))


def test_kl_is_zero_unquantized_and_grows_with_more_quantized_layers(tiny_model):
    model, _ = tiny_model
    ref = Reference(model, random_tokens())
    for start in (-1, 0, 1, 2):
        assert np.all(ref.kl_from(model, start) == 0.0)

    units = quant_units(model, "linear", GROUP)
    block0 = [p for u in units.values() if u["block"] == 0 for p in u["paths"]]
    nested = [[], ["model.layers.0.mlp.down_proj"], block0, [p for u in units.values()
                                                             for p in u["paths"]]]
    means = []
    for paths in nested:
        with fake_quantized(model, {p: 2 for p in paths}, GROUP):
            means.append(float(ref.kl_from(model, -1).mean()))
    assert means[0] == 0.0
    assert means[1] > 0 and means == sorted(means) and len(set(means)) == 4
    # more bits, smaller KL
    with fake_quantized(model, {p: 4 for p in nested[-1]}, GROUP):
        assert 0 < ref.kl_from(model, -1).mean() < means[-1]


def test_restarting_at_a_block_gives_the_full_forward_kl(tiny_model):
    model, _ = tiny_model
    tokens = random_tokens()
    ref = Reference(model, tokens)
    units = quant_units(model, "linear", GROUP)
    for name in ("model.layers.1.self_attn.v_proj", "model.embed_tokens"):
        scan = measure_units(model, ref, {name: units[name]}, 3, GROUP, progress=False)
        with fake_quantized(model, {name: 3}, GROUP):
            full = token_kl(ref.dist, model(tokens))
        assert scan[name]["mean"] == pytest.approx(float(full.mean()), rel=1e-4)
        assert scan[name]["median"] <= scan[name]["p95"]


def test_scan_cache_is_reused(tiny_model, tmp_path):
    model, _ = tiny_model
    ref = Reference(model, random_tokens())
    units = quant_units(model, "block", GROUP)
    cache = tmp_path / "cache.json"
    first = measure_units(model, ref, units, 4, GROUP, cache, "key", progress=False)
    stored = load_json(cache, "key")
    assert set(stored) == set(units) == {"model.embed_tokens", "model.layers.0", "model.layers.1"}
    stored["model.layers.1"]["mean"] = 123.0  # a cached entry is read back, not recomputed
    save_json(cache, "key", stored)
    again = measure_units(model, ref, units, 4, GROUP, cache, "key", progress=False)
    assert again["model.layers.1"]["mean"] == 123.0
    assert again["model.layers.0"] == first["model.layers.0"]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64])
def test_stored_bits_match_the_quantized_arrays(bits, group_size):
    model, config = make_tiny_model()
    path = "model.layers.0.mlp.down_proj"  # (64, 128)
    quantize_model(model, config, {path: bits}, group_size)
    layer = model.layers[0].mlp.down_proj
    assert isinstance(layer, nn.QuantizedLinear) and layer.scales.dtype == mx.float16
    actual = 8 * (layer.weight.nbytes + layer.scales.nbytes + layer.biases.nbytes)
    assert actual == stored_bits((64, 128), bits, group_size)
    assert stored_bits((64, 128), 4, 64) == 64 * 128 * 4.5


def synthetic_sensitivity():
    """Units shaped like a small 4-block model with made-up KLs: KL(b) = s * 4**-b, s growing
    with depth and largest for the (tied) embedding."""
    shapes = {"self_attn.q_proj": [64, 64], "self_attn.k_proj": [32, 64],
              "mlp.down_proj": [64, 128]}
    units = {"model.embed_tokens": {"paths": ["model.embed_tokens"], "shapes": [[128, 64]],
                                    "block": -1, "kind": "embedding", "n_weights": 128 * 64}}
    for block in range(4):
        for name, shape in shapes.items():
            path = f"model.layers.{block}.{name}"
            units[path] = {"paths": [path], "shapes": [shape], "block": block, "kind": "block",
                           "n_weights": shape[0] * shape[1]}
    kl = {}
    for i, (name, unit) in enumerate(units.items()):
        s = 50.0 if unit["kind"] == "embedding" else 1.0 + i
        kl[name] = {str(b): {"mean": s * 4.0 ** -b} for b in (2, 3, 4, 5, 6, 8)}
    return {"units": units, "kl": kl, "group_size": GROUP}


def test_allocation_respects_budget_and_spends_it_where_kl_drops_most():
    sens = synthetic_sensitivity()
    units = sens["units"]
    previous = float("inf")
    for target in (3.5, 4.0, 4.5, 5.0, 6.0, 8.5):
        bits = allocate(sens, target, (3, 4, 5, 6, 8))
        bpw = bits_per_weight(bits, units, GROUP)
        assert bpw <= target + 1e-12
        assert target - bpw < 0.25  # the greedy fills the budget to within a small step
        kl = predicted_kl(sens, bits)
        assert kl <= previous
        previous = kl
    # at the budget of uniform 4-bit, mixing beats uniform on the KL it optimises
    mixed = allocate(sens, 4.5, (3, 4, 5, 6, 8))
    assert predicted_kl(sens, mixed) < predicted_kl(sens, uniform_bits(units, 4))
    # the most sensitive unit gets the most bits, the least sensitive the fewest
    assert mixed["model.embed_tokens"] == max(mixed.values())
    assert mixed["model.layers.0.self_attn.q_proj"] == min(mixed.values())
    with pytest.raises(ValueError, match="below"):
        allocate(sens, 3.4, (3, 4, 5, 6, 8))
    with pytest.raises(ValueError, match="bit-width"):
        allocate(sens, 5.0, (4, 7))


def test_allocation_keeps_protected_units_at_the_highest_bits():
    sens = synthetic_sensitivity()
    units = sens["units"]
    bits = allocate(sens, 6.0, (3, 4, 8), protect=("first_block", "last_block"))
    assert bits_per_weight(bits, units, GROUP) <= 6.0
    edge = [p for u in units.values() if u["block"] in (0, 3) for p in u["paths"]]
    assert len(edge) == 6 and all(bits[p] == 8 for p in edge)
    assert min(bits.values()) < 8
    with pytest.raises(ValueError, match="below"):  # the protected blocks alone need more
        allocate(sens, 4.5, (3, 4, 8), protect=("first_block", "last_block"))
    # tied embeddings: protecting the lm_head protects the embedding matrix
    assert protected_units(units, ("lm_head",)) == {"model.embed_tokens"}
    assert protected_units(units, ("embeddings",)) == {"model.embed_tokens"}
    untied = quant_units(make_tiny_model(tie_word_embeddings=False)[0], "linear", GROUP)
    assert protected_units(untied, ("lm_head",)) == {"lm_head"}
    with pytest.raises(ValueError, match="Unknown protection"):
        protected_units(units, ("attention",))


def test_rule_based_baseline_follows_mlx_lm_recipe():
    model, _ = make_tiny_model(num_hidden_layers=8)
    units = quant_units(model, "linear", GROUP)
    bits = rule_based_bits(model, units, "mixed_3_6", GROUP, protect=("lm_head",))
    # more bits for v_proj and down_proj in the first and last eighth and every third block
    assert [bits[f"model.layers.{i}.mlp.down_proj"] for i in range(8)] == [6, 3, 3, 6, 3, 3, 6, 6]
    assert bits["model.layers.0.self_attn.v_proj"] == 6
    assert bits["model.layers.0.self_attn.q_proj"] == 3
    assert bits["model.embed_tokens"] == 8  # protected


def test_calibration_mix_and_rows(tokenizer):
    rows = [{"human": f"Human paragraph {i}.", "ai": f"AI paragraph {i}."} for i in range(4)]
    texts = calibration_texts(rows)
    assert texts[:2] == ["Human paragraph 0.", "AI paragraph 0."]
    assert len(texts) == 4 * 2 + 2  # one prose paragraph after every second row
    assert texts[4].startswith("The bakery")
    tokens = calibration_tokens(texts, tokenizer, rows=2, row_tokens=8)
    assert tokens.shape == (2, 8)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    first = encode("Human paragraph 0.") + [tokenizer.eos_token_id] + encode("AI paragraph 0.")
    assert tokens[0].tolist() == first[:8]  # a short document continues into the next one
    assert tokens[1, :3].tolist() == encode("Human paragraph 1.")[:3]  # each row starts anew
    with pytest.raises(ValueError, match="lower calib_texts"):
        calibration_tokens(texts, tokenizer, rows=100, row_tokens=100)


def test_saved_model_loads_with_mlx_lm_and_gives_identical_logits(tmp_path, tokenizer):
    import mlx_lm

    model, config = make_tiny_model(seed=2)
    units = quant_units(model, "linear", GROUP)
    bits = {p: [3, 4, 5, 6, 8][i % 5] for i, p in enumerate(shapes_by_path(units))}
    reference = clone_model(model)
    tokens = random_tokens((1, 12), seed=3)
    with fake_quantized(reference, bits, GROUP):
        fake_logits = reference(tokens)

    qmodel, qconfig = quantize_model(model, config, bits, GROUP)
    out = save_mlx_model(qmodel, tokenizer, qconfig, tmp_path / "mixed")
    saved = json.loads((out / "config.json").read_text())["quantization"]
    assert saved["model.layers.1.mlp.up_proj"] == {"group_size": GROUP,
                                                   "bits": bits["model.layers.1.mlp.up_proj"],
                                                   "mode": "affine"}
    loaded, loaded_tokenizer = mlx_lm.load(str(out))
    assert isinstance(loaded.layers[1].mlp.up_proj, nn.QuantizedLinear)
    assert loaded.layers[1].mlp.up_proj.bits == bits["model.layers.1.mlp.up_proj"]
    np.testing.assert_array_equal(np.array(loaded(tokens)), np.array(qmodel(tokens)))
    # computing in float32 (how helpers.core.models.load_model loads it) is also reproduced exactly,
    # and matches the fake-quantized float32 model that scans and evaluations use
    set_compute_dtype(qmodel, "float32")
    np.testing.assert_array_equal(np.array(load_model(str(out))[0](tokens)),
                                  np.array(qmodel(tokens)))
    np.testing.assert_allclose(np.array(qmodel(tokens)), np.array(fake_logits), atol=1e-4)
    # the file holds exactly the accounted bytes plus a small safetensors header
    extra = file_bytes(out) - expected_bytes(qmodel, units, bits, GROUP)
    assert 0 < extra < 64 * 1024
    text = mlx_lm.generate(loaded, loaded_tokenizer, "Hello", max_tokens=3)
    assert isinstance(text, str)


def test_bits_per_weight_counts_weights_scales_and_biases_by_hand():
    sens = synthetic_sensitivity()
    units = sens["units"]
    bits = {p: 4 for u in units.values() for p in u["paths"]}
    bits["model.layers.0.mlp.down_proj"] = 8  # (64, 128): 64*128*8 + 64*2 groups*2*16
    bits["model.embed_tokens"] = 3  # (128, 64): 128*64*3 + 128*1 group*2*16
    n = sum(u["n_weights"] for u in units.values())
    rest = n - 64 * 128 - 128 * 64
    by_hand = (rest * 4.5 + 64 * 128 * 8 + 64 * 2 * 32 + 128 * 64 * 3 + 128 * 32) / n
    assert bits_per_weight(bits, units, GROUP) == pytest.approx(by_hand, rel=1e-12)
    # a group of 32 doubles the scale/bias overhead: uniform 4-bit is 5.0 bpw
    assert bits_per_weight(uniform_bits(units, 4), units, 32) == 5.0
    with pytest.raises(ValueError, match="no whole groups of 128"):  # 64 inputs
        bits_per_weight(uniform_bits(units, 4), units, 128)


def test_bracketing_bits_reach_each_equal_size_point():
    cands = (3, 4, 5, 6, 8)
    assert [bracketing_bits(t, cands, 64) for t in (4.25, 4.5, 5.0, 5.5)] == [
        (3, 4), (3, 5), (4, 5), (4, 6)]
    with pytest.raises(ValueError, match="not between"):
        bracketing_bits(3.2, cands, 64)


def test_score_allocation_raises_the_highest_scores_first_within_the_budget():
    sens = synthetic_sensitivity()
    units = sens["units"]
    paths = list(shapes_by_path(units))
    scores = {p: float(i) for i, p in enumerate(paths)}  # the last paths score highest
    bits = allocate_by_score(units, scores, 4.0, 3, 5, GROUP)
    assert bits_per_weight(bits, units, GROUP) <= 4.0
    raised = [p for p in paths if bits[p] == 5]
    assert raised and all(bits[p] in (3, 5) for p in paths)
    # every layer scoring above the lowest raised one is raised too, unless it did not fit
    lowest = min(scores[p] for p in raised)
    skipped = [p for p in paths if scores[p] > lowest and bits[p] == 3]
    spent = bits_per_weight(bits, units, GROUP) * sum(u["n_weights"] for u in units.values())
    budget = 4.0 * sum(u["n_weights"] for u in units.values())
    shapes = shapes_by_path(units)
    for p in skipped:
        assert spent + stored_bits(shapes[p], 5, GROUP) - stored_bits(
            shapes[p], 3, GROUP) > budget
    assert allocate_by_score(units, scores, 5.5, 3, 5, GROUP) == uniform_bits(units, 5)
    with pytest.raises(ValueError, match="below"):
        allocate_by_score(units, scores, 3.4, 3, 5, GROUP)


def test_gradient_scores_cover_every_quantizable_matrix(tiny_model):
    model, _ = tiny_model
    scores = gradient_scores(model, random_tokens((4, 16)), 3, 8, GROUP, batch_rows=2)
    assert set(scores) == set(shapes_by_path(quant_units(model, "linear", GROUP)))
    assert all(np.isfinite(v) for v in scores.values())


def test_gradient_scores_are_read_back_only_for_the_same_weights_tokens_and_bits(tiny_model,
                                                                              tmp_path, monkeypatch):
    from mlx_lm.quant import dynamic_quant

    model, _ = tiny_model
    tokens, cache = random_tokens((4, 16)), tmp_path / "gradient_scores.json"
    first = gradient_scores(model, tokens, 3, 8, GROUP, batch_rows=2, cache_path=cache)
    passes = []
    real = dynamic_quant.estimate_sensitivities
    monkeypatch.setattr(dynamic_quant, "estimate_sensitivities",
                        lambda *a, **k: passes.append(a[2:]) or real(*a, **k))
    assert gradient_scores(model, tokens, 3, 8, GROUP, batch_rows=2, cache_path=cache) == first
    assert passes == []  # read back
    gradient_scores(model, tokens, 4, 8, GROUP, batch_rows=2, cache_path=cache)
    gradient_scores(model, random_tokens((4, 16), seed=9), 3, 8, GROUP, cache_path=cache)
    layer = model.model.layers[0].mlp.down_proj
    original = layer.weight
    layer.weight = original * 1.01
    try:
        gradient_scores(model, tokens, 3, 8, GROUP, batch_rows=2, cache_path=cache)
    finally:
        layer.weight = original
    assert len(passes) == 3 and len(read_entries(cache)) == 4


def test_per_kind_fit_scales_predictions_by_the_sampled_ratio():
    units = synthetic_sensitivity()["units"]
    sample = fit_sample(units, 2)
    assert sample["q_proj"] == ["model.layers.0.self_attn.q_proj", "model.layers.3.self_attn.q_proj"]
    assert sample["embed_tokens"] == ["model.embed_tokens"]
    kl = {n: {"3": {"mean": 1.0, "median": 0.5, "p95": 2.0, "measured": False}} for n in units}
    measured = {n: {"mean": 0.5, "median": 0.1, "p95": 1.0} for n in units}
    measured["model.layers.3.self_attn.q_proj"]["mean"] = 0.125  # ratios 1/2 and 1/8: factor 1/4
    fit_per_kind(kl, units, sample, measured, 3)
    middle = kl["model.layers.1.self_attn.q_proj"]["3"]
    assert middle["mean"] == pytest.approx(0.25) and middle["p95"] == pytest.approx(0.5)
    assert middle["unfitted_mean"] == 1.0 and not middle["measured"]
    assert kl["model.layers.3.self_attn.q_proj"]["3"]["mean"] == 0.125
    assert kl["model.layers.3.self_attn.q_proj"]["3"]["measured"]


def test_gptq_model_saves_loads_and_matches_its_fake_quantized_plan(tmp_path, tokenizer):
    import mlx_lm

    model, config = make_tiny_model(seed=4)
    units = quant_units(model, "linear", GROUP)
    bits = {p: [3, 4, 6][i % 3] for i, p in enumerate(shapes_by_path(units))}
    rounding = GPTQRounding(model, random_tokens((4, 32), seed=5), GROUP)
    plan = rounding.plan(bits)
    assert set(plan["weights"]) == set(bits)  # the tied embedding too, as the output layer
    tokens = random_tokens((1, 12), seed=6)
    with fake_quantized(model, bits, GROUP, plan["weights"]):
        fake_logits = model(tokens)
    with fake_quantized(model, bits, GROUP):
        rtn_logits = model(tokens)
    assert not np.allclose(np.array(fake_logits), np.array(rtn_logits), atol=1e-4)
    qmodel, qconfig = quantize_model(clone_model(model), config, bits, GROUP,
                                           rounding.stored(bits))
    out = save_mlx_model(qmodel, tokenizer, qconfig, tmp_path / "gptq")
    loaded, _ = mlx_lm.load(str(out))
    np.testing.assert_array_equal(np.array(loaded(tokens)), np.array(qmodel(tokens)))
    set_compute_dtype(qmodel, "float32")
    np.testing.assert_allclose(np.array(qmodel(tokens)), np.array(fake_logits), atol=1e-4)
    extra = file_bytes(out) - expected_bytes(qmodel, units, bits, GROUP)
    assert 0 < extra < 64 * 1024  # same accounting as round-to-nearest


def test_gptq_aware_kls_are_scaled_by_the_output_error_ratio_of_each_unit(tiny_model):
    model, _ = tiny_model
    units = quant_units(model, "linear", GROUP)
    rounding = GPTQRounding(model, random_tokens((4, 32), seed=7), GROUP)
    ratios = gptq_error_ratios(rounding, units, (3, 4))
    path = "model.layers.0.mlp.down_proj"
    w, h = np.array(rounding.weights[path]), rounding.hessians[path]

    def output_error(approx):  # tr(ΔW H ΔWᵀ), by hand
        delta = np.array(approx) - w
        return float(np.sum((delta @ h) * delta))

    by_hand = output_error(rounding.stored({path: 3})[path]["dequantized"]) / output_error(
        fake_quantize(rounding.weights[path], 3, GROUP))
    assert ratios[path][3] == pytest.approx(by_hand, rel=1e-4) and by_hand < 1
    assert ratios["model.embed_tokens"] == {3: 1.0, 4: 1.0}  # its lookup error is not in the ratio
    entry = {"mean": 1.0, "median": 0.5, "p95": 2.0, "measured": True}
    sens = {"units": units, "group_size": GROUP,
            "kl": {n: {str(b): dict(entry) for b in (3, 4)} for n in units}}
    aware = gptq_aware(sens, ratios)
    r = ratios[path][3]
    assert aware["kl"][path]["3"] == {"mean": r, "median": 0.5 * r, "p95": 2 * r, "measured": True}
    assert sens["kl"][path]["3"] == entry  # the RTN table is left as it was


def test_gptq_rounding_is_shared_only_for_the_same_weights_tokens_and_damping():
    model, _ = make_tiny_model(seed=4)
    tokens = random_tokens((4, 32), seed=5)
    path = "model.layers.0.mlp.down_proj"
    first = GPTQRounding(model, tokens, GROUP)
    rounded = first.stored({path: 4})[path]
    again = GPTQRounding(model, tokens, GROUP)  # a rerun of the cell
    assert again.stored({path: 4})[path] is rounded and again.rounding_seconds == first.rounding_seconds
    assert GPTQRounding(model, tokens, GROUP).rounding_seconds == 0  # nothing handed out yet
    for other in (GPTQRounding(model, random_tokens((4, 32), seed=6), GROUP),
                  GPTQRounding(model, tokens, GROUP, damp=0.1)):
        assert other.stored({path: 4})[path] is not rounded
    layer = model.layers[0].mlp.down_proj
    layer.weight = layer.weight + 0.01
    changed = GPTQRounding(model, tokens, GROUP).stored({path: 4})[path]
    assert not np.array_equal(np.array(changed["dequantized"]), np.array(rounded["dequantized"]))


def test_every_method_is_built_at_each_equal_size_point(tiny_model):
    model, _ = tiny_model
    units = quant_units(model, "linear", GROUP)
    cands = (3, 4, 5, 6, 8)
    errors = {b: quantization_error(model, units, b, GROUP) for b in cands}
    sens = {"units": units, "group_size": GROUP,
            "kl": {n: {str(b): {"mean": errors[b][n]} for b in cands} for n in units}}
    tokens = random_tokens((2, 16))
    targets = (4.5, 5.0)
    rounding = GPTQRounding(model, tokens, GROUP)
    rows = equal_size_methods(model, sens, targets, cands, rounding,
                                    gradient_anchor(model, tokens, targets, cands, GROUP),
                                    gptq_ratios=gptq_error_ratios(rounding, units, cands))
    methods = {(r["method"], r["target"]) for r in rows}
    for target in targets:
        assert {(m, target) for m in ("uniform", "uniform + GPTQ", "gradient (mlx-lm)",
                                      "KL knapsack", "KL knapsack + GPTQ", GPTQ_AWARE)} <= methods
    rule_bpw = rows[0]["target"]
    assert rows[0]["method"] == "rule mixed_4_6" and ("KL knapsack", rule_bpw) in methods
    for r in rows:
        plan = r["plan"] if "bits" in r["plan"] else {"bits": r["plan"]}
        bpw = bits_per_weight(plan["bits"], units, plan.get("group_size", GROUP))
        assert bpw <= r["target"] + 1e-3
        if r["method"] == "uniform":
            assert bpw == r["target"]  # 5.0 is 4-bit in groups of 32
