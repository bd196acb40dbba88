"""Render the executed series to HTML pages, to read a run without running it (`make html`).

The executed copies that `make run` leaves in runs/<preset>/notebooks/ become one page each,
runs/<preset>/html/NN_name.html (nbconvert's HTMLExporter, lab template; every image is a data:
URI inside the page, so a page can be mailed or opened anywhere on its own), and an index.html
that lists the pages in series order with each notebook's title (its first markdown heading) and
its run time from series_timing.json (or the latest partial run's series_timing.partial.jsonl).

    python -m helpers.tools.render_html --preset workshop [--experiment NAME] [--upto 05]

The html folder is this command's own (a manifest inside it, helpers/core/owned.py): a rerun
replaces its own pages only with --overwrite (`make html` passes it), never a file it did not
write; the pages are rendered into a temporary folder beside it and moved into place.

Exit status:
  0  every page written, no cell had an error output
  1  every page written, but a cell has an error output: each one is named (notebook and cell)
  2  usage error
  3  an executed notebook is missing: run the series first (make run PRESET=...)
  4  refused: the html folder or a file in it is not this command's own, or is and --overwrite
     was not given
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.core import config
from helpers.core.config import PRESETS
from helpers.core.io import current_umask
from helpers.core.owned import (
    EXIT_MISSING,
    UserError,
    check_folder,
    check_targets,
    command_parser,
    install_folder,
    manifest_of,
    staging_folder,
)

TOOL = "helpers.tools.render_html"
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"  # where the series ran (its cwd)
EXIT_ERROR_OUTPUT = 1


@dataclass
class CellError:
    """One error output of an executed cell: where it is and what it raised."""
    notebook: str
    index: int  # the cell's position in the notebook, from 1
    execution_count: int | None
    ename: str
    evalue: str

    def __str__(self) -> str:
        count = "" if self.execution_count is None else f" [{self.execution_count}]"
        return (f"{self.notebook}: cell{count} (cell {self.index} of the notebook) has an error "
                f"output: {self.ename}: {self.evalue}")


def series_names(upto: str = "99") -> list[str]:
    """The series' notebook names in order (notebooks/NN_*.ipynb), up to number `upto`."""
    return sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb") if p.name[:2] <= upto)


def run_command(preset: str, experiment: str = "") -> str:
    """The command that writes the executed notebooks of this run."""
    return f"make run PRESET={preset}" + (f" EXPERIMENT={experiment}" if experiment else "")


def executed_copies(run_dir: Path, names: list[str], how_to_run: str) -> list[Path]:
    """The executed copy of every notebook in `names`; the first missing one is exit 3."""
    copies = [run_dir / "notebooks" / name for name in names]
    for i, copy in enumerate(copies):
        if not copy.is_file():
            upto = names[i - 1][:2] if i else ""
            fewer = (f", or render fewer notebooks (--upto {upto}, make html UPTO={upto})"
                     if i else "")
            raise UserError(f"{copy}: the executed notebook is missing: run the series first "
                            f"({how_to_run}){fewer}", EXIT_MISSING)
    return copies


def title_of(nb, fallback: str) -> str:
    """The text of the notebook's first markdown heading (`# 00 · Tour: ...`), else `fallback`."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.lstrip().startswith("#"):
                text = line.strip().lstrip("#").strip()
                if text:
                    return text
    return fallback


def error_outputs(nb, name: str) -> list[CellError]:
    """Every error output of the notebook's code cells, in order."""
    return [CellError(name, index, cell.get("execution_count"), out.get("ename", ""),
                      out.get("evalue", ""))
            for index, cell in enumerate(nb.cells, start=1) if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def run_times(run_dir: Path) -> dict[str, float]:
    """Seconds each notebook took: the whole series' record, and for a notebook it lacks, the
    latest partial run (--only, --from) that ran it. Unreadable records give nothing."""
    times: dict[str, float] = {}
    partial = run_dir / "series_timing.partial.jsonl"
    try:
        lines = partial.read_text(encoding="utf-8").splitlines() if partial.is_file() else []
    except OSError:
        lines = []
    for line in lines:  # later lines are later runs: they win
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            times.update({k: v for k, v in row.items() if k.endswith(".ipynb")
                          and isinstance(v, (int, float))})
    try:
        whole = json.loads((run_dir / "series_timing.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        whole = {}
    if isinstance(whole, dict):
        times.update({k: v for k, v in whole.items() if k.endswith(".ipynb")
                      and isinstance(v, (int, float))})
    return times


def duration(seconds: float) -> str:
    """`45 s`, `5 min 30 s`, `1 h 02 min`: a run time as a reader says it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def exporter():
    """nbconvert's HTML exporter with images embedded: the lab template, or the default one
    where this nbconvert has no lab template."""
    # deferred: nbconvert is slow to import, and only this path needs it
    from nbconvert import HTMLExporter

    try:
        exp = HTMLExporter(template_name="lab", embed_images=True)
        exp.template  # noqa: B018 -- loads the template now, so a missing one fails here
        return exp
    except Exception:  # nbconvert raises jinja2's or its own not-found errors
        return HTMLExporter(embed_images=True)


def render_page(nb, title: str, exp) -> str:
    """One notebook as a self-contained HTML page titled `title`; markdown images are looked up
    where the series ran the notebook (notebooks/)."""
    body, _ = exp.from_notebook_node(nb, resources={"metadata": {"name": title,
                                                                 "path": str(NOTEBOOKS)}})
    return body


INDEX_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
ol { padding-left: 0; list-style: none; }
li { display: flex; justify-content: space-between; gap: 1rem; padding: .4rem 0;
     border-bottom: 1px solid #ddd; }
.time { color: #555; white-space: nowrap; }
.error { color: #b00; font-weight: 600; }
"""


def index_page(run_label: str, entries: list[dict]) -> str:
    """index.html: the pages in series order, each with its title, run time and error count."""
    rows = []
    for e in entries:
        time_text = duration(e["seconds"]) if e["seconds"] is not None else ""
        errors = (f' <span class="error">{e["errors"]} error output'
                  f'{"s" if e["errors"] > 1 else ""}</span>' if e["errors"] else "")
        rows.append(f'<li><a href="{html.escape(e["page"])}">{html.escape(e["title"])}</a>'
                    f'<span class="time">{html.escape(time_text)}{errors}</span></li>')
    items = "\n".join(rows)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{html.escape(run_label)}: the executed notebooks</title>'
            f'<style>{INDEX_STYLE}</style></head>\n<body>\n'
            f'<h1>{html.escape(run_label)}: the executed notebooks</h1>\n'
            f'<ol>\n{items}\n</ol>\n</body></html>\n')


def render(run_dir: Path, names: list[str], run_label: str, how_to_run: str,
           overwrite: bool = False) -> tuple[Path, list[CellError]]:
    """Write run_dir/html/ (a page per notebook in `names`, and index.html); return the folder
    and the error outputs found. Everything is checked before anything is rendered."""
    # deferred: nbformat is slow to import, and only this path needs it
    import nbformat

    out_dir = run_dir / "html"
    copies = executed_copies(run_dir, names, how_to_run)
    pages = [Path(name).stem + ".html" for name in names]
    check_folder(TOOL, out_dir, overwrite)
    check_targets(TOOL, [out_dir / p for p in pages + ["index.html"]],
                  manifest_of(out_dir, folder=True), overwrite)
    times, exp = run_times(run_dir), exporter()
    errors, entries = [], []
    with staging_folder(out_dir) as staged:
        for copy, page in zip(copies, pages):
            nb = nbformat.read(copy, as_version=4)
            title = title_of(nb, copy.stem)
            found = error_outputs(nb, copy.name)
            errors += found
            (staged / page).write_text(render_page(nb, title, exp), encoding="utf-8")
            entries.append({"page": page, "title": title, "seconds": times.get(copy.name),
                            "errors": len(found)})
        (staged / "index.html").write_text(index_page(run_label, entries), encoding="utf-8")
        # mkdtemp made the folder private (0700): a new html folder should be like any other
        os.chmod(staged, 0o777 & ~current_umask())
        install_folder(TOOL, staged, out_dir, overwrite)
    return out_dir, errors


def two_digits(text: str) -> str:
    """A notebook number as the series names it: 00 to 99."""
    if len(text) != 2 or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: a notebook number, two digits (05)")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m helpers.tools.render_html", __doc__)
    parser.add_argument("--preset", default="workshop", choices=sorted(PRESETS))
    parser.add_argument("--experiment", default="", help="render runs/<preset>/NAME/ instead")
    parser.add_argument("--upto", default="99", metavar="NN", type=two_digits,
                        help="render notebooks 00..NN only (a series run that stopped early)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this command's own earlier pages")
    args = parser.parse_args(argv)
    names = series_names(args.upto)
    if not names:
        parser.error(f"--upto {args.upto}: no notebook numbered that low in {NOTEBOOKS}")
    run_dir = config.RUNS_ROOT / args.preset / args.experiment if args.experiment \
        else config.RUNS_ROOT / args.preset
    label = f"{args.preset}/{args.experiment}" if args.experiment else args.preset
    try:
        out_dir, errors = render(run_dir, names, label, run_command(args.preset, args.experiment),
                                 args.overwrite)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{len(names)} pages and index.html in {out_dir}"
          + (f"; {len(errors)} error output(s) above" if errors else ""))
    return EXIT_ERROR_OUTPUT if errors else 0


if __name__ == "__main__":
    sys.exit(main())
