"""fast_cpu: exp from multiply-adds, softmax and SwiGLU on it, grouped-query attention, swapped
into mlx-lm's llama."""
from __future__ import annotations

import math
import warnings

import mlx.core as mx
import pytest
from mlx_lm.models import activations, base, llama

from helpers.core import fast_cpu

from conftest import make_tiny_model


@pytest.fixture(autouse=True)
def fast_for_every_size(monkeypatch):
    monkeypatch.setattr(fast_cpu, "FAST_FROM", 0)  # tiny test arrays take the fast path too

MIN = float(mx.finfo(mx.float32).min)


@pytest.fixture(autouse=True)
def restore_kernels():
    before = llama.swiglu, llama.scaled_dot_product_attention
    yield
    llama.swiglu, llama.scaled_dot_product_attention = before


def close(a, b, tol=1e-5):
    return mx.abs(a - b).max().item() <= tol


def test_exp_matches_mlx_to_float32_rounding_and_at_the_ends():
    x = mx.concatenate([mx.linspace(-87, 88, 20001), mx.array([-1e30, 1e30])])
    ours, theirs = fast_cpu.exp(x), mx.exp(x)
    relative = mx.abs(ours - theirs) / mx.maximum(theirs, 1e-30)
    assert relative[:-2].max().item() < 2e-6
    assert fast_cpu.exp(mx.array([-mx.inf, -100.0, 0.0, 1.0])).tolist() == [0.0, 0.0, 1.0,
                                                                          pytest.approx(math.e)]
    assert fast_cpu.exp(mx.array([89.0, mx.inf])).tolist() == [math.inf, math.inf]
    assert math.isnan(fast_cpu.exp(mx.array([math.nan])).item())


def test_softmax_matches_mlx_with_masked_entries_and_rows():
    x = mx.array([[1.0, 2.0, 3.0], [0.5, MIN, -1.0], [MIN, MIN, MIN], [-100.0, 0.0, 100.0]])
    ours = fast_cpu.softmax(x)
    assert close(ours, mx.softmax(x, axis=-1), 1e-7)
    assert ours[2].tolist() == pytest.approx([1 / 3] * 3)  # fully masked: uniform, not NaN
    assert ours[1, 1].item() == 0.0


def test_softmax_gradient_matches_mlx():
    x, w = mx.random.normal((3, 6), key=mx.random.key(1)), mx.arange(6.0)
    ours = mx.grad(lambda x: (fast_cpu.softmax(2 * x) * w).sum())(x)
    theirs = mx.grad(lambda x: (mx.softmax(2 * x, axis=-1) * w).sum())(x)
    assert close(ours, theirs, 1e-6)


def test_swiglu_is_silu_times_up_even_far_out():
    gate = mx.array([-200.0, -30.0, -1.0, 0.0, 0.5, 3.0, 90.0])
    up = mx.array([2.0, 1.0, -1.0, 5.0, 2.0, 1.0, -1.0])
    with warnings.catch_warnings():  # exp(200) overflows to inf: no warning, no NaN
        warnings.simplefilter("error")
        ours = fast_cpu.swiglu(gate, up)
    assert close(ours, nn_silu(gate) * up, 1e-5)
    assert ours[0].item() == 0.0 and ours[-1].item() == pytest.approx(-90.0)


def nn_silu(x):
    return x * mx.sigmoid(x)


def test_swiglu_gradients_match_mlx():
    gate, up = 4 * mx.random.normal((2, 3, 5), key=mx.random.key(2)), mx.random.normal((2, 3, 5))
    w = mx.arange(5.0)
    ours = mx.grad(lambda g, u: (fast_cpu.swiglu(g, u) * w).sum(), argnums=(0, 1))(gate, up)
    theirs = mx.grad(lambda g, u: (activations.swiglu(g, u) * w).sum(), argnums=(0, 1))(gate, up)
    assert all(close(a, b, 1e-5) for a, b in zip(ours, theirs))


def test_swiglu_leaves_other_dtypes_and_small_arrays_to_mlx_lm(monkeypatch):
    gate = mx.array([1.0, -2.0], dtype=mx.float16)
    assert fast_cpu.swiglu(gate, gate).dtype == mx.float16
    monkeypatch.setattr(fast_cpu, "_swiglu", None)  # the fast path would fail now
    monkeypatch.setattr(fast_cpu, "FAST_FROM", 3)
    assert close(fast_cpu.swiglu(mx.array([1.0, -2.0]), mx.array([2.0, 1.0])),
                 activations.swiglu(mx.array([1.0, -2.0]), mx.array([2.0, 1.0])), 1e-7)


def masks(b, h, q_len, k_len):
    key = mx.random.key(3)
    return [None, "causal", mx.random.uniform(shape=(b, 1, q_len, k_len), key=key) > 0.3,
            mx.random.normal((b, h, q_len, k_len), key=key), mx.zeros((b, 1, q_len, k_len), mx.bool_)]


@pytest.mark.parametrize("q_len,k_len", [(5, 5), (1, 12), (3, 8)])
def test_attention_matches_mlx_for_grouped_heads_and_every_mask(q_len, k_len):
    b, heads, kv_heads, dim = 2, 6, 2, 8
    q = mx.random.normal((b, heads, q_len, dim), key=mx.random.key(4))
    k = mx.random.normal((b, kv_heads, k_len, dim), key=mx.random.key(5))
    v = mx.random.normal((b, kv_heads, k_len, dim), key=mx.random.key(6))
    for mask in masks(b, heads, q_len, k_len):
        ours = fast_cpu.scaled_dot_product_attention(q, k, v, None, scale=0.3, mask=mask)
        theirs = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
        assert ours.shape == (b, heads, q_len, dim)
        assert close(ours, theirs, 1e-5), mask


def test_attention_gradients_match_mlx():
    q = mx.random.normal((1, 4, 3, 8), key=mx.random.key(7))
    kv = mx.random.normal((1, 2, 3, 8), key=mx.random.key(8))

    def loss(attention):
        return lambda q, kv: (attention(q, kv, kv, None, scale=0.5, mask="causal") ** 2).sum()

    theirs_fn = lambda q, k, v, cache, scale, mask: mx.fast.scaled_dot_product_attention(
        q, k, v, scale=scale, mask=mask)
    ours = mx.grad(loss(fast_cpu.scaled_dot_product_attention), argnums=(0, 1))(q, kv)
    theirs = mx.grad(loss(theirs_fn), argnums=(0, 1))(q, kv)
    assert all(close(a, b, 1e-5) for a, b in zip(ours, theirs))


def test_installed_model_gives_the_stock_logits_and_uninstalls():
    model, _ = make_tiny_model()
    tokens = mx.array([[5, 17, 300, 9000, 42, 7, 7, 123]])
    fast_cpu.uninstall()
    stock = model(tokens)
    assert fast_cpu.install(force=True)
    assert llama.scaled_dot_product_attention is fast_cpu.scaled_dot_product_attention
    assert close(model(tokens), stock, 1e-5)
    fast_cpu.uninstall()
    assert llama.swiglu is activations.swiglu
    assert llama.scaled_dot_product_attention is base.scaled_dot_product_attention


def test_off_switch(monkeypatch):
    monkeypatch.setenv("HUMANIZER_FAST_CPU", "0")
    fast_cpu.uninstall()
    assert not fast_cpu.install()
    assert llama.swiglu is activations.swiglu


def test_compiled_training_on_the_fast_kernels_follows_the_stock_losses(tmp_path):
    from test_train import run_training, train_losses

    from helpers.core.config import get_config

    cfg = get_config("smoke", lora_layers=-1, lora_rank=4)
    fast_cpu.uninstall()
    _, stock = run_training(cfg, tmp_path / "stock", steps=3)
    fast_cpu.install(force=True)
    _, fast = run_training(cfg, tmp_path / "fast", steps=3)
    assert train_losses(fast) == pytest.approx(train_losses(stock), rel=1e-4)
    assert train_losses(fast) != train_losses(stock)  # the fast kernels really ran


def test_numpy_path_eagerly_and_the_mlx_path_under_compile_agree(monkeypatch):
    monkeypatch.setattr(fast_cpu, "NUMPY_FROM", 0)  # every array may go through numpy
    x = 3 * mx.random.normal((4, 7), key=mx.random.key(9))
    up = mx.random.normal((4, 7), key=mx.random.key(10))
    eager = fast_cpu.softmax(x), fast_cpu.swiglu(x, up)
    assert fast_cpu._numpy_now(x) is not None
    compiled = mx.compile(lambda x, up: (fast_cpu.softmax(x), fast_cpu.swiglu(x, up)))(x, up)
    for ours, theirs in zip(eager, (mx.softmax(x, axis=-1), activations.swiglu(x, up))):
        assert close(ours, theirs, 1e-6)
    assert all(close(a, b, 1e-6) for a, b in zip(eager, compiled))
    grad = mx.grad(lambda g, u: (fast_cpu.swiglu(g, u) * fast_cpu.softmax(g)).sum(), argnums=(0, 1))
    assert all(close(a, b, 1e-5) for a, b in zip(grad(x, up), mx.compile(grad)(x, up)))


def test_numpy_path_is_taken_only_for_big_arrays_outside_compile():
    big = mx.zeros((fast_cpu.NUMPY_FROM,))
    assert fast_cpu._numpy_now(big) is not None
    assert fast_cpu._numpy_now(big[:-1]) is None
    seen = []
    mx.compile(lambda x: seen.append(fast_cpu._numpy_now(x)) or x)(big)
    assert seen == [None]


def test_cross_entropy_and_its_gradient_match_mlx_eagerly_and_compiled(monkeypatch):
    import mlx.nn as nn
    logits = 4 * mx.random.normal((2, 3, 50), key=mx.random.key(2))
    targets = mx.array([[0, 7, 49], [3, 3, 11]])
    weights = mx.arange(6.0).reshape(2, 3)

    def loss(f):
        return lambda x: (f(x, targets) * weights).sum()

    theirs = nn.losses.cross_entropy(logits, targets)
    theirs_grad = mx.grad(loss(nn.losses.cross_entropy))(logits)
    fast_cpu.install(force=True)
    for numpy_from in (0, 1 << 30):  # numpy's exp eagerly, then the MLX exp
        monkeypatch.setattr(fast_cpu, "NUMPY_FROM", numpy_from)
        assert close(fast_cpu.cross_entropy(logits, targets), theirs)
        assert close(mx.grad(loss(fast_cpu.cross_entropy))(logits), theirs_grad, 1e-6)
    monkeypatch.setattr(fast_cpu, "NUMPY_FROM", 0)  # compiled: numpy cannot run, MLX's exp does
    compiled = mx.compile(mx.grad(loss(fast_cpu.cross_entropy)))
    assert close(compiled(logits), theirs_grad, 1e-6)
    assert close(mx.compile(fast_cpu.cross_entropy)(logits, targets), theirs)


def test_cross_entropy_takes_the_fast_exp_only_while_installed(monkeypatch):
    calls = []
    original = fast_cpu._exp_of
    monkeypatch.setattr(fast_cpu, "_exp_of", lambda x: calls.append(x.shape) or original(x))
    logits, targets = mx.zeros((1, 2, 8)), mx.array([[1, 2]])
    fast_cpu.uninstall()
    mx.eval(fast_cpu.cross_entropy(logits, targets))
    assert calls == []
    fast_cpu.install(force=True)
    assert fast_cpu.cross_entropy(logits, targets).tolist() == [[pytest.approx(math.log(8))] * 2]
    assert calls == [(1, 2, 8)]


# ---------------------------------------------------------------- installed once, where a process starts

FRESH_PROCESS = """
import json, sys
from mlx_lm.models import activations, base, llama
from helpers.core import fast_cpu
from helpers.core.models import load_model
model, _ = load_model(sys.argv[1])
stock = (llama.swiglu is activations.swiglu
         and llama.scaled_dot_product_attention is base.scaled_dot_product_attention)
print(json.dumps({"stock after loading": stock, "wanted": fast_cpu.wanted(),
                  "install": fast_cpu.install(), "installed": fast_cpu.installed(),
                  "install again": fast_cpu.install(), "still": fast_cpu.installed()}))
"""


def test_loading_a_model_leaves_mlx_lm_alone_until_install_is_called(tmp_path):
    import json
    import os
    import platform
    import subprocess
    import sys

    from conftest import REPO, save_tiny_dir

    folder = save_tiny_dir(*make_tiny_model(), tmp_path / "tiny")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HUMANIZER_FAST_CPU": "1"}
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    on_linux_cpu = platform.system() == "Linux" and mx.default_device() == mx.cpu
    assert got == {"stock after loading": True, "wanted": on_linux_cpu, "install": on_linux_cpu,
                   "installed": on_linux_cpu, "install again": on_linux_cpu, "still": on_linux_cpu}


def test_the_test_session_runs_on_the_kernels_a_process_start_installs():
    assert fast_cpu.installed() == fast_cpu.wanted()  # tests/conftest.py's fast_kernels


# scripts that read text alone: no model runs in them, so there is nothing for the kernels to speed
TEXT_ONLY = {"calibrate_restatement.py"}


def entry_points() -> list:
    from conftest import REPO

    tools = [REPO / "helpers" / "tools" / f"{name}.py" for name in ("rewrite_files", "serve", "export")]
    scripts = sorted((REPO / "experiments").glob("*.py")) + sorted((REPO / "bench").glob("*.py"))
    return tools + [p for p in scripts if p.name not in TEXT_ONLY]


def test_text_only_scripts_run_no_model():
    from conftest import REPO

    for name in TEXT_ONLY:
        source = (REPO / "experiments" / name).read_text(encoding="utf-8")
        assert "mlx" not in source and "load_model" not in source and "Humanizer" not in source


@pytest.mark.parametrize("path", entry_points(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_command_line_entry_point_installs_the_kernels_in_its_main(path):
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    [main] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert [n for n in ast.walk(main) if isinstance(n, ast.Call)
            and ast.unparse(n.func) == "fast_cpu.install" and not n.args and not n.keywords], \
        f"{path.name}: main() does not call fast_cpu.install()"


def test_every_notebook_installs_the_kernels_in_its_setup_cell():
    import nbformat

    from conftest import REPO

    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        setup = next(s for s in cells if "cfg = get_config(" in s)  # before any model loads
        assert "fast_cpu.install()  # " in setup, f"{path.name}: the config cell does not install"
