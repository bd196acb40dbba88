"""Run the notebook series in order for one preset (what `make run` calls).

Executed copies go to runs/<preset>/notebooks/, and the time each notebook took to
runs/<preset>/series_timing.json (README's time table: `make readme`); a partial run (--from,
--only) appends a line to series_timing.partial.jsonl instead, so the whole series' record stays
and partial runs one after another (--only 00, then --only 01) need no --overwrite. With
--experiment NAME every notebook gets EXPERIMENT=NAME and all of it goes to runs/<preset>/NAME/;
--set gives every notebook the same OVERRIDES (Config fields), as its parameters cell would.

    python -m helpers.tools.series --preset smoke [--experiment high-lr] [--from 04] [--only 07]
    python -m helpers.tools.series --preset workshop --experiment fact-switch --from 06 \
        --set fact_check_samples=2

The executed copies and the timing record are this command's own files (listed in a manifest
beside them, helpers/core/owned.py): a rerun replaces them only with --overwrite (`make run` passes
it), and never a file it did not write.

Exit status:
  0  every notebook ran
  1  a notebook failed: its own error is printed first, the executed copy keeps the traceback
  2  usage error
  3  a notebook found the model or data missing (offline without a copy: see the message)
  4  refused: an executed copy or the timing record exists and is not this command's own, or is
     and --overwrite was not given
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import papermill
from papermill.exceptions import PapermillExecutionError

from helpers.core import owned
from helpers.core.config import PRESETS, REPO_ROOT, get_config, parse_overrides
from helpers.core.io import atomic_output, atomic_write_json
from helpers.tools import assets

TOOL = "helpers.tools.series"
# a notebook that raises one of these stopped on something the user fixes, not on a bug
MISSING_ERRORS = ("ModelNotAvailable", "FileNotFoundError")

NOTEBOOKS = REPO_ROOT / "notebooks"
# Every notebook's metadata names this kernel; `make setup` registers it (the project's .venv, with
# OpenBLAS preloaded on Linux), so JupyterLab, papermill and the tests all run the same one.
KERNEL = "humanizer"


def kernel_name() -> str:
    """KERNEL, or a one-line error saying how to register it."""
    # deferred: jupyter_client is slow to import, and only this path needs it
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        raise owned.UserError(f"the Jupyter kernel {KERNEL!r} is not registered: run `make setup` "
                        "(or: python -m ipykernel install --sys-prefix --name humanizer)")
    return KERNEL


def series(start: str = "00", only: str | None = None) -> list[Path]:
    books = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        return [p for p in books if p.name.startswith(only)]
    return [p for p in books if p.name[:2] >= start]


def timing_file(start: str = "00", only: str | None = None) -> str:
    """README's time table reads one whole series; a partial rerun (often from caches) goes beside it."""
    return "series_timing.json" if start == "00" and not only else "series_timing.partial.jsonl"


def require_experiment(overrides: dict, experiment: str) -> None:
    if overrides and not experiment:
        raise ValueError("--set needs --experiment NAME: give the run a name with --experiment, "
                         "so the default run's artifacts stay as they are")


def busy_cpu_seconds(proc_stat_first_line: str, ticks_per_second: int) -> float:
    """CPU time all cores spent working since boot, from /proc/stat's `cpu` line (user, nice,
    system, idle, iowait, irq, softirq, ...): idle and iowait are not work."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, proc_stat_first_line.split()[1:8])
    return (user + nice + system + irq + softirq) / ticks_per_second


def cpu_clocks() -> tuple[float | None, float]:
    """(the machine's busy CPU seconds, or None where /proc/stat is missing; this process's and
    its finished children's CPU seconds, the notebook kernels included)."""
    try:
        with open("/proc/stat") as f:
            machine = busy_cpu_seconds(f.readline(), os.sysconf("SC_CLK_TCK"))
    except OSError:
        machine = None
    own = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return machine, sum(r.ru_utime + r.ru_stime for r in own)


def other_work_cores(before: tuple, after: tuple, wall_seconds: float) -> float | None:
    """How many cores other processes kept busy on average while the series ran: the machine's
    busy time minus the series' own. A load average cannot say this: it counts the series' threads."""
    if before[0] is None or after[0] is None:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(other, 0.0) / wall_seconds, 2)


def written_before_manifests(path: Path) -> bool:
    """A copy or timing record this command wrote before it kept manifests: a notebook with
    papermill's metadata, or a timing record with its total and machine."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    if path.suffix == ".ipynb":
        return isinstance(data.get("metadata"), dict) and "papermill" in data["metadata"]
    return {"total", "machine"} <= set(data)


def adopt_earlier(paths: list[Path], manifest: Path) -> None:
    """List in the manifest the files of runs made before it existed, so that --overwrite may
    replace them; anything else stays refused."""
    listed = owned.read_manifest(manifest, TOOL)
    earlier = [p for p in paths if p.is_file() and not p.is_symlink() and p.name not in listed
               and written_before_manifests(p)]
    if earlier:
        owned.record(TOOL, earlier, manifest)


class NotebookFailed(owned.UserError):
    """A notebook of the series raised: its own error, not papermill's wrapping of it."""
    exit_code = 1


def notebook_failure(book: Path, copy: Path, err) -> NotebookFailed:
    """One line with the failing cell's exception (papermill's ename/evalue), then where the
    executed copy with the whole traceback is."""
    message = (f"{book.name} failed in cell [{err.exec_count}]: {err.ename}: {err.evalue}\n"
               f"the executed notebook, with the traceback, is {copy}")
    return NotebookFailed(message, owned.EXIT_MISSING if err.ename in MISSING_ERRORS else None)


def execute(book: Path, copy: Path, parameters: dict, kernel: str) -> None:
    """Run one notebook into `copy`, written atomically (also when it fails: the copy shows
    where); a failure is NotebookFailed."""
    failure = None
    with atomic_output(copy, suffix=".tmp.ipynb") as tmp:
        try:
            papermill.execute_notebook(str(book), str(tmp), kernel_name=kernel,
                                       cwd=str(book.parent), parameters=parameters,
                                       progress_bar=False)
        except PapermillExecutionError as err:
            failure = err
    if failure is not None:
        raise notebook_failure(book, copy, failure)


def run(preset: str, start: str = "00", only: str | None = None, experiment: str = "",
        overrides: dict | None = None, overwrite: bool = False) -> dict:
    overrides = dict(overrides or {})
    require_experiment(overrides, experiment)
    kernel = kernel_name()
    try:
        assets.check()
    except assets.PackError as err:
        raise owned.UserError(str(err), err.exit_code) from None
    cfg = get_config(preset, experiment=experiment, **overrides)
    out_dir = cfg.path("notebooks")
    out_dir.mkdir(exist_ok=True)
    books, copies_manifest = series(start, only), owned.manifest_of(out_dir, folder=True)
    timing_path = cfg.path(timing_file(start, only))
    copies = [out_dir / b.name for b in books]
    adopt_earlier(copies, copies_manifest)
    whole = timing_path.suffix == ".json"  # a partial run's owned.record is appended, never replaced
    adopt_earlier([timing_path], owned.manifest_of(timing_path))
    owned.check_targets(TOOL, copies, copies_manifest, overwrite)
    owned.check_targets(TOOL, [timing_path], owned.manifest_of(timing_path), overwrite or not whole)
    os.environ["HUMANIZER_PRESET"] = preset
    os.environ["HUMANIZER_EXPERIMENT"] = experiment
    timing = {}
    total = time.perf_counter()
    clocks_before = cpu_clocks()
    parameters = {"PRESET": preset, "EXPERIMENT": experiment, "OVERRIDES": overrides}
    for book in books:
        print(f"== {book.name} (preset {preset})", flush=True)
        start_time = time.perf_counter()
        try:
            execute(book, out_dir / book.name, parameters, kernel)
        finally:
            if (out_dir / book.name).exists():
                owned.record(TOOL, [out_dir / book.name], copies_manifest)
        timing[book.name] = round(time.perf_counter() - start_time, 1)
        print(f"   {timing[book.name]:.0f} s", flush=True)
    timing["total"] = round(time.perf_counter() - total, 1)
    if overrides:
        timing["overrides"] = overrides
    # other work on the machine slows the series down: owned.record how much of it there was
    timing["machine"] = {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(),
                         "platform": platform.platform(),
                         "load_average_15min": round(os.getloadavg()[2], 1),
                         "other_work_cores": other_work_cores(clocks_before, cpu_clocks(),
                                                              timing["total"])}
    if whole:
        atomic_write_json(timing_path, timing)
    else:
        with open(timing_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"notebooks": [b.name for b in books], **timing}) + "\n")
    owned.record(TOOL, [timing_path], owned.manifest_of(timing_path), stamped=whole)
    print(f"== done in {timing['total'] / 60:.1f} min; executed notebooks in {out_dir}")
    return timing


def main(argv: list[str] | None = None) -> int:
    parser = owned.command_parser("python -m helpers.tools.series", __doc__)
    parser.add_argument("--preset", default="workshop", choices=sorted(PRESETS))
    parser.add_argument("--from", dest="start", default="00", help="first notebook number")
    parser.add_argument("--only", default=None, help="run just this notebook number")
    parser.add_argument("--experiment", default="", help="a name: artifacts go to runs/<preset>/NAME/")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE[,...]",
                        help="Config overrides for every notebook (needs --experiment)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this command's own executed copies and timing owned.record")
    args = parser.parse_args(argv)
    try:
        overrides = {k: v for text in args.set for k, v in parse_overrides(text).items()}
        require_experiment(overrides, args.experiment)
    except ValueError as error:
        parser.error(f"--set: {error}")
    return owned.exit_code_of(
        lambda: run(args.preset, args.start, args.only, args.experiment, overrides, args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
