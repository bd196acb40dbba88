"""Copy generated tables into README.md, each between its markers: notebook 07's results table
and, when it was run, the decoding experiment on validation drafts (experiments/decoding.py).

    python -m helpers.report --preset workshop
"""
from __future__ import annotations

import argparse
import datetime as dt

from .config import REPO_ROOT, get_config
from .io import atomic_write_text

def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def section(name: str, body: str) -> str:
    """`body` between the README markers called `name`."""
    start, end = markers(name)
    return f"{start}\n{body.strip()}\n{end}"


START, END = markers("results")


def readme_section(results_md: str, preset: str, timing: dict | None) -> str:
    stamp = dt.date.today().isoformat()
    minutes = f", whole series {timing['total'] / 60:.0f} min" if timing and "total" in timing else ""
    head = (f"Generated on {stamp} by `PRESET={preset} make run` (notebook 07 → "
            f"`runs/{preset}/results.md`{minutes}). Do not edit by hand.\n\n")
    return section("results", head + results_md)


def replace_section(text: str, section: str, where="README.md", name: str = "results") -> str:
    start, end = markers(name)
    if start not in text or end not in text:
        raise ValueError(f"{where}: {name} markers {start} / {end} not found")
    before, rest = text.split(start, 1)
    return before + section + rest.split(end, 1)[1]


def update_readme(preset: str, readme=REPO_ROOT / "README.md") -> bool:
    from .io import read_json

    cfg = get_config(preset)
    results = cfg.runs_dir / "results.md"
    if not results.exists():
        print(f"{results} does not exist: run notebook 07 first; README unchanged")
        return False
    timing_path = cfg.runs_dir / "series_timing.json"
    timing = read_json(timing_path) if timing_path.exists() else None
    text = readme.read_text(encoding="utf-8")
    text = replace_section(text, readme_section(results.read_text(encoding="utf-8"), preset,
                                                timing), readme)
    experiment = cfg.runs_dir / "experiments" / "decoding.md"
    if experiment.exists():
        text = replace_section(text, section("decoding", experiment.read_text(encoding="utf-8")),
                               readme, "decoding")
    atomic_write_text(readme, text)
    print(f"README.md updated from {results}" + (f" and {experiment}" if experiment.exists()
                                                  else ""))
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="workshop")
    update_readme(parser.parse_args().preset)


if __name__ == "__main__":
    main()
