"""GPTQ: round a linear layer's weights so that its *outputs* move as little as possible.

A linear layer computes y = x Wᵀ. Round-to-nearest (RTN) rounds every weight on its own; the
output error on calibration inputs X (n, d_in) is

    ‖X Wᵀ − X Ŵᵀ‖² = Σ_rows (w − ŵ) H (w − ŵ)ᵀ,     H = XᵀX   (d_in × d_in),

so errors in columns whose inputs are correlated can cancel or add up. GPTQ rounds the columns
one at a time, left to right, and after rounding column j moves the columns not yet rounded
(F = j+1..) to absorb its error: for a fixed rounded column, the update that minimises the
quadratic above is the optimal-brain-surgeon step

    w_F ← w_F − (w_j − ŵ_j) · (H⁻¹)_{j,F} / (H⁻¹)_{jj}     (H⁻¹ of the columns j.. only).

All these shrinking inverses are rows of one matrix: the upper Cholesky factor U of H⁻¹
(H⁻¹ = UᵀU) gives, row j, (H⁻¹_{j..})_{j,F} / (H⁻¹_{j..})_{jj} = U_{j,F} / U_{jj}. Damping
(H + λ·mean(diag H)·I) keeps H invertible when there are fewer tokens than inputs.

Storage. Each group of `group_size` columns gets one scale and one bias, computed like MLX's
affine quantization (`mx.quantize`) on the columns as they are when the group is reached (after
the earlier groups' error feedback) and rounded to float16 before any column is rounded, so the
result is exactly MLX's (weight, scales, biases): `mx.dequantize(*stored) == dequantized`.
Differs from mlx-lm's gptq (which packs 2/4/8 bits only and keeps the model's dtype for the
scales): any bit-width MLX supports, float16 scales, float64 numpy on the CPU.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten
from scipy.linalg import solve_triangular

SCALE_DTYPE = mx.float16  # as helpers/quant/units.py stores scales and biases


def inverse_hessian_factor(hessian: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """U, upper triangular with UᵀU = (H + damp·mean(diag H)·I)⁻¹. Inputs that never fire (zero
    diagonal) get a unit diagonal: their columns then take no error from the others."""
    h = np.array(hessian, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"hessian must be square, got shape {h.shape}")
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    # with J the reversal, J H J = L Lᵀ gives H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J), and J L⁻¹ J is upper
    # triangular: one Cholesky and one triangular solve instead of inverting H

    lower = np.linalg.cholesky(h[::-1, ::-1])
    inverse = solve_triangular(lower, np.eye(len(h)), lower=True)
    return np.ascontiguousarray(inverse[::-1, ::-1])


def group_scales(columns: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(scales, biases), one per row, as MLX's affine quantization picks them for this group,
    rounded to their stored float16 and returned in float32."""
    _, scales, biases = mx.quantize(mx.array(columns.astype(np.float32)), group_size=columns.shape[1],
                                    bits=bits)
    as_stored = lambda a: np.array(a.astype(SCALE_DTYPE).astype(mx.float32))[:, 0]  # noqa: E731
    return as_stored(scales), as_stored(biases)


def pack(levels: np.ndarray, bits: int) -> np.ndarray:
    """MLX's packed layout: each row's integer levels as one little-endian bit stream, read as
    uint32 words (so 3-, 5- and 6-bit values straddle word boundaries)."""
    rows, cols = levels.shape
    if cols % 32 or not 1 <= bits <= 8:
        raise ValueError(f"{cols} columns of {bits} bits: packing needs a multiple of 32 columns "
                         "and MLX's 1..8 bits")
    # 32 levels fill exactly `bits` words, level k of a group starting at bit k * bits
    groups = levels.astype(np.uint64).reshape(rows, cols // 32, 32)
    words = np.zeros((rows, cols // 32, bits + 1), dtype=np.uint64)
    for k in range(32):
        word, shift = divmod(k * bits, 32)
        words[:, :, word] += groups[:, :, k] << np.uint64(shift)
    low = words & np.uint64(0xFFFFFFFF)
    low[:, :, 1:] += words[:, :, :-1] >> np.uint64(32)  # what straddled into the next word
    return low[:, :, :bits].astype(np.uint32).reshape(rows, -1)


def gptq_quantize(weight, hessian, bits: int, group_size: int, damp: float = 0.01,
                  factor=None) -> dict:
    """GPTQ-round `weight` (out, in) given the input Hessian (in, in). Returns the stored arrays
    "weight" (packed uint32), "scales", "biases" (float16), ready for mx.dequantize, and
    "dequantized": the float32 matrix they decode to. `factor`: inverse_hessian_factor(hessian,
    damp) when already computed (it depends on neither the bits nor the weights)."""
    # transposed, (in, out): a column of the weight is a contiguous row, and the loop below
    # reads and updates columns (1.3-1.6x faster here than strided access, same result)
    w = np.array(weight, dtype=np.float64).T.copy()
    cols, rows = w.shape
    if cols % group_size:
        raise ValueError(f"input size {cols} is not a multiple of group_size {group_size}")
    if np.shape(hessian) != (cols, cols):
        raise ValueError(f"hessian shape {np.shape(hessian)} does not match input size {cols}")
    u = inverse_hessian_factor(hessian, damp) if factor is None else factor
    top = 2 ** bits - 1
    levels = np.zeros((cols, rows), dtype=np.int64)
    scales, biases = [], []
    for start in range(0, cols, group_size):
        end = start + group_size
        scale, bias = group_scales(w[start:end].T, bits)
        errors = np.zeros((group_size, rows))
        feedback = u[start:end, start:end].T.copy()  # row k: what columns start.. pass to start+k
        for k, j in enumerate(range(start, end)):
            # the group's earlier errors reach column j only when it is rounded: one product
            # here instead of updating every later column of the group at each step (3x faster)
            column = w[j] - feedback[k, :k] @ errors[:k] if k else w[j]
            level = np.clip(np.rint((column.astype(np.float32) - bias) / scale), 0, top)
            errors[k] = (column - (scale * level + bias)) / u[j, j]
            levels[j] = level
        w[end:] -= u[start:end, end:].T @ errors  # the later groups' share, in one product
        scales.append(scale)
        biases.append(bias)
    levels = levels.T
    scales, biases = np.stack(scales, 1).astype(np.float32), np.stack(biases, 1).astype(np.float32)
    dequantized = (np.repeat(scales, group_size, 1) * levels.astype(np.float32)
                   + np.repeat(biases, group_size, 1))
    return {"weight": mx.array(pack(levels, bits)),
            "scales": mx.array(scales).astype(SCALE_DTYPE),
            "biases": mx.array(biases).astype(SCALE_DTYPE),
            "dequantized": mx.array(dequantized.astype(np.float32))}


def rtn_quantize(weight, bits: int, group_size: int) -> dict:
    """Round-to-nearest with the same storage: MLX's own quantization, float16 scales."""
    q, scales, biases = mx.quantize(mx.array(weight), group_size=group_size, bits=bits)
    scales, biases = scales.astype(SCALE_DTYPE), biases.astype(SCALE_DTYPE)
    deq = mx.dequantize(q, scales.astype(mx.float32), biases.astype(mx.float32),
                        group_size=group_size, bits=bits)
    return {"weight": q, "scales": scales, "biases": biases, "dequantized": deq}


def output_error(x, weight, approx) -> float:
    """‖X Wᵀ − X Ŵᵀ‖² (Frobenius), the quantity GPTQ minimises."""
    x = np.asarray(x, np.float64)
    return float(np.sum(np.square(x @ (np.asarray(weight, np.float64)
                                        - np.asarray(approx, np.float64)).T)))


class _Inputs:
    """What the catchers share: the Gram sums, and the last input seen, so that layers reading
    the same input (q/k/v, gate/up) share one sum instead of computing it again."""

    def __init__(self):
        self.sums, self.twin_of, self.last = {}, {}, (None, None)

    def add(self, path: str, x: mx.array) -> None:
        """Add xᵀx of these rows to path's sum, in MLX, lazily: numpy's own BLAS threads would
        fight MLX's for the cores."""
        flat = x.reshape(-1, x.shape[-1]).astype(mx.float32)
        gram = flat.T @ flat
        self.sums[path] = gram if path not in self.sums else self.sums[path] + gram


class _HessianCatcher(nn.Module):
    """Wraps a linear layer and adds xᵀx of every input it sees to a running sum."""

    def __init__(self, module, path: str, inputs: _Inputs):
        super().__init__()
        self.module, self.path, self.inputs = module, path, inputs

    def __call__(self, x):
        last_x, last_path = self.inputs.last
        if last_x is x:  # a sibling read this very input: share its sum
            self.inputs.twin_of[self.path] = last_path
        else:
            self.inputs.add(self.path, x)
            self.inputs.last = (x, self.path)
        return self.module(x)


class _OutputCatcher(nn.Module):
    """Wraps the final norm of a model with tied embeddings: its output is the input of the
    output layer (the embedding matrix used as a linear layer), whose xᵀx it adds under `path`."""

    def __init__(self, module, path: str, inputs: _Inputs):
        super().__init__()
        self.module, self.path, self.inputs = module, path, inputs

    def __call__(self, x):
        y = self.module(x)
        self.inputs.add(self.path, y)
        return y


def _nested(flat: dict) -> dict:
    return tree_unflatten(list(flat.items()))


TIED_OUTPUT = "model.embed_tokens"  # with tied embeddings, also the output layer


def ties_embeddings(model: nn.Module) -> bool:
    return not hasattr(model, "lm_head") and hasattr(model.model, "embed_tokens")


def layer_hessians(model: nn.Module, tokens: mx.array, paths, batch_rows: int = 8) -> dict:
    """{path: H = XᵀX} (float32) of the inputs each nn.Linear in `paths` sees while the
    (unquantized) model reads `tokens` (rows, length), accumulated over batches of rows. Layers
    that read the same input get the same array. With tied embeddings, `paths` may hold
    TIED_OUTPUT: its H is that of the final norm's output, what the output layer reads."""
    paths = list(paths)
    modules = dict(model.named_modules())
    tied = TIED_OUTPUT in paths and ties_embeddings(model)
    linear = [p for p in paths if not (tied and p == TIED_OUTPUT)]
    wrong = [p for p in linear if not isinstance(modules.get(p), nn.Linear)]
    if wrong:
        raise ValueError(f"GPTQ needs nn.Linear layers (or the tied output layer); not one: "
                         f"{wrong[:3]}")
    inputs = _Inputs()
    wrapped = {p: _HessianCatcher(modules[p], p, inputs) for p in linear}
    if tied:
        wrapped["model.norm"] = _OutputCatcher(modules["model.norm"], TIED_OUTPUT, inputs)
    model.update_modules(_nested(wrapped))
    try:
        for i in range(0, tokens.shape[0], batch_rows):
            mx.eval(model(tokens[i:i + batch_rows]), inputs.sums)
            inputs.last = (None, None)
    finally:
        model.update_modules(_nested({p: modules[p] for p in wrapped}))
    sums = {p: np.array(h) for p, h in inputs.sums.items()}
    return {p: sums[inputs.twin_of.get(p, p)] for p in paths}
