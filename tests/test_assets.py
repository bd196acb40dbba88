"""The offline classroom: `make assets` packs what the presets need into one folder, and a fresh
clone runs notebook 00 from that folder alone (no hub cache, no network)."""
import json
import os
from pathlib import Path

import pytest

from helpers.core.io import sha256_of
from helpers.core.models import ASSET_PATHS
from helpers.tools import assets

from conftest import WORKSHOP_MODEL, fresh_clone, learner_env, run_in

GGUF = ASSET_PATHS[WORKSHOP_MODEL]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """A pack made from this machine's offline copies (HUMANIZER_ASSETS, set by conftest)."""
    dest = tmp_path_factory.mktemp("classroom") / "usb"
    assert assets.main(["--dest", str(dest), "--no-download"]) == 0
    return dest


def test_the_pack_holds_models_data_and_a_manifest_with_sizes_hashes_and_licenses(pack):
    manifest = json.loads((pack / "manifest.json").read_text())
    files = manifest["files"]
    assert {GGUF, "models/all-MiniLM-L6-v2/model.safetensors", "data/l2r/l2r_train.jsonl.gz",
            "data/l2r/l2r_dev.jsonl.gz"} <= set(files)
    for name, entry in files.items():
        assert (pack / name).stat().st_size == entry["bytes"]
        assert sha256_of(pack / name) == entry["sha256"]
    assert files[GGUF]["license"] == "Apache-2.0"
    assert (pack / GGUF).stat().st_mode & 0o044  # readable by the other laptops' users, not 0600
    assert files["data/l2r/l2r_dev.jsonl.gz"]["license"].startswith("CC BY 3.0")
    assert manifest["presets"] == ["smoke", "workshop"]
    # optional detector models that this machine has no copy of are named, not silently absent
    assert "HuggingFaceTB/SmolLM2-135M" in manifest["skipped"]


def test_packing_again_resumes_and_replaces_nothing(pack):
    before = {p: p.stat().st_mtime_ns for p in pack.rglob("*") if p.is_file()}
    assert assets.main(["--dest", str(pack), "--no-download"]) == 0
    after = {p: p.stat().st_mtime_ns for p in pack.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p.name != "manifest.json"} == \
        {p: t for p, t in before.items() if p.name != "manifest.json"}


def test_notebook_00_runs_from_the_pack_alone(pack, tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    env = learner_env(clone, HUMANIZER_ASSETS=str(pack), HF_HOME=str(tmp_path / "no-hub-cache"))
    done = run_in(clone, env, "-m", "helpers.tools.series", "--preset", "smoke", "--only", "00")
    assert done.returncode == 0, done.stdout[-3000:]
    environment = json.loads((clone / "runs/smoke/environment.json").read_text())
    assert environment["HUMANIZER_ASSETS"] == str(pack)
    assert not (tmp_path / "no-hub-cache").exists()  # nothing came from, or went to, a hub cache


def test_a_folder_of_the_users_is_refused_and_left_as_it_was(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "sub" / "data.csv").write_text("1,2")
    before = snapshot(mine)
    assert assets.main(["--dest", str(mine), "--no-download"]) == assets.EXIT_REFUSED
    assert "is not empty and has no manifest.json" in capsys.readouterr().err
    assert snapshot(mine) == before
    (tmp_path / "file").write_text("x")
    assert assets.main(["--dest", str(tmp_path / "file"), "--no-download"]) == assets.EXIT_REFUSED
    assert (tmp_path / "file").read_text() == "x"


def test_a_wrong_path_or_a_partial_pack_names_the_missing_file_and_the_fetch_command(pack, tmp_path):
    with pytest.raises(assets.PackError, match=r"HUMANIZER_ASSETS=.*nowhere is not a folder\. "
                                               r"Make it on a connected machine with `make assets DEST="):
        assets.check(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("manifest.json", "data"):
        os.symlink(pack / name, partial / name)  # the models folder did not get copied
    with pytest.raises(assets.PackError, match=rf"partial/{GGUF} is missing; on a connected "
                                               rf"machine run `make assets DEST=.*partial` again"):
        assets.check(partial)
    clone = fresh_clone(tmp_path / "clone")
    env = learner_env(clone, HUMANIZER_ASSETS=str(partial), HF_HOME=str(tmp_path / "no-hub"))
    done = run_in(clone, env, "-m", "helpers.tools.series", "--preset", "smoke", "--only", "00")
    assert done.returncode != 0
    assert done.stdout.strip().splitlines()[-1].startswith(f"error: {partial / GGUF} is missing")
