"""Rewrite AI drafts with the tutorial's model: a JSONL file, a .txt/.md document, a folder of them,
or stdin.

    python -m helpers.tools.rewrite_files --input drafts.jsonl --output rewrites.jsonl --adapter sft+dpo
    python -m helpers.tools.rewrite_files --input essay.md --output essay.human.md --preset workshop
    python -m helpers.tools.rewrite_files --input notes/ --output notes.jsonl
    echo "A draft to rewrite." | python -m helpers.tools.rewrite_files --adapter sft

Input (--input, "-" is stdin): JSONL (plain or gzip, told apart by content), one object per line,
the draft in "text" (or "ai"), an optional "id" (a string or a number; default: the line number);
or one .txt/.md document; or a folder of them (the id is the file's path inside the folder).
Output (--output, default "-" is stdout): JSONL rows {"id", "source", "output", "preset",
"adapter", "hit_cap", "settings"} followed by the input row's other fields (one whose name is
already taken is kept as "input_<name>", e.g. "input_source"); a .txt/.md output is the rewritten
document itself. "settings" records the fact and loop switches that made the row. --adapter is a
system of helpers/infer/systems.py: base, sft, dpo-only, sft+dpo (notebooks 04-06).

Long documents are cut at blank lines and rewritten paragraph by paragraph (a paragraph too long
for the model between sentences), then put back together in order; headings, code blocks, lists
and tables pass through unchanged (helpers/infer/chunking.py). So do prose pieces of fewer than
min_piece_words words (30: titles, one-line dialogue) beside longer ones: the model does not
rewrite them well. A document of short pieces alone is rewritten.

JSONL rows are appended, and flushed, as each document is done: rerunning the same command resumes,
skipping the ids already in the output (rows repeated in it are reported). Resuming with other
--fact-check or --loop-check settings is refused unless --allow-mixed is given. Nothing is
overwritten: an input with nothing new leaves the output as it was; a file that humanize did not
write (it marks its own with a .<name>.outputs.json beside them) is never changed; its own earlier
output is replaced only with --overwrite. A second run on an output in use is refused at once. Bad
lines (and duplicate ids: the first one is kept) are reported on stderr as file:line and skipped.

Exit status:
  0    every document rewritten, or already in the output
  1    done, but some input lines or files were skipped (each reported on stderr)
  2    usage error, or an input file that cannot be read
  3    the model or the adapter is not available
  4    the output is not writable, or writing it would lose data (it is the input, is not a
       humanize output, was made with another preset or adapter or text or settings, is a
       text file that exists, or another run is writing it)
  5    the rewriting failed (traceback on stderr; the rows written until then are kept)
  130  interrupted by Ctrl-C or SIGTERM (the rows written until then are kept; rerun to resume)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.io import (
    DataError,
    ReadReport,
    atomic_write_bytes,
    atomic_write_text,
    iter_jsonl,
    open_binary,
    read_text_file,
)
from helpers.core.models import ModelNotAvailable
from helpers.core.owned import Refused, check_targets, exclusive, manifest_of, read_manifest, record
from helpers.infer.chunking import Piece, join_pieces, split_document
from helpers.infer.humanizer import Humanizer
from helpers.infer.systems import SYSTEMS

TEXT_FIELDS = ("text", "ai")
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
OUR_FIELDS = ("id", "source", "output", "preset", "adapter", "hit_cap", "settings")
TOOL = "helpers.tools.rewrite_files"
EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, EXIT_NO_MODEL, EXIT_OUTPUT, EXIT_FAILED = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Arguments that cannot work together (exit 2)."""


class OutputError(Refused):
    """The output cannot be written, or writing it would lose data (exit 4)."""


class ModelMissing(Exception):
    """The model or an adapter is not there (exit 3)."""


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that `finally` blocks run (exit 130)."""


@dataclass
class Draft:
    id: str
    text: str
    where: str  # file:line, for messages
    extra: dict = field(default_factory=dict)  # the input row's other fields, carried over


# ---------------------------------------------------------------- reading

def _json_type(value) -> str:
    return {type(None): "null", bool: "a boolean", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _draft_id(obj: dict, line_no: int) -> tuple[str | None, str | None]:
    """(id, None) or (None, why the row's id is unusable)."""
    if "id" not in obj:
        return str(line_no), None
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"'id' must be a string or a number, not {_json_type(value)}"
    if isinstance(value, str) and not value.strip():
        return None, "'id' is empty"
    return str(value), None


def read_jsonl_drafts(source, name: str) -> tuple[list[Draft], list[str]]:
    """The drafts of a JSONL file or stream, and a "file:line: why" message for each line
    skipped."""
    report = ReadReport(name)
    drafts, first_line = [], {}
    for line_no, obj in iter_jsonl(source, report, name=name):
        text_field = next((f for f in TEXT_FIELDS if f in obj), None)
        text = obj.get(text_field) if text_field else None
        draft_id, bad_id = _draft_id(obj, line_no)
        if text_field is None:
            report.skip(line_no, "no 'text' (or 'ai') field")
        elif not isinstance(text, str) or not text.strip():
            report.skip(line_no, f"field {text_field!r} is empty or not text")
        elif bad_id:
            report.skip(line_no, bad_id)
        elif draft_id in first_line:
            report.skip(line_no, f"duplicate id {draft_id!r} (kept the one on line "
                                 f"{first_line[draft_id]})")
        else:
            first_line[draft_id] = line_no
            extra = {k: v for k, v in obj.items() if k not in ("id", text_field)}
            drafts.append(Draft(draft_id, text.strip(), f"{name}:{line_no}", extra))
    return drafts, [f"{name}:{n}: skipped: {why}" for n, why in sorted(report.skipped)]


def read_text_drafts(folder_or_file: Path) -> tuple[list[Draft], list[str]]:
    """One draft per .txt/.md file (the id is its path inside the folder); empty or undecodable
    files of a folder are skipped with a message."""
    if folder_or_file.is_file():
        text = read_text_file(folder_or_file)
        if not text.strip():
            return [], [f"{folder_or_file}: skipped: empty document"]
        return [Draft(folder_or_file.name, text.strip(), str(folder_or_file))], []
    drafts, skipped = [], []
    files = sorted(p for p in folder_or_file.rglob("*") if p.is_file()
                   and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(n.startswith(".") for n in p.relative_to(folder_or_file).parts))
    for path in files:
        try:
            text = read_text_file(path)
        except DataError as err:
            skipped.append(f"{err} (skipped)")
            continue
        if text.strip():
            name = path.relative_to(folder_or_file).as_posix()
            drafts.append(Draft(name, text.strip(), str(path)))
        else:
            skipped.append(f"{path}: skipped: empty document")
    return drafts, skipped


def input_kind(spec: str, fmt: str, stdin_head: bytes = b"") -> str:
    """"jsonl" or "text" for --input and --format (auto: by name; stdin by its first character)."""
    if fmt != "auto":
        return fmt
    if spec == "-":
        return "jsonl" if stdin_head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{" else "text"
    path = Path(spec)
    if path.is_dir() or path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    return "jsonl"


def read_inputs(spec: str, fmt: str) -> tuple[list[Draft], list[str], str, list[Path]]:
    """(drafts, skipped-line messages, "jsonl" | "text", the input files)."""
    if spec == "-":
        stream = open_binary(sys.stdin.buffer, "<stdin>")
        head = stream.read(64)
        stream.seek(0)
        kind = input_kind(spec, fmt, head)
        if kind == "jsonl":
            return (*read_jsonl_drafts(stream, "<stdin>"), kind, [])
        text = read_text_file(stream, "<stdin>")
        drafts = [Draft("-", text.strip(), "<stdin>")] if text.strip() else []
        return drafts, [] if drafts else ["<stdin>: skipped: empty document"], kind, []
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: file not found")
    kind = input_kind(spec, fmt)
    if kind == "jsonl":
        return (*read_jsonl_drafts(path, spec), kind, [path])
    drafts, skipped = read_text_drafts(path)
    return drafts, skipped, kind, [Path(d.where) for d in drafts] if path.is_dir() else [path]


# ---------------------------------------------------------------- the output

def output_kind(spec: str, input_kind_: str, n_drafts: int, folder_input: bool) -> str:
    if spec == "-":
        return "text" if input_kind_ == "text" and not folder_input else "jsonl"
    if spec.endswith(".gz"):
        raise UsageError(f"{spec}: write plain JSONL (rows are appended as they are made); "
                         f"compress it afterwards")
    kind = "text" if Path(spec).suffix.lower() in TEXT_SUFFIXES else "jsonl"
    if kind == "text" and (n_drafts > 1 or folder_input):
        raise UsageError(f"{spec}: a text output holds one document, the input has several; "
                         f"write JSONL (--output something.jsonl)")
    return kind


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(spec: str, kind: str, input_files: list[Path], overwrite: bool = False) -> None:
    """Refuse, before anything is generated, an output that cannot be written or would destroy
    something: the input itself, a folder, an existing text output."""
    if spec == "-":
        return
    path = Path(spec)
    for source in input_files:
        if _same_file(path, source):
            raise OutputError(f"{spec}: this is the input file ({source}); choose another --output")
    if path.is_dir():
        raise OutputError(f"{spec}: is a folder; give a file name")
    if kind == "text" or (overwrite and os.path.lexists(path)):
        check_targets(TOOL, [path], manifest_of(path), overwrite)
    read_manifest(manifest_of(path), TOOL)  # the marker's own name must be free or ours
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists():
            open(path, "ab").close()
    except OSError as err:
        raise OutputError(f"{spec}: cannot write there ({err.strerror or err})") from None


@dataclass
class Earlier:
    """What an earlier run left in a JSONL output."""
    rows: dict = field(default_factory=dict)  # by id, the first row of each
    cut_at: int | None = None  # where its last complete line ends, if an incomplete one follows
    repeated: list = field(default_factory=list)  # ids of rows that repeat an earlier row's id
    marked: bool = False  # the manifest beside it names it as humanize's own


def read_done(spec: str, preset: str, adapter: str) -> Earlier:
    """The rows an earlier run left in a JSONL output. An output that is not ours, or was made by
    another preset or adapter, is refused; so is an incomplete last line in a file humanize has
    not marked as its own (it would be cut off on resume)."""
    path = Path(spec)
    if spec == "-" or not path.exists():
        return Earlier()
    data = path.read_bytes()
    earlier = Earlier(marked=bool(read_manifest(manifest_of(path), TOOL)))
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        if not earlier.marked or not data[complete:].startswith(b'{"id": '):
            raise OutputError(f"{spec}: not a humanize output (its last line is not one of its "
                              f"rows); it is left as it is: choose another --output")
        earlier.cut_at = complete
    for line_no, raw in enumerate(data[:complete].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if not isinstance(row, dict) or not {"id", "source", "output"} <= set(row):
            raise OutputError(f"{spec}:{line_no}: not a humanize output row; choose another "
                              f"--output (this file is left as it is)")
        made_by = (row.get("preset"), row.get("adapter"))
        if made_by != (preset, adapter):
            raise OutputError(f"{spec}:{line_no}: made with --preset {made_by[0]} --adapter "
                              f"{made_by[1]}, not {preset} {adapter}; choose another --output")
        if str(row["id"]) in earlier.rows:
            earlier.repeated.append(str(row["id"]))
        else:
            earlier.rows[str(row["id"])] = row
    return earlier


def check_settings(spec: str, done: dict, settings: dict) -> None:
    """Rows made with other settings may not be mixed with this run's (without --allow-mixed)."""
    other = next((row for row in done.values() if row.get("settings") != settings), None)
    if other is not None:
        raise OutputError(
            f"{spec}: the row for id {other['id']!r} was made with settings "
            f"{json.dumps(other.get('settings'))}, this run's are {json.dumps(settings)}; rerun "
            f"with the same --fact-check and --loop-check options, add --allow-mixed to keep "
            f"both (each row records its own), or choose another --output")


def report_repeated(spec: str, repeated: list) -> str:
    if not repeated:
        return ""
    ids = ", ".join(map(repr, repeated[:5])) + (" ..." if len(repeated) > 5 else "")
    return (f"; {spec} holds {len(repeated)} repeated row{'s' * (len(repeated) != 1)} (ids "
            f"{ids}): the first row of each id counts, the file is left as it is")


class JsonlWriter:
    """Appends rows, one flushed line each, to a file (opened at the first row, so that a run with
    nothing to write leaves it as it was) or stdout."""

    def __init__(self, spec: str, cut_at: int | None = None, replace: bool = False):
        self.spec, self.cut_at, self.replace, self.file, self.count = spec, cut_at, replace, None, 0

    def _open(self):
        if self.spec == "-":
            return sys.stdout
        record(TOOL, [Path(self.spec)], manifest_of(self.spec), stamped=False)
        if self.replace:  # --overwrite of humanize's own earlier output
            atomic_write_bytes(self.spec, b"")
        f = open(self.spec, "a", encoding="utf-8")
        if self.cut_at is not None:
            size = os.path.getsize(self.spec)
            f.truncate(self.cut_at)
            print(f"{self.spec}: removed an incomplete last line ({size - self.cut_at} bytes) "
                  f"left by an interrupted run", file=sys.stderr)
        return f

    def write(self, row: dict) -> None:
        if self.file is None:
            self.file = self._open()
        try:
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.file.flush()
        except OSError as err:
            raise OutputError(f"{self.spec}: writing failed after {self.count} rows "
                              f"({err.strerror or err}); those rows are kept") from None
        self.count += 1

    def close(self) -> None:
        if self.file is not None and self.file is not sys.stdout:
            self.file.close()


# ---------------------------------------------------------------- rewriting

@dataclass
class Job:
    draft: Draft
    pieces: list[Piece]
    rewrites: list = field(default_factory=list)  # one per piece to rewrite, filled in order
    hit_cap: int = 0  # pieces that stopped at the generation cap

    @property
    def todo(self) -> int:
        return sum(p.rewrite for p in self.pieces)

    @property
    def complete(self) -> bool:
        return len(self.rewrites) == self.todo


@dataclass
class Stats:
    pieces: int = 0
    tokens: int = 0
    capped_pieces: int = 0
    capped_ids: list = field(default_factory=list)
    empty_pieces: int = 0


def rewrite_jobs(jobs: list[Job], humanizer, adapter: str, batch_size: int, emit, stats: Stats,
                 progress: bool = True) -> None:
    """Rewrite the pieces of all documents in batches of `batch_size` (a batch may span
    documents); each document is passed to `emit` as soon as all its pieces are back, in input
    order."""
    waiting = deque(jobs)  # not yet emitted
    queue = deque((job, k) for job in jobs for k, p in enumerate(job.pieces) if p.rewrite)
    started = time.monotonic()
    with tqdm(total=len(queue), unit="piece", desc="humanizing", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        while waiting and waiting[0].complete:
            emit(waiting.popleft())
        while queue:
            batch = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
            results = humanizer.rewrite_detailed([job.pieces[k].text for job, k in batch],
                                                 adapter=adapter)
            if len(results) != len(batch):
                raise RuntimeError(f"rewrite returned {len(results)} texts for {len(batch)} pieces")
            for (job, _), result in zip(batch, results):
                job.rewrites.append(result.text)
                job.hit_cap += bool(result.hit_cap)
                stats.tokens += result.n_tokens
                stats.empty_pieces += not result.text.strip()
            stats.pieces += len(batch)
            bar.update(len(batch))
            bar.set_postfix_str(f"{stats.tokens / max(time.monotonic() - started, 1e-9):.1f} tok/s")
            while waiting and waiting[0].complete:
                emit(waiting.popleft())


def make_row(job: Job, preset: str, adapter: str, settings: dict | None = None) -> dict:
    """The output row, then every other field of the input row: one whose name the row already
    uses is kept under "input_<name>" (prefixed again until it is free), never dropped."""
    output = join_pieces(job.pieces, job.rewrites)
    row = {"id": job.draft.id, "source": job.draft.text, "output": output, "preset": preset,
           "adapter": adapter, "hit_cap": job.hit_cap > 0, "settings": settings or {}}
    for name, value in job.draft.extra.items():
        while name in row or name in OUR_FIELDS:
            name = f"input_{name}"
        row[name] = value
    return row


def report_caps(stats: Stats, rows: bool) -> None:
    """Never truncate silently: say how many rewrites stopped at the length cap, and where."""
    if stats.capped_pieces:
        n_docs = len(stats.capped_ids)
        ids = ", ".join(map(repr, stats.capped_ids[:10])) + (" ..." if n_docs > 10 else "")
        print(f"warning: {stats.capped_pieces} of {stats.pieces} pieces stopped at the generation "
              f"length cap, in {n_docs} document{'s' * (n_docs != 1)} ({ids}); those rewrites "
              f"may end early" + (' ("hit_cap": true in their rows)' if rows else ""),
              file=sys.stderr)
    if stats.empty_pieces:
        print(f"warning: {stats.empty_pieces} of {stats.pieces} pieces came back empty and are "
              f"missing from their documents", file=sys.stderr)


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.tools.rewrite_files", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Input (--input"):] + "\n")
    parser.add_argument("--input", default="-", help="JSONL, .txt/.md, a folder, or - for stdin "
                                                     "(default)")
    parser.add_argument("--output", default="-", help="JSONL or .txt/.md, or - for stdout "
                                                      "(default)")
    parser.add_argument("--format", default="auto", choices=("auto", "jsonl", "text"),
                        help="how to read --input (auto: .txt/.md/folders are text, stdin "
                             "starting with '{' is JSONL, anything else JSONL)")
    parser.add_argument("--preset", default=None,
                        help="config preset (default: $HUMANIZER_PRESET or workshop)")
    parser.add_argument("--adapter", default="sft+dpo", choices=SYSTEMS)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="pieces per rewrite call (default: the preset's gen_batch_size)")
    parser.add_argument("--fact-check", type=int, default=0, metavar="N",
                        help="the fact switch: resample a rewrite that lost any of the draft's "
                             "numbers, dates, names or URLs N times and keep the candidate that "
                             "keeps the most, then rewrite each draft sentence still missing "
                             "a fact alone and splice it in, or copy it back (default 0: off)")
    parser.add_argument("--loop-check", type=int, default=None, metavar="N",
                        help="the loop switch: resample a rewrite that repeats itself or stops at "
                             "the token cap N times and keep the sample that does neither and keeps "
                             "the most of the draft's facts "
                             "(default: the preset's loop_check_samples; 0: off)")
    parser.add_argument("--min-piece-words", type=int, default=None, metavar="N",
                        help="keep a document's prose pieces of fewer than N words as they are, "
                             "beside longer ones (default: the preset's min_piece_words; 0: "
                             "rewrite every piece)")
    parser.add_argument("--no-fact-repair", action="store_true",
                        help="with --fact-check: resample only, no sentence repair")
    parser.add_argument("--no-resample", action="store_true",
                        help="with --fact-check: no whole-rewrite resampling, straight to the "
                             "sentence repair (fewer tokens decoded)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: replace humanize's own earlier output (never a file "
                             "it did not write)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="resume an output made with other --fact-check settings (each row "
                             "keeps its own \"settings\")")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _on_sigterm(signum, frame):
    raise Interrupted("SIGTERM")


def main(argv: list[str] | None = None, humanizer=None) -> int:
    """The command line; `humanizer` replaces the model (tests pass a fake one)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return run(args, humanizer)
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_OUTPUT
    except (Interrupted, KeyboardInterrupt):
        print("interrupted: rows written so far are kept"
              + ("; rerun the same command to resume" if args.output != "-" else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - any other failure: say so, with its own exit code
        traceback.print_exc()
        print("error: the rewriting failed (rows written so far are kept)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def load_humanizer(cfg, adapter: str):
    """The model of notebooks 04-06 with its adapters; a missing one is ModelMissing."""
    try:
        return Humanizer.load(cfg, adapter=adapter)
    except (ModelNotAvailable, FileNotFoundError, ValueError) as err:  # ValueError: untrained adapter
        raise ModelMissing(str(err)) from None


def run(args, humanizer) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.fact_check < 0:
        raise UsageError(f"--fact-check must be 0 or more, got {args.fact_check}")
    if args.loop_check is not None and args.loop_check < 0:
        raise UsageError(f"--loop-check must be 0 or more, got {args.loop_check}")
    if args.no_resample and args.no_fact_repair:
        raise UsageError("--no-resample with --no-fact-repair leaves the fact check nothing to do")
    if args.min_piece_words is not None and args.min_piece_words < 0:
        raise UsageError(f"--min-piece-words must be 0 or more, got {args.min_piece_words}")
    overrides = {} if args.loop_check is None else {"loop_check_samples": args.loop_check}
    if args.min_piece_words is not None:
        overrides["min_piece_words"] = args.min_piece_words
    try:
        cfg = get_config(args.preset, fact_check_samples=args.fact_check,
                         fact_resample=not args.no_resample, fact_repair=not args.no_fact_repair,
                         **overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None
    drafts, skipped, kind, input_files = read_inputs(args.input, args.format)
    folder_input = args.input != "-" and Path(args.input).is_dir()
    out_kind = output_kind(args.output, kind, len(drafts), folder_input)
    check_output(args.output, out_kind, input_files, args.overwrite)
    if args.output == "-":
        return rewrite(args, cfg, drafts, skipped, out_kind, humanizer)
    with exclusive(args.output, "humanize"):  # held until the last row is written
        return rewrite(args, cfg, drafts, skipped, out_kind, humanizer)


def run_settings(cfg) -> dict:
    """The settings a row records: the fact switch, and the loop switch when it is on (rows made
    before it existed match a run with it off); preset and adapter have their own fields."""
    settings = {"fact_check_samples": cfg.fact_check_samples, "fact_resample": cfg.fact_resample,
                "fact_repair": cfg.fact_repair}
    if cfg.loop_check_samples > 0:
        settings["loop_check_samples"] = cfg.loop_check_samples
        settings["loop_check_choice"] = cfg.loop_check_choice
    return settings


def rewrite(args, cfg, drafts: list[Draft], skipped: list[str], out_kind: str, humanizer) -> int:
    earlier = (read_done(args.output, cfg.preset, args.adapter)
               if out_kind == "jsonl" and not args.overwrite else Earlier())
    done, settings = earlier.rows, run_settings(cfg)
    for message in skipped:
        print(message, file=sys.stderr)
    for draft in drafts:
        if draft.id in done and done[draft.id]["source"] != draft.text:
            raise OutputError(f"{args.output}: the row for id {draft.id!r} was made from another "
                              f"text than {draft.where}; choose another --output")
    todo = [d for d in drafts if d.id not in done]
    if todo and not args.allow_mixed:
        check_settings(args.output, done, settings)
    status = EXIT_SKIPPED if skipped else EXIT_OK
    if not todo:
        print(f"nothing to rewrite: {len(drafts) - len(todo)} of {len(drafts)} documents already "
              f"in {args.output}" if drafts else "nothing to rewrite: no drafts in the input",
              file=sys.stderr, end="")
        print(report_repeated(args.output, earlier.repeated), file=sys.stderr)
        return status
    if humanizer is None:
        try:
            humanizer = load_humanizer(cfg, args.adapter)
        except ModelMissing as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_NO_MODEL
    if args.adapter not in getattr(humanizer, "adapters", SYSTEMS):
        print(f"error: adapter {args.adapter!r} is not available for preset {cfg.preset} "
              f"(available: {', '.join(humanizer.adapters)}); train it first (notebooks 04-05)",
              file=sys.stderr)
        return EXIT_NO_MODEL

    jobs = [Job(d, split_document(d.text, humanizer.count_tokens, humanizer.max_input_tokens,
                                  cfg.min_piece_words)) for d in todo]
    stats, text_rows = Stats(), []
    writer = JsonlWriter(args.output, earlier.cut_at, replace=args.overwrite)

    def emit(job: Job) -> None:
        row = make_row(job, cfg.preset, args.adapter, settings)
        if job.hit_cap:
            stats.capped_pieces += job.hit_cap
            stats.capped_ids.append(job.draft.id)
        if out_kind == "jsonl":
            writer.write(row)
        else:
            text_rows.append(row)

    try:
        rewrite_jobs(jobs, humanizer, args.adapter, args.batch_size or cfg.gen_batch_size, emit,
                     stats, progress=not args.no_progress)
    finally:
        writer.close()
        report_caps(stats, rows=out_kind == "jsonl")
        if out_kind == "jsonl":
            print(f"wrote {writer.count} rewrites to {args.output}"
                  + (f" ({len(done)} were there already)" if done else "")
                  + (f"; skipped {len(skipped)} input lines or files" if skipped else "")
                  + report_repeated(args.output, earlier.repeated), file=sys.stderr)
    if out_kind == "text":
        [row] = text_rows
        if args.output == "-":
            sys.stdout.write(row["output"] + "\n")
            sys.stdout.flush()
        else:
            check_targets(TOOL, [Path(args.output)], manifest_of(args.output), args.overwrite)
            atomic_write_text(args.output, row["output"] + "\n")
            record(TOOL, [Path(args.output)], manifest_of(args.output))
            print(f"wrote the rewrite to {args.output}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
