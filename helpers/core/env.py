"""What machine are we on, and is MLX fast on it? (notebook 00 and the bench scripts)

MLX's Linux wheel bundles the reference BLAS, which is ~30x slower than OpenBLAS for fp32 matmuls.
The fix is to preload Debian's OpenBLAS before Python starts (the Makefile and the Jupyter kernel
do it); a running process cannot switch BLAS, so here we only detect and explain.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx

from helpers.core import fast_cpu

SLOW_GFLOPS = 40.0  # below this the bundled reference BLAS is almost surely in use


def openblas_path() -> str:
    return f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread/libblas.so.3"


def blas_fix_instructions() -> str:
    return ("sudo apt-get install -y libopenblas0-pthread   # once\n"
            f"export LD_PRELOAD={openblas_path()}   # before starting python / jupyter\n"
            "(`make lab`, `make run` and `make test` do both for you)")


def loaded_blas_libraries() -> list[str]:
    """Shared libraries with 'blas' in their name mapped into this process (Linux only)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    names = set()
    for line in maps.read_text().splitlines():
        path = line.split()[-1] if line.split() else ""
        if "blas" in Path(path).name.lower():
            names.add(path)
    return sorted(names)


def blas_in_use() -> str:
    """'openblas', 'accelerate' (macOS), 'reference' (MLX's bundled one) or 'unknown'."""
    if sys.platform == "darwin":
        return "accelerate"
    libs = loaded_blas_libraries()
    if any("openblas" in lib.lower() for lib in libs):
        return "openblas"
    if any("mlx_cpu.libs" in lib for lib in libs):
        return "reference"
    return "unknown"


@contextmanager
def torch_threads_beside_openblas():
    """Run torch's model forwards (MiniLM, RADAR) with one torch thread where OpenBLAS is
    preloaded. There torch's batched matmuls call OpenBLAS from each of torch's threads, and
    OpenBLAS starts its own threads inside each call: MiniLM embedded 5x slower with both pools
    on 2 cores (bench/torch_threads.py). Elsewhere (macOS, no preload) nothing changes."""
    if blas_in_use() != "openblas":
        yield
        return
    # deferred: torch is slow to import, and only the callers' paths need it
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def matmul_gflops(n: int = 1024, repeats: int = 5, dtype: str = "float32") -> float:
    """Measured n x n matmul speed on MLX's default device."""
    a = mx.random.normal((n, n)).astype(getattr(mx, dtype))
    b = mx.random.normal((n, n)).astype(getattr(mx, dtype))
    mx.eval(a @ b)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    seconds = (time.perf_counter() - start) / repeats
    return 2 * n**3 / seconds / 1e9


def report() -> dict:
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    import mlx_lm


    info = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu cores": os.cpu_count(),
        "mlx": mx.__version__,
        "mlx-lm": mlx_lm.__version__,
        "device": str(mx.default_device()),
        "blas": blas_in_use(),
        "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
        "HUMANIZER_ASSETS": os.environ.get("HUMANIZER_ASSETS", ""),
        "fp32 matmul GFLOP/s": round(matmul_gflops(), 1),
        "fast exp for softmax and SiLU (helpers/core/fast_cpu.py)": "on" if fast_cpu.wanted() else "off",
    }
    return info


def blas_warning(info: dict) -> str | None:
    """A warning with the exact fix when a Linux CPU runs MLX on a slow BLAS, else None."""
    if not info["platform"].startswith("Linux") or "gpu" in info["device"].lower():
        return None
    gflops = info["fp32 matmul GFLOP/s"]
    if info["blas"] == "openblas":
        if gflops >= SLOW_GFLOPS:
            return None
        return (f"OpenBLAS is in use but measured only {gflops} GFLOP/s: the CPU is probably busy "
                "with something else. Timings in this series will be slower than usual.")
    return (f"MLX is using the {info['blas']} BLAS at {gflops} GFLOP/s: training will be ~15x "
            "slower than it should. Fix:\n" + blas_fix_instructions())
