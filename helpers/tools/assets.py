"""An offline pack: every model and data file a preset needs, in one folder, for a classroom
without internet. On a connected machine:

    make assets DEST=/media/usb                   # = python -m helpers.tools.assets --dest /media/usb
    HUMANIZER_ASSETS=/media/usb make run          # then, on each laptop, offline

The folder has the layout `helpers.core.models.resolve` reads (models/<name>/..., data/l2r/...) and a
manifest.json listing each file with its size, sha256, source and license. Each model is taken
from a local copy when there is one (HUMANIZER_ASSETS, the Hugging Face cache), else downloaded.
The command only adds files: a folder that is not empty and has no manifest of ours is refused,
and a file already packed with the same sha256 is kept as it is (a rerun resumes).
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

from huggingface_hub import snapshot_download

from helpers.core.config import PRESETS, get_config
from helpers.core.io import atomic_output, atomic_write_json, read_json, sha256_of
from helpers.core.models import ASSET_PATHS, HUB_REVISIONS, assets_dir, resolve
from helpers.data.sources import L2R_FILES, l2r_file

MANIFEST = "manifest.json"
TOOL = "helpers.tools.assets"
FETCH = "make assets DEST={folder}"  # what fetches a missing file, on a connected machine
LICENSES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": "Apache-2.0",
    "HuggingFaceTB/SmolLM2-135M": "Apache-2.0",
    "sentence-transformers/all-MiniLM-L6-v2": "Apache-2.0",
    "openbmb/MiniCPM5-1B": "its own license (the model card's MiniCPM Model License)",
    "TrustSafeAI/RADAR-Vicuna-7B": "its own terms: non-commercial use (the model card)",
    "data/l2r": "CC BY 3.0 (Hao et al., Learning to Rewrite; data/README.md)",
}
EXIT_USAGE, EXIT_MISSING, EXIT_REFUSED = 2, 3, 4


class PackError(RuntimeError):
    """A pack that cannot be made or used; the message names the file and the fix."""

    def __init__(self, message: str, exit_code: int = EXIT_MISSING):
        super().__init__(message)
        self.exit_code = exit_code


def needed_models(preset: str) -> tuple[list[str], list[str]]:
    """(models the preset cannot run without, optional detector models it uses when present)."""
    cfg = get_config(preset)
    required = [cfg.model, cfg.embedder] + ([cfg.scorer_model] if cfg.scorer_model else [])
    optional = [*cfg.binoculars_models, cfg.radar_model]
    return list(dict.fromkeys(required)), [m for m in dict.fromkeys(optional) if m not in required]



def local_copy(spec: str, download: bool) -> tuple[Path, str]:
    """(a local file or folder holding `spec`, where it came from): HUMANIZER_ASSETS or a local
    path first, then the Hugging Face cache, then (download=True) the hub."""
    path = resolve(spec)
    if Path(path).exists():
        return Path(path), "a local copy"
    try:
        return Path(snapshot_download(spec, revision=HUB_REVISIONS.get(spec),
                                      local_files_only=True)), "the Hugging Face cache"
    except Exception:  # noqa: BLE001 - not in the cache: the hub client raises several types
        if not download:
            raise PackError(f"{spec}: no local copy and downloads are off") from None
    try:
        return Path(snapshot_download(spec, revision=HUB_REVISIONS.get(spec))), "the Hugging Face hub"
    except Exception as err:  # noqa: BLE001
        raise PackError(f"{spec}: not in HUMANIZER_ASSETS or the Hugging Face cache, and the "
                        f"download failed ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def pack_path(spec: str, source: Path) -> str:
    """Where `spec` goes inside the pack: the layout `resolve` reads."""
    if source.is_file():
        return ASSET_PATHS.get(spec, f"models/{spec.split('/')[-1]}/{source.name}")
    return f"models/{spec.split('/')[-1]}"


def files_of(source: Path, target: str) -> dict[str, Path]:
    """{path inside the pack: local file} for a model file or folder (hidden files left out)."""
    if source.is_file():
        return {target: source}
    return {f"{target}/{p.relative_to(source).as_posix()}": p for p in sorted(source.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)}


def data_files() -> dict[str, Path]:
    return {f"data/{name}": l2r_file(split) for split, name in L2R_FILES.items()}


def open_pack(dest: Path) -> dict:
    """The manifest of the pack at `dest` (empty for a new or empty folder); PackError for a
    folder that holds anything else, so that nothing of the user's is mixed in or replaced."""
    if dest.exists() and not dest.is_dir():
        raise PackError(f"{dest} is a file; give a folder (new or empty) for the pack", EXIT_REFUSED)
    manifest = dest / MANIFEST
    if manifest.exists():
        saved = read_json(manifest)
        if saved.get("tool") == TOOL:
            return saved
    if dest.exists() and any(dest.iterdir()):
        raise PackError(f"{dest} is not empty and has no {MANIFEST} made by {TOOL}: give a new or "
                        "empty folder, so that nothing in it is replaced", EXIT_REFUSED)
    return {"tool": TOOL, "files": {}, "skipped": {}}


def copy_into(dest: Path, name: str, source: Path, entry: dict | None) -> dict:
    """Copy one file into the pack atomically (a temporary file, then a rename); a file already
    there with the manifest's sha256 is kept. A file the manifest does not list is never replaced."""
    target = dest / name
    if entry and target.exists() and target.stat().st_size == entry["bytes"] \
            and sha256_of(target) == entry["sha256"]:
        return entry
    if target.exists() and not entry:
        raise PackError(f"{target} exists and is not in {dest / MANIFEST}: move it away first",
                        EXIT_REFUSED)
    with atomic_output(target) as tmp:
        shutil.copyfile(source, tmp)
    return {"bytes": target.stat().st_size, "sha256": sha256_of(target)}


def pack(dest: Path, presets: list[str], download: bool = True, optional: bool = True) -> dict:
    """Gather the presets' models and the data into `dest`; returns the manifest written."""
    dest = Path(dest).expanduser().resolve()
    manifest = open_pack(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for preset in presets:
        required, extra = needed_models(preset)
        wanted.update({m: True for m in required if m not in wanted})
        if optional:
            wanted.update({m: False for m in extra if m not in wanted})
    items = []
    for spec, is_required in wanted.items():
        try:
            source, origin = local_copy(spec, download)
        except PackError as err:
            if is_required:
                raise
            manifest["skipped"][spec] = f"optional detector model not packed: {err}"
            print(f"skipped (optional): {err}", file=sys.stderr)
            continue
        manifest["skipped"].pop(spec, None)
        items += [(name, path, spec, origin)
                  for name, path in files_of(source, pack_path(spec, source)).items()]
    items += [(name, path, "data/l2r", "this repository") for name, path in data_files().items()]
    for name, path, spec, origin in items:
        print(f"{name} ({path.stat().st_size / 2**20:.1f} MiB, from {origin})", flush=True)
        entry = copy_into(dest, name, path, manifest["files"].get(name))
        manifest["files"][name] = {**entry, "source": spec, "license": LICENSES.get(spec, "see its model card")}
        atomic_write_json(dest / MANIFEST, manifest)  # after every file: an interrupted pack resumes
    manifest.update(presets=sorted(set(manifest.get("presets", [])) | set(presets)),
                    made=dt.date.today().isoformat())
    atomic_write_json(dest / MANIFEST, manifest)
    return manifest


def check(root: Path | None = None) -> None:
    """PackError naming the first problem of the pack at `root` (default: HUMANIZER_ASSETS): a
    folder that does not exist, or a file its manifest lists that is missing or of another size."""
    root = root or assets_dir()
    if root is None:
        return
    if not root.is_dir():
        raise PackError(f"HUMANIZER_ASSETS={root} is not a folder. Make it on a connected machine "
                        f"with `{FETCH.format(folder=root)}`, or unset HUMANIZER_ASSETS to use the "
                        "Hugging Face hub")
    manifest = root / MANIFEST
    if not manifest.exists():
        return  # a folder laid out by hand: resolve() looks in it, and says what it lacks
    for name, entry in read_json(manifest).get("files", {}).items():
        path = root / name
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            what = "is missing" if not path.is_file() else \
                f"has {path.stat().st_size} bytes, not {entry['bytes']} (copied only in part?)"
            raise PackError(f"{path} {what}; on a connected machine run "
                            f"`{FETCH.format(folder=root)}` again (it resumes), then copy the "
                            "folder anew")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", required=True, help="the folder to fill (new, empty, or an earlier pack)")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS),
                        help="presets to pack for (default: smoke and workshop); repeat for several")
    parser.add_argument("--no-download", action="store_true", help="pack local copies only")
    parser.add_argument("--required-only", action="store_true",
                        help="leave out the optional detector models (RADAR, the Binoculars pair)")
    parser.add_argument("--check", action="store_true", help="only check the pack at --dest")
    args = parser.parse_args(argv)
    try:
        if args.check:
            check(Path(args.dest).expanduser().resolve())
            print(f"{args.dest}: every file its manifest lists is there")
            return 0
        manifest = pack(Path(args.dest), args.preset or ["smoke", "workshop"],
                        download=not args.no_download, optional=not args.required_only)
    except PackError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    total = sum(e["bytes"] for e in manifest["files"].values()) / 2**20
    print(f"packed {len(manifest['files'])} files, {total:.0f} MiB, into {args.dest}; "
          f"use it with HUMANIZER_ASSETS={Path(args.dest).expanduser().resolve()}")
    for spec, why in manifest["skipped"].items():
        print(f"not packed: {spec}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
