from helpers.core import env

LINUX = {"platform": "Linux x86_64", "device": "Device(cpu, 0)"}


def test_warns_with_the_fix_on_reference_blas():
    message = env.blas_warning({**LINUX, "blas": "reference", "fp32 matmul GFLOP/s": 8.0})
    assert "LD_PRELOAD=" in message and "libopenblas0-pthread" in message


def test_no_warning_when_openblas_is_fast_or_on_macos():
    assert env.blas_warning({**LINUX, "blas": "openblas", "fp32 matmul GFLOP/s": 240.0}) is None
    mac = {"platform": "Darwin arm64", "device": "Device(gpu, 0)", "blas": "accelerate",
           "fp32 matmul GFLOP/s": 1000.0}
    assert env.blas_warning(mac) is None


def test_busy_openblas_is_not_blamed_on_blas():
    message = env.blas_warning({**LINUX, "blas": "openblas", "fp32 matmul GFLOP/s": 10.0})
    assert "busy" in message and "LD_PRELOAD" not in message


def test_matmul_gflops_is_positive():
    assert env.matmul_gflops(n=128, repeats=2) > 0


def test_torch_gets_one_thread_beside_openblas_and_its_own_count_back(monkeypatch):
    import torch
    before = torch.get_num_threads()
    monkeypatch.setattr(env, "blas_in_use", lambda: "openblas")
    with env.torch_threads_beside_openblas():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_torch_threads_are_left_alone_without_openblas(monkeypatch):
    import torch
    before = torch.get_num_threads()
    monkeypatch.setattr(env, "blas_in_use", lambda: "accelerate")
    with env.torch_threads_beside_openblas():
        assert torch.get_num_threads() == before
