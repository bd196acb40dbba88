"""Copy generated tables into the documents, each between its markers: README.md gets the time
each notebook took per preset (runs/<preset>/series_timing.json, written by helpers.tools.series) and one
example rewrite; docs/RESULTS.md notebook 07's results, notebook 03's equal-size quantization table
and, when they were run, the experiments on validation drafts (experiments/decoding.py,
experiments/quant_downstream.py, experiments/compare_runs.py); docs/BENCHMARKS.md bench/quant.py's
table.

    python -m helpers.tools.update_docs --preset workshop      # what `make readme` runs

Only the text between this command's own markers (<!-- name:start --> ... <!-- name:end -->)
changes; each document is rewritten atomically, and never through a symlink or when read-only.
Exit status: 0 updated; 2 a document holds none of these markers (nothing written); 4 a document
is not a writable regular file (nothing written).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys

from helpers.core import config
from helpers.core.config import PRESETS, REPO_ROOT, get_config
from helpers.core.io import atomic_write_text, read_json
from helpers.core.owned import UserError, check_plain_file, exit_code_of
from helpers.core.statistics import format_ci
from helpers.evaluate.scoring import ITEM_SCORES, load_rewrites
from helpers.evaluate.tables import SYSTEMS, column_name, markdown_table
from helpers.quant.anchors import ANCHORS


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def section(name: str, body: str) -> str:
    """`body` between the README markers called `name`."""
    start, end = markers(name)
    return f"{start}\n{body.strip()}\n{end}"


class MarkersMissing(UserError, ValueError):
    """A document lacks the markers of a section this command writes (exit 2)."""


TOOL = "helpers.tools.update_docs"
# runs/<preset>/experiments/<name>.md, written by experiments/<name>.py and by bench/quant.py
EXPERIMENT_TABLES = ("decoding", "fact_switch", "fact_switch_eval", "quant_downstream", "bench_quant",
                     "compare_runs", "compare_ranked_pairs", "compare_dpo_steps",
                     "compare_decoding", "compare_cut_loops", "compare_loop_switch",
                     "compare_loop_choice", "compare_dpo_loops", "compare_dry", "compare_eos_ramp",
                     "compare_content_words", "compare_content_words_lower",
                     "compare_restatement", "long_documents", "long_documents_dry",
                     "long_documents_ramp", "long_documents_restate",
                     "piece_lengths", "long_documents_short_pieces", "compare_short_pieces")
# all it writes
SECTIONS = ("timing", "headline", "example", "results", "quantization", *EXPERIMENT_TABLES)


def results_body(results_md: str, preset: str, timing: dict | None) -> str:
    """Notebook 07's results.md under a line saying where it came from."""
    stamp = dt.date.today().isoformat()
    minutes = f", whole series {timing['total'] / 60:.0f} min" if timing and "total" in timing else ""
    head = (f"Generated on {stamp} by `make readme` from `runs/{preset}/results.md` (notebook 07 "
            f"of `PRESET={preset} make run`{minutes}). Do not edit by hand.\n\n")
    return head + results_md


def headline_body(results_md: str, preset: str) -> str | None:
    """README's lead: the first two tables of notebook 07's results.md (what a reader sees in the
    rewrites, then every detector's P(AI) and gap closed), each with its legend, so that a gap
    closed is never shown without the loops and invented facts beside it. None when results.md
    has fewer than two tables."""
    blocks = results_md.strip().split("\n\n")
    tables = [i for i, b in enumerate(blocks) if b.startswith("|")]
    if len(tables) < 2:
        return None
    start = max(tables[0] - 1, 0)  # the paragraph that introduces the first table
    head = (f"Generated on {dt.date.today().isoformat()} by `make readme` from "
            f"`runs/{preset}/results.md` (notebook 07 of `PRESET={preset} make run`): the first two "
            "of its tables; docs/RESULTS.md has all of them, with the verdicts. Do not edit by hand.\n\n")
    return head + "\n\n".join(blocks[start:tables[1] + 2]) + "\n"


def replace_section(text: str, section: str, where="README.md", name: str = "results") -> str:
    start, end = markers(name)
    if start not in text or end not in text:
        raise MarkersMissing(f"{where}: {name} markers {start} / {end} not found; add that pair "
                             f"where the table belongs (nothing was written)")
    before, rest = text.split(start, 1)
    return before + section + rest.split(end, 1)[1]


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def machine_load(machine: dict) -> str:
    """What else ran beside the series. Older records have only the load average, which counts
    the series' own threads, so it cannot say whether other work was there."""
    other = machine.get("other_work_cores")
    if other is None:
        return (f"15-minute load average {machine['load_average_15min']:.1f} at the end, "
                "the series' own threads included")
    return (f"other processes kept {other:.2f} cores busy on average"
            + (", so an idle machine is faster" if other >= 0.1 else ": the machine was otherwise idle"))


def timing_table(runs_root=None) -> str:
    """Each notebook's measured time, one column per preset with a series_timing.json (the
    workshop column always, saying how to measure it when it is missing)."""
    runs_root = runs_root or config.RUNS_ROOT
    timings = {p: read_json(runs_root / p / "series_timing.json") for p in PRESETS
               if (runs_root / p / "series_timing.json").exists()}
    presets = [p for p in PRESETS if p in timings or p == "workshop"]
    books = sorted({k for t in timings.values() for k in t if k.endswith(".ipynb")})
    rows = [[f"`{b}`"] + [duration(timings[p][b]) if b in timings.get(p, {}) else "—"
                          for p in presets] for b in books]
    rows.append(["whole series"] + [duration(timings[p]["total"]) if "total" in timings.get(p, {})
                                    else "not measured yet" for p in presets])
    notes = [f"`{p}`: measured {m['date']} on {m['cpus']} CPU cores ({machine_load(m)})"
             for p, t in timings.items() if (m := t.get("machine"))]
    notes += [f"`{p}`: not measured yet; `PRESET={p} make run` writes "
              f"`runs/{p}/series_timing.json`, then `make readme`" for p in presets
              if p not in timings]
    head = ("Generated by `make readme` from `runs/<preset>/series_timing.json` (written by "
            "`PRESET=<preset> make run`). Do not edit by hand.\n\n")
    table = markdown_table(["notebook"] + [f"`{p}`" for p in presets], rows)
    return head + table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def quant_table(runs_dir, preset: str) -> str | None:
    """Notebook 03's comparison (runs/<preset>/quant_results.json) as a markdown table: each
    method at each equal-size point, KL with its CI, and the KL ratios to uniform and to the best
    anchor at that point. None when notebook 03 has not run."""
    path = runs_dir / "quant_results.json"
    if not path.exists():
        return None
    results = read_json(path)
    method = lambda row: row["config"].rsplit(" @ ", 1)[0]  # noqa: E731
    ratio = lambda kls, kl: f"{min(kls) / kl:.2f}" if kls else "—"  # noqa: E731
    rows = []
    for target in sorted({r["target"] for r in results["comparison"]}):
        part = [r for r in results["comparison"] if r["target"] == target]
        uniform = [r["kl"] for r in part if method(r) == "uniform"]
        anchors = [r["kl"] for r in part if method(r) in ANCHORS]
        rows += [[f"{target:g}", method(r), f"{r['bpw']:.3f}",
                  f"{r['kl']:.3f} [{r['kl_lo']:.3f}, {r['kl_hi']:.3f}]", f"{r['ppl']:.2f}",
                  f"{r['MB']:.1f}", ratio(uniform, r["kl"]), ratio(anchors, r["kl"])]
                 for r in part]
    head = (f"Generated on {dt.date.today().isoformat()} by `make readme` from "
            f"`runs/{preset}/quant_results.json` (notebook 03 of `PRESET={preset} make run`): "
            f"{results['heldout_texts']} held-out validation paragraphs, mean KL to the float32 "
            "reference with a 95% bootstrap CI over texts. Do not edit by hand.\n\n")
    note = ("\n\n× uniform, × best anchor: the KL of uniform round-to-nearest, or of the best "
            "anchor (uniform, `mixed_4_6`, gradient), at the same point divided by this row's KL "
            "(above 1: this method is better). The `mixed_4_6` rule sets its own size; the other "
            "methods are placed at it too.\n")
    return head + markdown_table(["target bpw", "method", "stored bpw", "KL [95% CI]",
                                  "perplexity", "MB", "× uniform", "× best anchor"], rows) + note


README = REPO_ROOT / "README.md"
RESULTS_DOC = REPO_ROOT / "docs" / "RESULTS.md"
BENCHMARKS_DOC = REPO_ROOT / "docs" / "BENCHMARKS.md"
DOCS = (README, RESULTS_DOC, BENCHMARKS_DOC)  # each generated section goes where its markers are


def example_item(rows: list[dict]) -> int:
    """Which evaluation draft README shows: a fixed pseudo-random one (the smallest hash of its
    id), so that no score, good or bad, chose it."""
    return min(range(len(rows)), key=lambda i: hashlib.sha1(str(rows[i].get("id", i)).encode()).hexdigest())


def score(p) -> str:
    """A P(AI) to two digits; '—' for a text the detector did not score (None or NaN)."""
    return "—" if p is None or p != p else f"{p:.2f}"


def example_section(runs_dir, preset: str) -> str | None:
    """One evaluation draft, its SFT and SFT+DPO rewrites and the human text, with every
    detector's P(AI) for each (notebook 06's rewrites.jsonl, notebook 07's item scores)."""
    rewrites, scores_path = runs_dir / "rewrites.jsonl", runs_dir / ITEM_SCORES
    if not rewrites.exists() or not scores_path.exists():
        return None
    rows, scores = load_rewrites(rewrites), read_json(scores_path)
    i = example_item(rows)
    texts = {"source": rows[i]["source"], **{k: rows[i]["outputs"][k] for k in ("sft", "sft+dpo")
                                             if k in rows[i]["outputs"]}, "human": rows[i]["human"]}
    quoted = "\n\n".join(f"**{SYSTEMS[k]}**\n\n> " + v.replace("\n", "\n> ") for k, v in texts.items())
    table = markdown_table(["text"] + [f"P(AI) {d}" for d in scores],
                           [[SYSTEMS[k]] + [score(scores[d].get(k, [None] * (i + 1))[i])
                                            for d in scores] for k in texts])
    return (f"Generated on {dt.date.today().isoformat()} by `make readme` from `runs/{preset}/` "
            f"(notebooks 06 and 07 of `PRESET={preset} make run`): evaluation draft {i + 1} of "
            f"{len(rows)}, picked by the hash of its id, not by its scores. Do not edit by hand."
            f"\n\n{quoted}\n\n{table}\n\nP(AI): each detector's probability that the text is "
            "AI-written (docs/RESULTS.md says which detectors can tell human text from the drafts "
            "at all).\n")


def generated_sections(preset: str) -> dict[str, str]:
    """{marker name: section body} for every table a run of `preset` has made so far (the time
    table always)."""
    cfg = get_config(preset)
    sections = {"timing": timing_table()}
    results = cfg.runs_dir / "results.md"
    if results.exists():
        timing_path = cfg.runs_dir / "series_timing.json"
        timing = read_json(timing_path) if timing_path.exists() else None
        results_md = results.read_text(encoding="utf-8")
        sections["results"] = results_body(results_md, preset, timing)
        if headline := headline_body(results_md, preset):
            sections["headline"] = headline
    for name, body in (("quantization", quant_table(cfg.runs_dir, preset)),
                       ("example", example_section(cfg.runs_dir, preset))):
        if body:
            sections[name] = body
    for name in EXPERIMENT_TABLES:  # each only when its script was run
        experiment = cfg.runs_dir / "experiments" / f"{name}.md"
        if experiment.exists():
            sections[name] = experiment.read_text(encoding="utf-8")
    return sections


def update_docs(preset: str, docs=DOCS, only: list[str] | None = None) -> list[str]:
    """Copy every generated section (or those named in `only`) into the documents that have its
    markers; returns the sections copied. Text outside the markers is never touched, and nothing
    is written unless every document is a writable regular file holding at least one pair of
    markers."""
    sections = {n: b for n, b in generated_sections(preset).items() if not only or n in only}
    updated = {}
    for doc in docs:
        check_plain_file(doc, TOOL)
        text = doc.read_text(encoding="utf-8")
        names = [n for n in SECTIONS if markers(n)[0] in text]
        if not names:
            raise MarkersMissing(f"{doc}: holds none of make readme's markers (<!-- timing:start "
                                 "--> ...); nothing was written")
        for name in dict.fromkeys(n for n in names if n in sections):
            text = replace_section(text, section(name, sections[name]), doc, name)
        updated[doc] = (text, [n for n in names if n in sections])
    for doc, (text, names) in updated.items():
        if text != doc.read_text(encoding="utf-8"):
            atomic_write_text(doc, text)
            print(f"{doc}: updated {', '.join(dict.fromkeys(names))}")
    if "results" not in sections:
        print(f"{get_config(preset).runs_dir / 'results.md'} does not exist: run notebook 07 "
              "first; the results tables are unchanged")
    return [n for _, names in updated.values() for n in dict.fromkeys(names)]


def main(argv: list[str] | None = None, docs=DOCS) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.update_docs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="workshop")
    parser.add_argument("--only", default="", metavar="NAME,...",
                        help="copy only these sections (say, everything but 'timing' after a "
                             "partial run, whose times are not a series')")
    args = parser.parse_args(argv)
    return exit_code_of(
        lambda: update_docs(args.preset, docs, [n for n in args.only.split(",") if n] or None))


if __name__ == "__main__":
    sys.exit(main())


# --- what a finished run recorded, for the notebooks' closing cells --------------------------------

RECORDED_MEASURES = {"p_ai": "P(AI)", "slop_per_1k": "Slop /1K", "loops": "Loops",
                     "restated": "Restated clause", "hit_cap": "Hit token cap",
                     "unfinished": "Ends mid-sentence", "invented_facts": "Invented facts /rewrite"}
PERCENT_MEASURES = ("loops", "restated", "hit_cap", "unfinished")


def recorded_rows(systems: tuple[str, ...], measure: str | tuple[str, ...] = "p_ai",
                  preset: str = "workshop", runs_root=None) -> str:
    """The rows of `systems` ("source", "base", "sft", "sft+dpo", "human") as a finished run of
    `preset` measured them (runs/<preset>/results.json, written by notebook 07), or a line saying
    which command makes that run. `measure`: "p_ai" (a column per detector) or one or more of
    RECORDED_MEASURES' other keys (a column each)."""
    path = (runs_root or config.RUNS_ROOT) / preset / "results.json"
    if not path.exists():
        return f"no {preset} results yet: `PRESET={preset} make run` writes {path}"
    results = read_json(path)
    rows = [r for r in results["systems"] if r["system"] in systems]
    if measure == "p_ai":
        names = list(results["detectors"])
        return markdown_table(["System"] + [f"P(AI) {column_name(results, d)}" for d in names],
                              [[r["label"]] + [format_ci(r["p_ai"][d]) for d in names] for r in rows])
    measures = (measure,) if isinstance(measure, str) else measure
    return markdown_table(["System"] + [RECORDED_MEASURES[m] for m in measures],
                          [[r["label"]] + [format_ci(r.get(m), 1 if m == "slop_per_1k" else 2,
                                                     percent=m in PERCENT_MEASURES)
                                           for m in measures] for r in rows])


def recorded_quant_rows(method: str, preset: str = "workshop", runs_root=None) -> str:
    """Notebook 03's comparison table of a finished `preset` run, header and `method`'s rows."""
    table = quant_table((runs_root or config.RUNS_ROOT) / preset, preset)
    if table is None:
        return f"no {preset} quantization results yet: `PRESET={preset} make run` writes them"
    return "\n".join(line for line in table.splitlines()
                     if line.startswith(("| target bpw", "|---")) or f"| {method} |" in line)
