"""Catch-up kits (helpers/kit.py) on a tiny fake run: the round trip is byte-identical, a run
lacking an artifact is refused, an unpack never replaces a learner's file, a damaged kit is
caught by its checksums; and NEEDS agrees with what the notebooks read."""
from __future__ import annotations

import importlib
import inspect
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from helpers.core import config, owned
from helpers.tools import kit
from helpers.train import base

REPO = Path(__file__).resolve().parent.parent
PRESET = "smoke"

FAKE_RUN = {  # path under runs/smoke/ -> content
    **{f"data/{n}.jsonl": f'{{"id": "{n}-1", "human": "h", "ai": "a"}}\n'
       for n in ("train", "val", "eval", "dpo", "detector")},
    "data/report.json": '{"kept": 5}\n',
    "sensitivity.json": '{"units": {}}\n',
    "quantized_model/config.json": '{"quantized_from": "HuggingFaceTB/SmolLM2-135M-Instruct"}\n',
    "quantized_model/model.safetensors": "weights" * 300,
    "adapters/sft/adapters.safetensors": "sft adapter",
    "adapters/sft/adapter_config.json": '{"rank": 4}\n',
    "adapters/dpo/adapters.safetensors": "dpo adapter",
    "adapters/dpo/adapter_config.json": '{"rank": 4}\n',
    "checkpoints/dpo/0000004_adapters.safetensors": "checkpoint",
    "rewrites.jsonl": '{"id": "eval-1", "base": "x"}\n',
    "figures/sft_loss.png": "png",
    "notebooks/05_dpo.ipynb": '{"cells": []}',
    "config.json": '{"experiment": ""}\n',
}


def write_run(root: Path) -> Path:
    """runs/smoke/ with FAKE_RUN, the marks the real tools leave, an experiment and a lock."""
    run = root / PRESET
    for rel, text in FAKE_RUN.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    model = run / "quantized_model"
    owned.record("mlx model export", [model / "config.json", model / "model.safetensors"],
                 owned.manifest_of(model, folder=True))
    owned.record("helpers.tools.series", [run / "notebooks/05_dpo.ipynb"],
                 owned.manifest_of(run / "notebooks", folder=True))
    (run / "high-lr").mkdir()  # a named experiment: another run, not in the kit
    (run / "high-lr/config.json").write_text('{"experiment": "high-lr"}\n')
    (run / "export").mkdir()  # deployables of helpers.tools.export
    (run / "export/humanizer.gguf").write_text("gguf")
    (run / ".rewrites.jsonl.lock").write_text("")
    return run


def manifest_in(path: Path) -> dict:
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile(kit.MANIFEST).read())


def tree(run: Path) -> dict[str, bytes]:
    """Every file of a run but locks and the kit's own marks; the tools' marks included."""
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")
            and p.relative_to(run).parts[0] != kit.KIT_MARKS}


def base_fingerprint() -> str:
    """What adapters are checked against (helpers.train.base): a hash of quantized_model/'s files."""
    return base.base_fingerprint(config.get_config(PRESET, experiment=""))


@pytest.fixture
def made(tmp_path, monkeypatch):
    """(the instructor's kit of a fake run, the learner's empty RUNS_ROOT, the run's files, the
    run's base fingerprint)."""
    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "instructor")
    run = write_run(tmp_path / "instructor")
    path = kit.pack(PRESET, tmp_path / "kit.tar.gz")
    fingerprint = base_fingerprint()
    expected = {k: v for k, v in tree(run).items() if not k.startswith(("high-lr/", "export/"))}
    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "learner")
    return path, tmp_path / "learner", expected, fingerprint


def test_round_trip_is_byte_identical_and_marks_the_files(made):
    path, learner, expected, fingerprint = made
    run = kit.unpack(path)
    assert run == learner / PRESET
    assert tree(run) == expected  # no experiment, no export, no lock file, nothing else
    manifest = manifest_in(path)
    assert manifest["preset"] == PRESET and manifest["notebooks"] == list(kit.NOTEBOOKS)
    assert manifest["left_out"] == ["export", "high-lr"]
    assert {e["path"] for e in manifest["files"]} == set(expected)
    # the tools' marks travel byte for byte (quantized_model/'s bytes make the base fingerprint)
    assert {"quantized_model/.outputs.json", "notebooks/.outputs.json"} <= set(expected)
    assert base_fingerprint() == fingerprint  # no "trained on another base"
    # the tools that made them may replace them again (notebook 03's save, a series rerun)...
    model = run / "quantized_model"
    owned.check_targets("mlx model export", [model / "model.safetensors"],
                        owned.manifest_of(model, folder=True), overwrite=True)
    owned.check_targets("helpers.tools.series", [run / "notebooks/05_dpo.ipynb"],
                        owned.manifest_of(run / "notebooks", folder=True), overwrite=True)
    # ...and so may the kit, when asked
    with pytest.raises(owned.Refused, match="pass --overwrite") as refused:
        kit.unpack(path)
    assert refused.value.exit_code == owned.EXIT_REFUSED
    kit.unpack(path, overwrite=True)
    assert tree(run) == expected


def test_a_run_missing_an_artifact_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "runs")
    run = write_run(tmp_path / "runs")
    (run / "adapters/dpo/adapters.safetensors").unlink()
    dest = tmp_path / "kit.tar.gz"
    code = kit.main(["pack", "--preset", PRESET, "--dest", str(dest)])
    assert code == owned.EXIT_MISSING == 3
    assert capsys.readouterr().err == (
        f"error: {run}/adapters/dpo/adapters.safetensors is missing: notebook 06 needs "
        f"adapters/dpo, which 05_dpo.ipynb makes; run it first, or pack for fewer notebooks "
        f"(--upto 05)\n")
    assert not dest.exists() and list(tmp_path.glob(".kit.tar.gz*")) == []
    kit.pack(PRESET, dest, upto="05")  # 05 itself does not need it
    assert manifest_in(dest)["notebooks"] == ["00", "01", "02", "03", "04", "05"]


def test_unpack_never_replaces_a_learners_file(made):
    path, learner, *_ = made
    mine = learner / PRESET / "rewrites.jsonl"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own rewrites\n")
    for overwrite in (False, True):
        with pytest.raises(owned.Refused) as refused:
            kit.unpack(path, overwrite=overwrite)
        assert refused.value.exit_code == 4
        assert str(refused.value) == (f"{mine}: exists and was not written by helpers.tools.kit; it is "
                                      f"left as it is: choose another path, or move it away")
    assert mine.read_text() == "my own rewrites\n"
    assert sorted(p.name for p in mine.parent.iterdir()) == ["rewrites.jsonl"]  # nothing else


def test_a_file_changed_since_the_unpack_is_kept(made):
    path, learner, *_ = made
    kit.unpack(path)
    edited = learner / PRESET / "data/train.jsonl"
    edited.write_text('{"id": "mine"}\n')
    with pytest.raises(owned.Refused, match="changed since helpers.tools.kit wrote it"):
        kit.unpack(path, overwrite=True)
    assert edited.read_text() == '{"id": "mine"}\n'


def rewrite_member(path: Path, name: str, change) -> None:
    """The kit with member `name`'s bytes passed through `change`; its manifest as it was."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            data = change(data) if member.name == name else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_a_damaged_file_is_caught_by_its_sha256(made):
    path, learner, *_ = made
    rewrite_member(path, "run/adapters/sft/adapters.safetensors", lambda b: b"X" + b[1:])
    with pytest.raises(kit.Damaged) as damaged:
        kit.unpack(path)
    assert damaged.value.exit_code == owned.EXIT_MISSING
    assert str(damaged.value) == (f"{path}: adapters/sft/adapters.safetensors does not match its "
                                  f"sha256 in the kit's manifest (damaged in copying?); copy the "
                                  f"kit again. Nothing was unpacked")
    run = learner / PRESET
    assert [p for p in run.rglob("*") if p.is_file()] == []  # nothing installed, no staging left


def test_a_truncated_kit_is_refused(made):
    path, *_ = made
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(kit.Damaged, match="copy the kit again"):
        kit.unpack(path)


def test_the_kit_is_a_tar_gz(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "runs")
    write_run(tmp_path / "runs")
    with pytest.raises(owned.UserError, match="ending in .tar.gz") as usage:
        kit.pack(PRESET, tmp_path / "kit.zip")
    assert usage.value.exit_code == 2
    folder = tmp_path / "usb"
    folder.mkdir()
    assert kit.pack(PRESET, folder) == folder / "humanizer-smoke-kit.tar.gz"
    with pytest.raises(owned.Refused, match="pass --overwrite"):
        kit.pack(PRESET, folder)  # an earlier kit of ours: replaced only when asked
    kit.pack(PRESET, folder, overwrite=True)


# ---------------------------------------------------------------- NEEDS against the notebooks

# what reads an artifact of an earlier notebook, in a notebook's code or a helper it calls
READS = {
    r"\bload_prepared\(": ("data",),
    r"\bload_sensitivity\(": ("sensitivity.json",),
    r"\bload_base\(|\bload_system\(|Humanizer\.load\(": ("quantized_model",),
    r"\badapter_dir\(|Humanizer\.load\(": ("adapters/sft", "adapters/dpo"),
}
# what in the making notebook's code writes each artifact
WRITES = {"data": "save_prepared(", "sensitivity.json": "save_sensitivity(",
          "quantized_model": 'cfg.path("quantized_model")', "adapters/sft": "train_sft(",
          "adapters/dpo": "train_dpo(", "checkpoints/dpo": "train_dpo(",
          "rewrites.jsonl": "rewrites.jsonl"}


def notebook_code(number: str) -> str:
    book = next((REPO / "notebooks").glob(f"{number}_*.ipynb"))
    cells = json.loads(book.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def called_helpers(code: str) -> str:
    """The source of each helpers function the notebook imports and calls (one level)."""
    imported = {}
    for module, names in re.findall(r"from (helpers\.[\w.]+) import \(?([^)\n]*(?:\n\s+[^)\n]*)*)\)?", code):
        for name in re.findall(r"\w+", names):
            imported[name] = module
    sources = []
    for name in sorted(set(re.findall(r"\b(\w+)\(", code)) & set(imported)):
        try:
            sources.append(inspect.getsource(getattr(importlib.import_module(imported[name]), name)))
        except (ImportError, AttributeError, TypeError):
            continue
    return "\n".join(sources)


def reads_of(number: str) -> set[str]:
    code = notebook_code(number)
    text = code + "\n" + called_helpers(code)
    found = {a for pattern, artifacts in READS.items() if re.search(pattern, text)
             for a in artifacts}
    for name in re.findall(r'input_path\(\s*["\']([^"\']+)["\']', text):
        found |= {a for a in kit.ARTIFACTS if a == name or a.startswith(name.rstrip("/") + "/")}
    # only what an earlier notebook makes is a need (notebook 00 builds on the preset's model)
    return {a for a in found if a in kit.ARTIFACTS and kit.ARTIFACTS[a][0] < number}


@pytest.mark.parametrize("number", kit.NOTEBOOKS)
def test_needs_is_what_the_notebook_reads(number):
    assert reads_of(number) == set(kit.NEEDS[number])


@pytest.mark.parametrize("artifact", sorted(kit.ARTIFACTS))
def test_each_artifact_is_made_by_the_notebook_named(artifact):
    maker = kit.ARTIFACTS[artifact][0]
    assert WRITES[artifact] in notebook_code(maker)
    assert all(maker < n for n in kit.NOTEBOOKS if artifact in kit.NEEDS[n])


def test_a_learners_file_where_a_tools_manifest_goes_is_kept(made):
    path, learner, *_ = made
    notes = learner / PRESET / "quantized_model/.outputs.json"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes\n")
    with pytest.raises(owned.Refused, match="was not written by helpers.tools.kit") as refused:
        kit.unpack(path)
    assert refused.value.exit_code == 4 and notes.read_text() == "my notes\n"
    assert [p.name for p in notes.parent.iterdir()] == [".outputs.json"]


def test_a_tools_manifest_listing_an_unpacked_file_stays_behind(tmp_path, monkeypatch):
    """Its marks would let the tool replace a learner's file of that name: it is left out, and
    the files it lists become nobody's (the tool refuses to replace them)."""
    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "runs")
    run = write_run(tmp_path / "runs")
    (run / "notebooks/06_stacked_inference.ipynb").write_text("{}")
    owned.record("helpers.tools.series", [run / "notebooks/06_stacked_inference.ipynb"],
                 owned.manifest_of(run / "notebooks", folder=True))
    (run / "notebooks/06_stacked_inference.ipynb").write_text('{"edited": true}')  # changed since
    paths = {e["path"] for e in manifest_in(kit.pack(PRESET, tmp_path / "kit.tar.gz"))["files"]}
    assert "notebooks/06_stacked_inference.ipynb" in paths
    assert "notebooks/.outputs.json" not in paths and "quantized_model/.outputs.json" in paths
