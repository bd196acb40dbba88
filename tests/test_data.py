import gzip
import json

import pytest

from helpers.core import text_measures
from helpers.core.config import get_config
from helpers.core.io import DataError, atomic_write_json, read_json
from helpers.core.text_measures import REPO_DATA
from helpers.data.prepare import clean, dpo_pairs, faithful, prepare, split_by_paragraph
from helpers.data.sources import L2R_FILES, l2r_file, load_split, paragraph_key, read_pairs

HUMAN = "The river rose two metres overnight and the bridge at Elm Street closed at 6 a.m."


def write_lines(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n"
                              for line in lines))
    return path


def good(i, human=HUMAN, **extra):
    return json.dumps({"id": f"r{i}", "human": human, "ai": f"AI rewrite number {i}.", **extra})


def test_bad_lines_are_skipped_with_line_numbers(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [
        good(1),
        "{not json",
        json.dumps({"id": "x", "human": HUMAN}),
        json.dumps({"id": "y", "human": "   ", "ai": "text"}),
        b"\xff\xfe bad bytes\n",
        json.dumps(["a", "list"]),
        "",
        good(1),
        good(2),
    ])
    rows, report = read_pairs(path)
    assert [r["id"] for r in rows] == ["r1", "r2"]
    reasons = dict(report.skipped)
    assert set(reasons) == {2, 3, 4, 5, 6, 8}
    assert "invalid JSON" in reasons[2]
    assert reasons[3] == "missing field 'ai'"
    assert reasons[4] == "field 'human' is empty"
    assert "UTF-8" in reasons[5]
    assert "JSON object" in reasons[6]
    assert "duplicate" in reasons[8]
    assert "line 2" in report.summary()


def test_strict_mode_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [good(1), json.dumps({"id": "x", "ai": "t"})])
    with pytest.raises(DataError, match=r"pairs.jsonl:2: missing field 'human'"):
        read_pairs(path, strict=True)


def test_reads_gzip(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(good(1) + "\n")
    rows, _ = read_pairs(path)
    assert rows[0]["group"] == paragraph_key(HUMAN)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_pairs(tmp_path / "nope.jsonl")


def rows_for(n_groups, per_group=3):
    return [{"id": f"g{g}-{k}", "group": f"g{g}", "human": f"human {g}", "ai": f"ai {g}/{k}",
             "ai_model": f"m{k}", "domain": "d", "low_overlap": False}
            for g in range(n_groups) for k in range(per_group)]


def test_split_by_paragraph_has_no_overlap_and_is_seeded():
    rows = rows_for(10)
    rest, held = split_by_paragraph(rows, n_holdout=3, seed=7)
    assert len({r["group"] for r in held}) == 3 and len(rest) + len(held) == 30
    assert not {r["group"] for r in rest} & {r["group"] for r in held}
    assert split_by_paragraph(rows, 3, seed=7) == (rest, held)


def test_dpo_pairs_reject_another_rewrite_of_the_same_paragraph():
    pairs = dpo_pairs(rows_for(4) + rows_for(1, per_group=1), n=10, seed=0)
    assert len(pairs) == 4  # the single-rewrite paragraph gives no pair
    for p in pairs:
        assert p["chosen"] == f"human {p['group'][1:]}"
        assert p["rejected"].startswith(f"ai {p['group'][1:]}/") and p["rejected"] != p["prompt"]


def test_faithful_pairs_keep_the_drafts_facts():
    draft = {"ai": "Anna Berg paid 40 euros in Oslo.", "human": "Anna Berg paid 40 euros there."}
    assert faithful(draft, 0.5) and not faithful(draft, 1.0)  # keeps 2 of 3 facts
    assert faithful({"ai": "no facts here at all", "human": "none"}, 1.0)
    assert faithful(draft, 0.0)


def test_dpo_prompts_are_faithful_drafts():
    rows = rows_for(3, per_group=2)
    for r in rows:
        r["human"] = "A report by Jane Roe."
        r["ai"] = "A report by Jane Roe" + (" in Paris." if r["id"].endswith("-1") else ".")
    pairs = dpo_pairs(rows, n=10, seed=0, min_facts=1.0)  # "-1" drafts add a place
    assert sorted(p["id"] for p in pairs) == ["g0-0", "g1-0", "g2-0"]
    assert all(p["rejected"].endswith("Paris.") for p in pairs)


def test_clean_counts_every_drop():
    cfg = get_config("smoke", min_words=3, max_words=5)
    rows = [{"human": "one two three", "ai": "a b c d", "low_overlap": False},
            {"human": "one two", "ai": "a b c", "low_overlap": False},
            {"human": "one two three four five six", "ai": "a b c", "low_overlap": False},
            {"human": "one two three", "ai": "a b c", "low_overlap": True}]
    kept, dropped = clean(rows, cfg)
    assert kept == rows[:1]
    assert dropped == {"shorter than 3 words": 1, "longer than 5 words": 1, "low_overlap": 1}


def test_slop_counts_whole_phrases_per_1k_tokens():
    phrases = ["a testament to", "delve into", "moreover"]
    text = "Moreover, this is a testament to care. We delve into it. Moreoverish delved into nothing."
    assert text_measures.slop_hits(text, phrases) == 3
    assert text_measures.slop_rate(text, phrases) == pytest.approx(1000 * 3 / len(text_measures.tokens(text)))
    assert text_measures.slop_rate("", phrases) == 0.0
    assert len(text_measures.load_slop_phrases()) >= 40


def test_prepare_from_a_local_file_splits_cleanly(tmp_path):
    lines = [json.dumps({"id": f"{s}{g}-{k}", "human": f"Paragraph {s}{g} " + "word " * 50,
                         "ai": f"Rewrite {k} of {s}{g} " + "token " * 50, "ai_model": f"m{k}"})
             for s in ("t", "d") for g in range(12) for k in range(2)]
    write_lines(tmp_path / "train.jsonl", [l for l in lines if '"t' in l[:10]])
    write_lines(tmp_path / "dev.jsonl", [l for l in lines if '"d' in l[:10]])
    cfg = get_config("smoke", data_source=str(tmp_path / "{split}.jsonl"), n_val_paragraphs=2,
                     n_eval=5, max_train_pairs=100, n_dpo_pairs=100)
    prepared = prepare(cfg)
    assert len(prepared["eval"]) == 5 and len({r["group"] for r in prepared["val"]}) == 2
    train_groups = {r["group"] for r in prepared["train"]}
    assert not train_groups & {r["group"] for r in prepared["val"]}
    assert not train_groups & {r["group"] for r in prepared["eval"]}
    assert len(prepared["dpo"]) == 10
    assert prepared["detector"] == prepared["train"][:cfg.detector_train_pairs]


def test_atomic_json_roundtrip_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert read_json(tmp_path / "x.json") == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


L2R_SHA256 = {  # data/README.md
    "train": "004b539acd10582ac55be21e4f84733c7c19116854c52444352800e104fed788",
    "dev": "43590d18ff2a35afa935b6f264bd44dc49454622ca7bbecb7df540a6a1279474",
}


@pytest.mark.parametrize("split, pairs, paragraphs", [("train", 12273, 3113), ("dev", 1654, 421)])
def test_l2r_data_ships_with_the_repository(split, pairs, paragraphs, monkeypatch):
    import hashlib

    monkeypatch.delenv("HUMANIZER_ASSETS", raising=False)
    path = l2r_file(split)
    assert path == REPO_DATA / L2R_FILES[split]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == L2R_SHA256[split]
    raw = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    assert (len(raw), len({r["human"] for r in raw})) == (pairs, paragraphs)
    rows, report = load_split(get_config("smoke"), split)
    assert len(rows) + len(report.skipped) == pairs  # the loader skips only exact duplicates
    assert all(why.startswith("duplicate") for _, why in report.skipped)


def test_l2r_falls_back_to_an_offline_pack_then_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("helpers.data.sources.REPO_DATA", tmp_path / "repo-data")
    monkeypatch.setenv("HUMANIZER_ASSETS", str(tmp_path / "pack"))
    with pytest.raises(DataError, match=r"repo-data/l2r/l2r_dev.jsonl.gz is missing: it comes "
                                        r"with the repository"):
        l2r_file("dev")
    packed = tmp_path / "pack" / "data" / "l2r" / "l2r_dev.jsonl.gz"
    packed.parent.mkdir(parents=True)
    packed.write_bytes(b"")
    assert l2r_file("dev") == packed
