"""Each notebook's header says how long it takes, at smoke and at workshop: a learner plans with a
number, not with a pointer to another file. The numbers are copied from README's time table
(itself generated from runs/<preset>/series_timing.json), so header and table never disagree;
`make readme` updates both.

    python -m helpers.tools.notebook_times   # after make readme, or on its own
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from helpers.core.config import REPO_ROOT
from helpers.core.io import atomic_write_text

README = REPO_ROOT / "README.md"
NOTEBOOKS = REPO_ROOT / "notebooks"
# "**Time:** ..." up to the end of its sentence (a period before a blank line or a bold label)
TIME = re.compile(r"\*\*Time:\*\*.*?\.(?=\s*\n\s*\n|\s*\n\*\*|\s*$)", re.S)


def recorded_times(readme: str) -> dict[str, dict[str, str]]:
    """{notebook file: {preset: time}} from the table between README's timing markers."""
    start, end = "<!-- timing:start -->", "<!-- timing:end -->"
    if start not in readme or end not in readme:
        return {}
    rows = [line.strip().strip("|").split("|") for line in
            readme.split(start, 1)[1].split(end, 1)[0].splitlines() if line.startswith("|")]
    presets = [cell.strip().strip("`") for cell in rows[0][1:]]
    times = {}
    for cells in rows[2:]:
        book = cells[0].strip().strip("`")
        if book.endswith(".ipynb"):
            times[book] = {p: c.strip() for p, c in zip(presets, cells[1:])
                           if re.fullmatch(r"[\d.]+ (s|min)", c.strip())}
    return times


def time_sentence(times: dict[str, str]) -> str:
    """'**Time:** 52 s at `smoke`, 9.6 min at `workshop` on 2 CPU cores ...' for one notebook."""
    if not times:
        return ("**Time:** not measured yet: `PRESET=workshop make run`, then `make readme`, "
                "writes it here.")
    measured = ", ".join(f"{t} at `{p}`" for p, t in times.items())
    return (f"**Time:** {measured}, measured by `make run` on a 2-core CPU (README's time table "
            "has the dates; `make readme` updates this line).")


def with_time(header: str, sentence: str) -> str:
    """The header with its Time sentence replaced; ValueError when it has none."""
    if not TIME.search(header):
        raise ValueError("the header has no '**Time:** ...' sentence")
    return TIME.sub(lambda _: sentence, header, count=1)


def update_notebook_times(readme: Path = README, folder: Path = NOTEBOOKS) -> list[str]:
    """Rewrite the Time sentence of each notebook's first cell from README's table; returns the
    notebooks changed. Only that sentence changes, and each file is replaced atomically."""
    times = recorded_times(readme.read_text(encoding="utf-8"))
    changed = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        header = "".join(nb["cells"][0]["source"])
        new = with_time(header, time_sentence(times.get(path.name, {})))
        if new != header:
            nb["cells"][0]["source"] = new.splitlines(keepends=True)
            atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(path.name)
    return changed


def main() -> int:
    for name in update_notebook_times():
        print(f"notebooks/{name}: Time updated from README's table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
