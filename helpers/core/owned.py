"""Nothing a user points a command at is lost: the one rule every command that writes follows.

A command replaces only files it wrote itself, and only when asked (--overwrite). It knows its
own files by a manifest it writes beside them: `.<name>.outputs.json` for a file, `.outputs.json`
inside a folder, listing each file with its size and modification time, so that a file edited
since (a hand-tuned Modelfile) is not taken for the command's own. Anything else at a path it
would write (a user's file, a symlink, a folder with files, a read-only file) is refused with
one line and exit code 4 before any work is done. Every file is written to a temporary file
beside it and renamed into place, so a crash leaves the old file or the new one. An appending
writer (helpers.tools.rewrite_files) holds an OS lock beside its output while it runs; the kernel drops the
lock of a killed process, so a stale lock never blocks.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from helpers.core.io import atomic_write_json

EXIT_USAGE, EXIT_MISSING, EXIT_REFUSED = 2, 3, 4


class UserError(Exception):
    """A problem the user can fix: one line naming it and the fix, and an exit code."""
    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def command_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A command's parser: its docstring's first line as the description, and its "Exit status:"
    section (every command documents its exit codes) as the epilog."""
    return argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0],
                                   epilog=doc[doc.index("Exit status:"):],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def exit_code_of(action) -> int:
    """Run a command's work: 0, or the one line of a UserError on stderr and its exit code."""
    try:
        action()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


class Refused(UserError):
    """Writing would delete, truncate or replace something the command did not make (exit 4)."""
    exit_code = EXIT_REFUSED


def manifest_of(path: str | Path, folder: bool = False) -> Path:
    """Where the manifest of a file output (beside it) or a folder output (inside it) lives."""
    path = Path(path)
    return path / ".outputs.json" if folder else path.parent / f".{path.name}.outputs.json"


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_manifest(manifest: Path, tool: str) -> dict:
    """{file name: stamp or None} that `tool` recorded in `manifest`; {} when there is none."""
    if not os.path.lexists(manifest):
        return {}
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        files = record["files"] if record.get("tool") == tool else None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        files = None
    if not isinstance(files, dict) or manifest.is_symlink():
        raise Refused(f"{manifest}: not a manifest of {tool}; move it away")
    return files


def check_plain_file(path: Path, tool: str) -> None:
    """Only a writable regular file is ever replaced: never a symlink (the rename would replace
    the link, not what it points to), a folder, a device, or a read-only file."""
    what = ("a symlink" if path.is_symlink() else "a folder" if path.is_dir() else
            None if path.is_file() else "not a regular file")
    if what:
        raise Refused(f"{path}: is {what}; {tool} replaces only regular files: choose another "
                      f"path")
    if not path.stat().st_mode & 0o222:  # the mode, not os.access: root may write anything
        raise Refused(f"{path}: is read-only; it is left as it is: choose another path")


def check_targets(tool: str, paths: list[Path], manifest: Path, overwrite: bool) -> None:
    """Refuse when any of `paths` exists and is not `tool`'s own unchanged output listed in
    `manifest`, or is, but --overwrite was not given."""
    listed = read_manifest(manifest, tool)
    for path in map(Path, paths):
        if not os.path.lexists(path):
            continue
        check_plain_file(path, tool)
        if path.name not in listed:
            raise Refused(f"{path}: exists and was not written by {tool}; it is left as it is: "
                          f"choose another path, or move it away")
        if listed[path.name] is not None and listed[path.name] != _stamp(path):
            raise Refused(f"{path}: changed since {tool} wrote it; it is left as it is: move it "
                          f"away to keep it, or choose another path")
        if not overwrite:
            raise Refused(f"{path}: holds an earlier output of {tool}; pass --overwrite to "
                          f"replace it, or choose another path")


def record(tool: str, paths: list[Path], manifest: Path, stamped: bool = True) -> None:
    """Write (atomically) the manifest that marks `paths` as `tool`'s own, keeping the entries
    of files it listed before; `stamped=False` for a file that grows (an appended JSONL)."""
    files = read_manifest(manifest, tool)  # a file of the user's at that name is refused too
    files.update({Path(p).name: _stamp(Path(p)) if stamped else None for p in paths})
    atomic_write_json(manifest, {"tool": tool, "files": files})


def check_folder(tool: str, folder: Path, overwrite: bool) -> None:
    """A folder output may be new, empty, or `tool`'s own (its manifest inside)."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise Refused(f"{folder}: exists and is not a folder {tool} made; choose another path")
    if not any(folder.iterdir()):
        return
    if not os.path.lexists(manifest_of(folder, folder=True)):
        raise Refused(f"{folder}: a folder with files {tool} did not write; it is left as it is: "
                      f"choose another path, or an empty or new folder")
    read_manifest(manifest_of(folder, folder=True), tool)
    if not overwrite:
        raise Refused(f"{folder}: holds an earlier output of {tool}; pass --overwrite to replace "
                      f"the files it lists, or choose another path")


def install_folder(tool: str, staged: Path, folder: Path, overwrite: bool) -> Path:
    """Move the files of `staged` (a temporary folder this process made beside `folder`) into
    `folder`: a rename of the whole folder when it is new, else file by file, each one first
    checked as `tool`'s own. Files in `folder` that the manifest does not list stay."""
    folder = Path(folder)
    names = sorted(p.name for p in staged.iterdir())
    if not os.path.lexists(folder):
        record(tool, [staged / n for n in names], manifest_of(staged, folder=True))
        os.rename(staged, folder)
        return folder
    check_folder(tool, folder, overwrite)
    check_targets(tool, [folder / n for n in names], manifest_of(folder, folder=True), overwrite)
    for name in names:
        os.replace(staged / name, folder / name)
    shutil.rmtree(staged)  # emptied: only this process's own temporary folder
    record(tool, [folder / n for n in names], manifest_of(folder, folder=True))
    return folder


@contextmanager
def staging_folder(folder: Path) -> Iterator[Path]:
    """A new temporary folder beside `folder`, removed if it is still there at the end."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield staged
    finally:
        if staged.exists():
            shutil.rmtree(staged)


@contextmanager
def exclusive(path: str | Path, tool: str) -> Iterator[None]:
    """Hold an OS lock on `.<name>.lock` beside `path` for the block; a second holder is
    refused at once. The lock file stays (removing it would race with a newcomer)."""
    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise Refused(f"{path}: cannot write there ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refused(f"{path}: another {tool} run is writing it now; wait for it to end, "
                          f"or choose another output") from None
        yield
    finally:
        os.close(fd)
