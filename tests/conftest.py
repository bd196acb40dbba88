"""Shared fixtures: a tiny random Llama (fast, exact tests) and the real 135M model (slow tests)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_ASSETS = REPO.parent / "shared" / "assets"
if "HUMANIZER_ASSETS" not in os.environ and SHARED_ASSETS.exists():
    os.environ["HUMANIZER_ASSETS"] = str(SHARED_ASSETS)
os.environ.setdefault("HUMANIZER_PRESET", "smoke")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORKSHOP_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_CONFIG = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "vocab_size": 49152, "rope_theta": 10000.0, "tie_word_embeddings": True,
    "max_position_embeddings": 512,
}


def make_tiny_model(seed: int = 0, **overrides):
    """A random 2-block Llama with the real tokenizer's vocabulary, in fp32."""
    import mlx.core as mx
    from mlx_lm.models import llama

    mx.random.seed(seed)
    config = {**TINY_CONFIG, **overrides}
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    model.eval()
    return model, config


def save_tiny_dir(model, config, folder):
    """The tiny model as an mlx-lm model folder with a minimal tokenizer, for mlx_lm.load."""
    from mlx_lm.utils import save_config, save_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate("rewrite this text".split())}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        eos_token="<eos>")
    save_model(folder, model)
    save_config(dict(config), config_path=folder / "config.json")
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session", autouse=True)
def fast_kernels():
    """The test session starts as the notebooks and command-line tools do: with the faster CPU
    kernels where they apply (helpers/core/fast_cpu.py; loading a model does not install them)."""
    from helpers.core import fast_cpu

    fast_cpu.install()


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def workshop_model():
    """(model, tokenizer, config) of the real 135M model, kept quantized as stored (Q4_1)."""
    from helpers.core.models import load_model
    return load_model(WORKSHOP_MODEL, keep_quantized=True, return_config=True)


@pytest.fixture(scope="session")
def tokenizer(workshop_model):
    return workshop_model[1]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(cfg, Humanizer, model, run folder): runs/smoke/ in a temporary folder with an SFT and a DPO adapter
    (non-zero B, so each adapter changes the text) on the real smoke model, greedy, 12 tokens."""
    import mlx.core as mx

    from helpers.core import config as config_module
    from helpers.core.config import get_config
    from helpers.infer.humanizer import Humanizer
    from helpers.train.adapters import save_dpo_adapter, save_sft_adapter
    from helpers.train.base import load_base
    from helpers.train.lora import add_lora, lora_config, lora_layers
    from helpers.train.stacked import add_dpo_adapter

    def randomize_b(model, names, seed):
        mx.random.seed(seed)
        for _, layer in lora_layers(model):
            for name in names:
                setattr(layer, name, 0.02 * mx.random.normal(getattr(layer, name).shape))
        mx.eval(model.parameters())

    saved, config_module.RUNS_ROOT = config_module.RUNS_ROOT, tmp_path_factory.mktemp("runs")
    cfg = get_config("smoke", experiment="", gen_max_tokens=12, temperature=0.0)
    model, _ = load_base(cfg)
    add_lora(model, lora_config(cfg, "sft"), seed=0)
    randomize_b(model, ("lora_b",), seed=1)
    save_sft_adapter(model, cfg.path("adapters/sft"), lora_config(cfg, "sft"))
    add_dpo_adapter(model, lora_config(cfg, "dpo"), seed=2)
    randomize_b(model, ("dpo_b",), seed=3)
    save_dpo_adapter(model, cfg.path("adapters/dpo"), lora_config(cfg, "dpo"))
    humanizer, run_dir = Humanizer.load(cfg), cfg.runs_dir
    config_module.RUNS_ROOT = saved
    yield cfg, humanizer, humanizer.model, run_dir


def toy_rewrites(base_prefix: str = "") -> list[dict]:
    """Six rewrites.jsonl rows: drafts with a date and a sum, human texts that keep them, and
    systems that keep them (base, sft) or drop them (sft+dpo)."""
    return [{"id": f"r{i}", "domain": "News",
             "source": f"The council met on 3 May and spent {i}00 pounds.",
             "human": f"Council met May 3rd, spent {i}00 quid.",
             "outputs": {"base": f"{base_prefix}The council met on 3 May and spent {i}00 pounds.",
                         "sft": f"Council met 3 May, spent {i}00 pounds.",
                         "sft+dpo": "Council met, money went."}}
            for i in range(1, 7)]


def write_jsonl(path, rows):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class LengthDetector:
    """P(AI) grows with length: the source drafts are the longest texts of toy_rewrites."""

    def score(self, texts):
        import numpy as np

        return np.array([min(len(t) / 60, 1.0) for t in texts])


def toy_embedder(texts):
    import numpy as np

    return np.array([[len(t), t.count(" ") + 1.0] for t in texts])


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """An empty RUNS_ROOT, and no experiment from the environment."""
    from helpers.core import config

    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.delenv("HUMANIZER_EXPERIMENT", raising=False)
    return tmp_path / "runs"


def fresh_clone(folder: Path) -> Path:
    """A copy of the repository as a clone of the working tree would have it (tracked and
    untracked files that git does not ignore: no runs/, no .venv), in `folder`."""
    import shutil
    import subprocess

    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        if (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    return folder


def learner_env(clone: Path, **extra) -> dict:
    """The environment of a learner's shell in `clone`: no HUMANIZER_ASSETS unless given, the
    clone's own helpers first on the path (the notebooks' kernel inherits it), offline hub."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HUMANIZER_ASSETS", "HUMANIZER_EXPERIMENT", "HF_HOME", "HF_HUB_CACHE")}
    return {**env, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1", **extra}


def run_in(clone: Path, env: dict, *args: str, timeout: int = 600):
    """`python *args` in `clone`; the completed process (stdout and stderr together)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], cwd=clone, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
