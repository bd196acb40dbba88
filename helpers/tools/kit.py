"""Catch-up kits: a finished run packed into one file, so a learner can start any notebook N
without running 00..N-1 first.

    make kit DEST=/media/usb/workshop-kit.tar.gz     # = python -m helpers.tools.kit pack --dest ...
    make unkit KIT=/media/usb/workshop-kit.tar.gz    # = python -m helpers.tools.kit unpack ...

Why one .tar.gz file and not a folder: a kit is handed out (a USB stick, a chat upload, a shared
drive), and one file is copied whole or not at all, keeps no stale files of an older kit, and
carries its manifest inside it (the first member), so a kit cannot be separated from its
checksums; gzip shrinks the JSONL data and logs several-fold, and Python reads it anywhere with
no extra tool. A DEST that is an existing folder gets <folder>/humanizer-<preset>-kit.tar.gz.

What goes in: every file of the default run runs/<preset>/ (the data, the quantized model, the
adapters, the checkpoints, the caches, the logs, the figures, the results and the executed
notebooks under notebooks/, which are worth reading even when not rerun), but of its folders
only those the default run writes (config.RESERVED_NAMES): not the named experiments'
(runs/<preset>/<name>/: other runs), not export/ (deployables, rebuilt by
`python -m helpers.tools.export`); no symlinks, no hidden files but the tools' manifests (below). The
models and data from the hub are not in it: they come from the hub or `make assets`. Before
packing, the run must hold what NEEDS says the covered notebooks read (--upto: 07 by default);
a missing artifact is one line naming it and the notebook that makes it, exit 3.

The manifest (kit.json) lists each file with its size, mtime and sha256, the preset, the git
commit of the checkout that packed it and the notebooks the kit covers. The manifests of
helpers/core/owned.py that mark files as a tool's own (the executed notebooks are helpers.tools.series's,
the quantized model is the mlx export's) travel as they are, and each file's mtime is restored
to the nanosecond, so their marks stay true: a rerun of notebook 03 or of the series may replace
those files as it replaces its own earlier outputs. (Rewriting them instead would change
quantized_model/'s bytes, hidden files included, and with them the base fingerprint that the
adapters are checked against.)

Unpacking writes into runs/<preset>/ only where nothing of the learner's is replaced: a file
already there is refused (exit 4, one line naming it) unless this command unpacked it earlier,
unchanged since, and --overwrite is given. Every file is first extracted to a temporary folder
and its sha256 checked against the manifest (a damaged kit is one line, exit 3, and nothing is
installed), then moved into place. The unpacked files are marked as the kit's own in
runs/<preset>/.kit/<folder>/outputs.json (owned.py's manifests, kept out of the run's folders);
a notebook rerun replaces them as it replaces its own outputs.

Exit status: 0 done, 2 usage error, 3 the run lacks an artifact, or the kit is damaged,
4 refused (something of the user's is in the way).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from helpers.core import config
from helpers.core.io import atomic_output, sha256_of
from helpers.core.owned import (
    EXIT_MISSING,
    EXIT_USAGE,
    Refused,
    UserError,
    check_targets,
    exit_code_of,
    manifest_of,
    read_manifest,
    record,
    staging_folder,
)

TOOL = "helpers.tools.kit"
KIT_FORMAT = 1
MANIFEST = "kit.json"  # the kit's first member
FILES_PREFIX = "run/"  # the run's files sit under this prefix in the tar
# The kit's own marks (owned.py's manifests, one per folder of the run) all live under this hidden
# folder of runs/<preset>/, mirroring the run's folders: none is put inside quantized_model/,
# whose every file (hidden ones too) makes the base fingerprint that adapters are checked against.
KIT_MARKS = ".kit"
TOOL_MANIFEST_SUFFIX = ".outputs.json"  # owned.manifest_of's names: packed as they are

NOTEBOOKS = ("00", "01", "02", "03", "04", "05", "06", "07")
# Each artifact a notebook reads from an earlier one: (the notebook that writes it, the files
# that must be there; () = a folder with at least one file).
ARTIFACTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "data": ("01", ("train.jsonl", "val.jsonl", "eval.jsonl", "dpo.jsonl", "detector.jsonl")),
    "sensitivity.json": ("02", ()),
    "quantized_model": ("03", ("config.json", "model.safetensors")),
    "adapters/sft": ("04", ("adapters.safetensors", "adapter_config.json")),
    "adapters/dpo": ("05", ("adapters.safetensors", "adapter_config.json")),
    "checkpoints/dpo": ("05", ()),
    "rewrites.jsonl": ("06", ()),
}
# What each notebook reads from the earlier ones, from the notebooks' code and the helpers it calls
# (tests/test_kit.py checks it against them): load_prepared -> data, load_sensitivity ->
# sensitivity.json, lora.load_base / Humanizer.load -> quantized_model (without it they silently
# build on the unquantized model, so it is needed), cfg.input_path(...) literally. Caches that a
# notebook rebuilds when missing (gradient_scores.json, detectors/, dpo_reference.safetensors) are not
# needs, but they are packed: they save the learner time.
NEEDS: dict[str, tuple[str, ...]] = {
    "00": (),
    "01": (),
    "02": ("data",),
    "03": ("data", "sensitivity.json"),
    "04": ("data", "quantized_model"),
    "05": ("data", "quantized_model", "adapters/sft"),
    "06": ("data", "quantized_model", "adapters/sft", "adapters/dpo", "checkpoints/dpo"),
    "07": ("data", "rewrites.jsonl"),
}


class Damaged(UserError):
    """The kit is not what its manifest says (truncated, altered, not a kit): copy it again."""
    exit_code = EXIT_MISSING


def notebook_file(number: str) -> str:
    """'05' -> '05_dpo.ipynb' (the number alone when the notebook is not there)."""
    found = sorted((config.REPO_ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    return found[0].name if found else f"notebook {number}"


# ---------------------------------------------------------------- what a run must hold

def missing_files(run_dir: Path, artifact: str) -> list[Path]:
    """The files of `artifact` that are not in run_dir ([] when it is complete)."""
    path = run_dir / artifact
    _, files = ARTIFACTS[artifact]
    if files:
        return [path / f for f in files if not (path / f).is_file()]
    if path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*"))):
        return []
    return [path]


def check_run(run_dir: Path, upto: str) -> list[str]:
    """The notebooks 00..upto, after checking that run_dir holds everything they read; the
    first missing artifact (in series order) is a UserError naming the notebook that makes it."""
    covered = [n for n in NOTEBOOKS if n <= upto]
    needed = {a: min(n for n in covered if a in NEEDS[n])
              for a in {a for n in covered for a in NEEDS[n]}}
    for artifact in sorted(needed, key=lambda a: (ARTIFACTS[a][0], a)):
        missing = missing_files(run_dir, artifact)
        if missing:
            maker, reader = ARTIFACTS[artifact][0], needed[artifact]
            fewer = (f", or pack for fewer notebooks (--upto {int(reader) - 1:02d})"
                     if reader > "00" else "")
            raise UserError(f"{missing[0]} is missing: notebook {reader} needs {artifact}, which "
                            f"{notebook_file(maker)} makes; run it first{fewer}", EXIT_MISSING)
    return covered


# ---------------------------------------------------------------- packing


def stamp(path: Path) -> dict:
    """What owned.py records of a file it marks as a tool's own."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tool_manifests(folder: Path, packed: set[str]) -> list[Path]:
    """The manifests of owned.py in `folder` that can travel as they are: each lists only files
    that are packed (`packed`: their names) and unchanged since the tool wrote them. The kit
    restores each file's mtime, so their marks stay true; a manifest listing anything else is
    left out (its files are then nobody's: a tool refuses to replace them, nothing is lost)."""
    found = []
    for manifest in [manifest_of(folder, folder=True)] + sorted(folder.glob(".?*.outputs.json")):
        if not os.path.lexists(manifest):
            continue
        try:
            tool = json.loads(manifest.read_text(encoding="utf-8"))["tool"]
            files = read_manifest(manifest, tool)
        except (OSError, ValueError, KeyError, TypeError, Refused):
            continue  # not a manifest of owned.py's
        if manifest.is_file() and files and all(
                name in packed and (mark is None or mark == stamp(folder / name))
                for name, mark in files.items()):
            found.append(manifest)
    return found


def run_files(run_dir: Path) -> tuple[list[Path], list[str]]:
    """(the files a kit of run_dir holds, sorted; the top folders left out). At the top only the
    folders the default run writes (config.RESERVED_NAMES) are packed: any other is a named
    experiment (another run), export/ (deployables) or something of the user's."""
    files, left_out = [], []
    for folder, dirs, names in os.walk(run_dir):
        folder = Path(folder)
        if folder == run_dir:
            left_out = sorted(d for d in dirs if d not in config.RESERVED_NAMES
                              and not d.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (folder / d).is_symlink()
                         and (folder != run_dir or d in config.RESERVED_NAMES))
        files += [folder / n for n in sorted(names)
                  if not n.startswith(".") and (folder / n).is_file()
                  and not (folder / n).is_symlink()]
    return sorted(files, key=lambda p: p.relative_to(run_dir).as_posix()), left_out


def git_commit() -> dict:
    """The commit the run was made with (as far as this checkout knows), and whether the
    checkout had changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(config.REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=30, check=False)
    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def entry_of(run_dir: Path, path: Path) -> dict:
    st = path.stat()
    return {"path": path.relative_to(run_dir).as_posix(), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "sha256": sha256_of(path)}


def kit_manifest(run_dir: Path, preset: str, covered: list[str]) -> dict:
    files, left_out = run_files(run_dir)
    by_folder: dict[Path, set[str]] = {}
    for path in files:
        by_folder.setdefault(path.parent, set()).add(path.name)
    files += [m for folder, names in by_folder.items() for m in tool_manifests(folder, names)]
    entries = [entry_of(run_dir, p) for p in sorted(files, key=lambda p: p.relative_to(run_dir))]
    made = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return {"kit_format": KIT_FORMAT, "tool": TOOL, "preset": preset, "made": made,
            "git": git_commit(), "notebooks": covered,
            "needs": {n: list(NEEDS[n]) for n in covered},
            "total_bytes": sum(e["size"] for e in entries), "left_out": left_out,
            "files": entries}


class HashingReader(io.RawIOBase):
    """Reads a file for the tar while hashing what it reads: the bytes packed are the bytes
    whose sha256 is checked against the manifest's."""

    def __init__(self, f):
        self.f, self.digest = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.digest.update(data)
        return data


def kit_path(dest: str | Path, preset: str) -> Path:
    dest = Path(dest)
    if dest.is_dir() and not dest.is_symlink():
        return dest / f"humanizer-{preset}-kit.tar.gz"
    if not dest.name.endswith(".tar.gz"):
        raise UserError(f"{dest}: a kit is one .tar.gz file: give a path ending in .tar.gz, or "
                        f"an existing folder to put it in", EXIT_USAGE)
    return dest


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    """A plain file entry with no owner or permissions of the packing machine's."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info


def pack(preset: str = config.DEFAULT_PRESET, dest: str | Path = ".", upto: str = "07",
         overwrite: bool = False) -> Path:
    """Write the kit of runs/<preset>/ to `dest` (atomically) and return its path."""
    if upto not in NOTEBOOKS:
        raise UserError(f"--upto {upto}: choose one of {', '.join(NOTEBOOKS)}", EXIT_USAGE)
    if preset not in config.PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {sorted(config.PRESETS)}",
                        EXIT_USAGE)
    run_dir = config.RUNS_ROOT / preset
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} does not exist: run the series first (make run "
                        f"PRESET={preset})", EXIT_MISSING)
    covered = check_run(run_dir, upto)
    out = kit_path(dest, preset)
    check_targets(TOOL, [out], manifest_of(out), overwrite)
    manifest = kit_manifest(run_dir, preset, covered)
    header = json.dumps(manifest, indent=1).encode("utf-8")
    with atomic_output(out, suffix=".tmp.tar.gz") as tmp, \
            tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
        tar.addfile(_tarinfo(MANIFEST, len(header), dt.datetime.now().timestamp()),
                    io.BytesIO(header))
        for entry in manifest["files"]:
            add_file(tar, run_dir, entry)
    record(TOOL, [out], manifest_of(out))
    print(f"kit of runs/{preset} (notebooks {covered[0]}..{covered[-1]}, {len(manifest['files'])} "
          f"files, {manifest['total_bytes'] / 2**20:.1f} MB): {out} "
          f"({out.stat().st_size / 2**20:.1f} MB)"
          + (f"; not packed: {', '.join(d + '/' for d in manifest['left_out'])} (experiments, "
             f"exports: other runs' files)" if manifest["left_out"] else ""))
    return out


def add_file(tar: tarfile.TarFile, run_dir: Path, entry: dict) -> None:
    """Add one file of the manifest; a file written to since it was hashed is refused (the kit
    would not match its own checksums)."""
    path = run_dir / entry["path"]
    with open(path, "rb") as f:
        reader = HashingReader(f)
        try:
            tar.addfile(_tarinfo(FILES_PREFIX + entry["path"], entry["size"],
                                 path.stat().st_mtime), reader)
        except OSError:  # tarfile's "unexpected end of data": the file shrank
            reader.digest = None
        if reader.digest is None or reader.digest.hexdigest() != entry["sha256"] or \
                path.stat().st_size != entry["size"]:
            raise UserError(f"{path}: changed while it was packed (is a notebook running?); pack "
                            f"again when the run is finished")


# ---------------------------------------------------------------- unpacking

def safe_relative(name: str) -> PurePosixPath:
    """A member path that stays inside the run folder: relative, nothing hidden ('..' included)
    but a tool's manifest."""
    rel = PurePosixPath(name)
    hidden = [p for p in rel.parts if p.startswith(".")]
    if not name or rel.is_absolute() or hidden not in ([], [rel.name]) or \
            (hidden and not rel.name.endswith(TOOL_MANIFEST_SUFFIX)):
        raise Damaged(f"the kit lists {name!r}, a path outside a run folder: not a kit of "
                      f"this tool")
    return rel


def read_kit_manifest(tar: tarfile.TarFile, kit: Path) -> dict:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise Damaged(f"{kit}: not a kit (its first member is not {MANIFEST})")
    try:
        manifest = json.loads(tar.extractfile(first).read().decode("utf-8"))
        files, preset = manifest["files"], manifest["preset"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise Damaged(f"{kit}: its {MANIFEST} is not readable; copy the kit again") from None
    if manifest.get("kit_format") != KIT_FORMAT:
        raise Damaged(f"{kit}: kit format {manifest.get('kit_format')!r}; this checkout reads "
                      f"format {KIT_FORMAT}: update the checkout")
    if preset not in config.PRESETS:
        raise Damaged(f"{kit}: made for preset {preset!r}, which this checkout does not know")
    for entry in files:
        safe_relative(entry["path"])
    return manifest


def marks_of(run_dir: Path, folder: Path) -> Path:
    """Where the kit marks the files it unpacked into `folder` as its own."""
    return run_dir / KIT_MARKS / folder.relative_to(run_dir) / "outputs.json"


def check_destination(run_dir: Path, manifest: dict, overwrite: bool) -> None:
    """Refuse (before any work) when anything of the user's is where the kit would write: a file
    that is not this tool's own unchanged output (or is, without --overwrite), or a folder on
    the way that is a file or a symlink."""
    by_folder: dict[Path, list[Path]] = {}
    for entry in manifest["files"]:
        target = run_dir / entry["path"]
        by_folder.setdefault(target.parent, []).append(target)
        for folder in list(target.relative_to(run_dir).parents)[:-1]:
            path = run_dir / folder
            if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
                what = "a symlink" if path.is_symlink() else "a file"
                raise Refused(f"{path}: is in the way ({what} where the kit puts a folder); it is "
                              f"left as it is: move it away")
    for folder, targets in by_folder.items():
        if folder.is_dir():
            check_targets(TOOL, targets, marks_of(run_dir, folder), overwrite)


def extract_verified(tar: tarfile.TarFile, manifest: dict, staged: Path, kit: Path) -> None:
    """Every file of the manifest, from the tar into `staged`, each checked by size and sha256."""
    expected = {FILES_PREFIX + e["path"]: e for e in manifest["files"]}
    seen = set()
    for index, member in enumerate(tar):
        if index == 0:
            continue  # the manifest, read already
        entry = expected.get(member.name)
        if entry is None or not member.isfile() or member.name in seen:
            raise Damaged(f"{kit}: holds {member.name!r}, which its manifest does not list as a "
                          f"file; copy the kit again")
        seen.add(member.name)
        out = staged / entry["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tar.extractfile(member) as src, open(out, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
        # the packed file's time, to the nanosecond: a tool's manifest in the kit stays true of it
        os.utime(out, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        if out.stat().st_size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            raise Damaged(f"{kit}: {entry['path']} does not match its sha256 in the kit's "
                          f"manifest (damaged in copying?); copy the kit again. Nothing was "
                          f"unpacked")
    lost = sorted(set(expected) - seen)
    if lost:
        raise Damaged(f"{kit}: {lost[0][len(FILES_PREFIX):]} is listed but not in the kit "
                      f"(truncated?); copy the kit again. Nothing was unpacked")


def install(staged: Path, run_dir: Path, manifest: dict) -> None:
    """Move the verified files into place and mark them as the kit's own."""
    by_folder: dict[Path, list[Path]] = {}
    for entry in manifest["files"]:
        target = run_dir / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / entry["path"], target)
        by_folder.setdefault(target.parent, []).append(target)
    for folder, targets in by_folder.items():
        for tool_manifest in (t for t in targets if t.name.endswith(TOOL_MANIFEST_SUFFIX)):
            restamp(tool_manifest)
        record(TOOL, targets, marks_of(run_dir, folder))


def restamp(tool_manifest: Path) -> None:
    """Where a file system keeps coarser times than the packing one's, a restored mtime differs
    from the tool's mark: mark those files again, so that the tool may still replace them."""
    marks = json.loads(tool_manifest.read_text(encoding="utf-8"))
    stale = [tool_manifest.parent / name for name, mark in marks["files"].items()
             if mark is not None and mark != stamp(tool_manifest.parent / name)]
    if stale:
        record(marks["tool"], stale, tool_manifest)


def unpack(kit: str | Path, overwrite: bool = False) -> Path:
    """Unpack `kit` into runs/<its preset>/ (module docstring); returns that folder."""
    kit = Path(kit)
    if not kit.is_file():
        raise UserError(f"{kit}: no such kit file", EXIT_MISSING)
    try:
        with tarfile.open(kit, "r:gz") as tar:
            manifest = read_kit_manifest(tar, kit)
            run_dir = config.RUNS_ROOT / manifest["preset"]
            check_destination(run_dir, manifest, overwrite)
            with staging_folder(run_dir / "kit") as staged:
                extract_verified(tar, manifest, staged, kit)
                check_destination(run_dir, manifest, overwrite)  # again: extracting takes a while
                install(staged, run_dir, manifest)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise Damaged(f"{kit}: not a readable .tar.gz ({type(err).__name__}: {err}); copy the "
                      f"kit again. Nothing was unpacked") from None
    git = manifest["git"]
    print(f"unpacked {len(manifest['files'])} files into {run_dir}: notebooks "
          f"{', '.join(manifest['notebooks'])} can start from here (kit made {manifest['made']} "
          f"at commit {(git.get('commit') or 'unknown')[:12]})")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.kit",
                                     description=__doc__.splitlines()[0],
                                     epilog=__doc__[__doc__.index("Exit status:"):])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack runs/<preset>/ into one .tar.gz")
    p.add_argument("--preset", default=config.DEFAULT_PRESET, choices=sorted(config.PRESETS))
    p.add_argument("--dest", required=True, help="a .tar.gz path, or a folder to put it in")
    p.add_argument("--upto", default="07", choices=NOTEBOOKS,
                   help="the last notebook the kit lets a learner start (default 07)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace this command's own earlier kit")
    u = sub.add_parser("unpack", help="unpack a kit into runs/<preset>/")
    u.add_argument("kit", help="the .tar.gz file")
    u.add_argument("--overwrite", action="store_true",
                   help="replace files an earlier unpack wrote (never anything else)")
    args = parser.parse_args(argv)
    if args.command == "pack":
        return exit_code_of(lambda: pack(args.preset, args.dest, args.upto, args.overwrite))
    return exit_code_of(lambda: unpack(args.kit, args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
