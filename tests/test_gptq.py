"""GPTQ on tiny matrices: exact storage, no feedback without correlation, lower output error."""
import mlx.core as mx
import numpy as np
import pytest

from helpers.quant import gptq
from helpers.quant.units import stored_bits

from conftest import make_tiny_model


def correlated_inputs(n=256, d=64, rank=4, noise=0.05, seed=0):
    """Inputs that live near a `rank`-dimensional subspace: columns strongly correlated."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) \
        + noise * rng.standard_normal((n, d))


def random_weight(rows=16, cols=64, seed=1):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64])
def test_stored_arrays_decode_exactly_to_the_gptq_weights(bits, group_size):
    x, w = correlated_inputs(d=128), random_weight(cols=128)
    out = gptq.gptq_quantize(w, x.T @ x, bits, group_size)
    q, scales, biases = mx.quantize(mx.array(w), group_size=group_size, bits=bits)
    assert out["weight"].shape == q.shape and out["weight"].dtype == mx.uint32
    assert out["scales"].shape == scales.shape and out["scales"].dtype == mx.float16
    decoded = mx.dequantize(out["weight"], out["scales"].astype(mx.float32),
                            out["biases"].astype(mx.float32), group_size=group_size, bits=bits)
    np.testing.assert_array_equal(np.array(decoded), np.array(out["dequantized"]))
    # and it costs exactly the bits the accounting says
    nbytes = out["weight"].nbytes + out["scales"].nbytes + out["biases"].nbytes
    assert 8 * nbytes == stored_bits(w.shape, bits, group_size)


def textbook_gptq_levels(w, hessian, bits, group_size):
    """The update as the module docstring states it: after each column, every later column moves."""
    w, u, top = w.astype(np.float64).copy(), gptq.inverse_hessian_factor(hessian), 2 ** bits - 1
    levels = np.zeros(w.shape, np.int64)
    for j in range(w.shape[1]):
        if j % group_size == 0:
            scale, bias = gptq.group_scales(w[:, j:j + group_size], bits)
        levels[:, j] = np.clip(np.rint((w[:, j].astype(np.float32) - bias) / scale), 0, top)
        err = (w[:, j] - (scale * levels[:, j] + bias)) / u[j, j]
        w[:, j:] -= np.outer(err, u[j, j:])
    return levels


@pytest.mark.parametrize("bits", [3, 4])
def test_deferred_feedback_rounds_like_the_textbook_update(bits):
    x, w = correlated_inputs(d=128), random_weight(rows=8, cols=128)
    out = gptq.gptq_quantize(w, x.T @ x, bits, 32)
    np.testing.assert_array_equal(np.array(out["weight"]),
                                  gptq.pack(textbook_gptq_levels(w, x.T @ x, bits, 32), bits))


def test_uncorrelated_inputs_mean_plain_rounding_on_the_stored_grid():
    """With a diagonal Hessian no column can absorb another's error: every weight is rounded
    to its nearest level of the float16 grid, as round-to-nearest does."""
    w = random_weight()
    diag = np.diag(np.random.default_rng(2).uniform(0.5, 2.0, 64))
    out = gptq.gptq_quantize(w, diag, 4, 32)
    scales = np.repeat(np.array(out["scales"].astype(mx.float32)), 32, 1)
    biases = np.repeat(np.array(out["biases"].astype(mx.float32)), 32, 1)
    nearest = scales * np.clip(np.rint((w - biases) / scales), 0, 15) + biases
    np.testing.assert_array_equal(np.array(out["dequantized"]), nearest.astype(np.float32))
    rtn = gptq.rtn_quantize(w, 4, 32)
    np.testing.assert_array_equal(np.array(out["scales"]), np.array(rtn["scales"]))


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_weights_already_on_the_grid_come_back_unchanged(bits):
    top = 2 ** bits - 1
    levels = np.random.default_rng(3).integers(0, top + 1, (8, 64))
    levels[:, [0, 32]], levels[:, [1, 33]] = 0, top  # each group spans its whole range
    w = (2.0 ** -5 * levels - 0.375).astype(np.float32)  # float16-exact scale and bias
    x = correlated_inputs()
    out = gptq.gptq_quantize(w, x.T @ x, bits, 32)
    np.testing.assert_array_equal(np.array(out["dequantized"]), w)


@pytest.mark.parametrize("bits", [3, 4, 6])
def test_output_error_no_worse_than_rounding_on_correlated_inputs(bits):
    x, w = correlated_inputs(), random_weight()
    ours = gptq.output_error(x, w, gptq.gptq_quantize(w, x.T @ x, bits, 32)["dequantized"])
    rtn = gptq.output_error(x, w, gptq.rtn_quantize(w, bits, 32)["dequantized"])
    assert ours <= rtn
    # the crafted case: inputs near a 4-dimensional subspace leave 60 directions free to absorb
    # the rounding error, so the outputs barely move
    assert ours < 0.1 * rtn


def test_output_error_is_the_hessian_quadratic_form():
    x, w = correlated_inputs(n=32, d=32), random_weight(rows=3, cols=32)
    w_hat = gptq.rtn_quantize(w, 3, 32)["dequantized"]
    delta = (w - np.array(w_hat)).astype(np.float64)
    assert gptq.output_error(x, w, w_hat) == pytest.approx(
        float(np.trace(delta @ (x.T @ x) @ delta.T)), rel=1e-9)


def test_inverse_hessian_factor_is_the_upper_cholesky_of_the_damped_inverse():
    x = correlated_inputs(n=16, d=8)
    h = x.T @ x
    u = gptq.inverse_hessian_factor(h, damp=0.1)
    damped = h + 0.1 * np.mean(np.diag(h)) * np.eye(8)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-8, atol=1e-12)
    assert np.allclose(u, np.triu(u))
    h[3, :], h[:, 3] = 0, 0  # an input that never fires: no error flows through it
    u = gptq.inverse_hessian_factor(h)
    assert np.all(u[3, 4:] == 0) and np.all(np.isfinite(u))


def test_bad_shapes_are_named():
    w = random_weight(cols=64)
    with pytest.raises(ValueError, match="multiple of group_size"):
        gptq.gptq_quantize(w[:, :48], np.eye(48), 4, 32)
    with pytest.raises(ValueError, match="does not match input size"):
        gptq.gptq_quantize(w, np.eye(32), 4, 32)


def test_layer_hessians_are_the_inputs_gram_matrix_and_the_model_is_restored():
    model, _ = make_tiny_model()
    tokens = mx.random.randint(0, 49152, (3, 10), key=mx.random.key(0))
    before = model(tokens)
    paths = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    hessians = gptq.layer_hessians(model, tokens, paths, batch_rows=2)
    block = model.layers[0]
    x = block.input_layernorm(model.model.embed_tokens(tokens)).reshape(-1, 64)
    x = np.array(x, dtype=np.float64)
    np.testing.assert_allclose(hessians[paths[0]], x.T @ x, rtol=1e-5, atol=1e-6)
    assert hessians[paths[1]].shape == (128, 128)
    assert type(model.layers[0].self_attn.q_proj).__name__ == "Linear"
    np.testing.assert_array_equal(np.array(model(tokens)), np.array(before))
    with pytest.raises(ValueError, match="nn.Linear"):
        gptq.layer_hessians(model, tokens, ["model.norm"])


def test_a_tied_embeddings_hessian_is_that_of_the_final_norms_output():
    model, _ = make_tiny_model()  # tied: the embedding is also the output layer
    tokens = mx.random.randint(0, 49152, (3, 10), key=mx.random.key(1))
    before = model(tokens)
    hessians = gptq.layer_hessians(model, tokens, [gptq.TIED_OUTPUT], batch_rows=2)
    x = np.array(model.model(tokens).reshape(-1, 64), dtype=np.float64)  # what the head reads
    np.testing.assert_allclose(hessians[gptq.TIED_OUTPUT], x.T @ x, rtol=1e-5, atol=1e-5)
    assert type(model.model.norm).__name__ == "RMSNorm"
    np.testing.assert_array_equal(np.array(model(tokens)), np.array(before))
    untied, _ = make_tiny_model(tie_word_embeddings=False)
    with pytest.raises(ValueError, match="nn.Linear"):  # untied, it is a lookup table only
        gptq.layer_hessians(untied, tokens, [gptq.TIED_OUTPUT])


def test_layers_reading_the_same_input_share_one_hessian():
    model, _ = make_tiny_model()
    tokens = mx.random.randint(0, 49152, (2, 8), key=mx.random.key(1))
    attn = [f"model.layers.1.self_attn.{n}_proj" for n in "qkv"]
    hessians = gptq.layer_hessians(model, tokens, attn + ["model.layers.1.self_attn.o_proj"])
    assert hessians[attn[0]] is hessians[attn[1]] is hessians[attn[2]]
    assert not np.allclose(hessians[attn[0]], hessians["model.layers.1.self_attn.o_proj"])


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_packed_levels_decode_to_themselves_through_mlx(bits):
    levels = np.random.default_rng(bits).integers(0, 2 ** bits, size=(3, 64))
    ones, zeros = mx.ones((3, 2), dtype=mx.float16), mx.zeros((3, 2), dtype=mx.float16)
    decoded = mx.dequantize(mx.array(gptq.pack(levels, bits)), ones, zeros, group_size=32,
                            bits=bits)
    assert np.array_equal(np.array(decoded), levels)
