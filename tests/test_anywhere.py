"""A learner anywhere: a fresh clone runs with nothing but a standard Hugging Face hub cache (what
an online user's first run leaves behind), never this project's offline copies. The cache holds
SmolLM2-135M-Instruct as plain safetensors, as the hub serves it, and all-MiniLM-L6-v2; the data
come with the repository."""
import json
import os
from pathlib import Path

import pytest

from helpers.core.models import ASSET_PATHS

from conftest import WORKSHOP_MODEL, fresh_clone, learner_env, run_in
from hub_cache import add_repo, folder_files, gguf_as_hub_folder

EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory):
    """HF_HOME with the two models the smoke and workshop presets need, built from the offline
    copies (HUMANIZER_ASSETS, set by conftest) in the hub's own layout."""
    assets = Path(os.environ["HUMANIZER_ASSETS"])
    home = tmp_path_factory.mktemp("hf_home")
    smol = gguf_as_hub_folder(assets / ASSET_PATHS[WORKSHOP_MODEL], home.parent / "smol-hub-files")
    add_repo(home, WORKSHOP_MODEL, folder_files(smol))
    add_repo(home, EMBEDDER, folder_files(assets / ASSET_PATHS[EMBEDDER]))
    return home


def test_notebook_01_runs_from_a_hub_cache_alone(hub_home, tmp_path):
    """The data and the embedder from the hub cache (the models' loading from it is the test
    below; notebook 00 from an offline pack is tests/test_assets.py's)."""
    clone = fresh_clone(tmp_path / "clone")
    env = learner_env(clone, HF_HOME=str(hub_home))
    done = run_in(clone, env, "-m", "helpers.tools.series", "--preset", "smoke", "--only", "01")
    assert done.returncode == 0, done.stdout[-3000:]
    report = json.loads((clone / "runs/smoke/data/report.json").read_text())
    assert report["train_file"].startswith(str(clone / "data"))  # the clone's own data
    assert (clone / "runs/smoke/data/eval.jsonl").stat().st_size > 0


LOAD_EVERY_MODEL = """
import json
from helpers.core.config import get_config
from helpers.core.models import load_model
from helpers.evaluate.embedding import Embedder
from helpers.evaluate.hub import locate
loaded = {}
for preset in ("smoke", "workshop"):
    cfg = get_config(preset)
    model, tokenizer = load_model(cfg.model)
    scorer = locate(cfg.scorer_model or cfg.model)
    vector = Embedder(cfg.embedder)(["A sentence to embed."])
    loaded[preset] = {"model": cfg.model, "vocabulary": len(tokenizer.vocab), "scorer": scorer,
                      "embedding": list(vector.shape), "chat": "<|im_start|>" in
                      tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)}
print(json.dumps(loaded))
"""


def test_every_model_the_smoke_and_workshop_presets_need_loads_from_the_hub_cache(hub_home, tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    done = run_in(clone, learner_env(clone, HF_HOME=str(hub_home)), "-c", LOAD_EVERY_MODEL)
    assert done.returncode == 0, done.stdout[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for preset in ("smoke", "workshop"):
        assert loaded[preset]["vocabulary"] == 49152 and loaded[preset]["embedding"] == [1, 384]
        assert loaded[preset]["chat"] and str(hub_home) in loaded[preset]["scorer"]


def test_without_the_model_anywhere_the_error_says_how_to_get_it(tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    env = learner_env(clone, HF_HOME=str(tmp_path / "empty-hf-home"))
    done = run_in(clone, env, "-c", "from helpers.core.models import load_model; "
                  f"load_model({WORKSHOP_MODEL!r})")
    assert done.returncode != 0
    assert f"hf download {WORKSHOP_MODEL}" in done.stdout.splitlines()[-1]
