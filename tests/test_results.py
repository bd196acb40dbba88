import json

import numpy as np
import pytest

from helpers import results
from helpers.config import get_config
from helpers.io import DataError

ROWS = [
    {"id": f"r{i}", "domain": "News", "source": f"The council met on 3 May and spent {i}00 pounds.",
     "human": f"Council met May 3rd, spent {i}00 quid.",
     "outputs": {"base": f"Sure! The council met on 3 May and spent {i}00 pounds.",
                 "sft": f"Council met 3 May, spent {i}00 pounds.",
                 "sft+dpo": "Council met, money went."}}
    for i in range(1, 7)
]


class LengthDetector:
    """P(AI) grows with length: the source drafts are the longest texts here."""

    def score(self, texts):
        return np.array([min(len(t) / 60, 1.0) for t in texts])


def fake_embedder(texts):
    return np.array([[len(t), t.count(" ") + 1.0] for t in texts])


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_summary_and_markdown(tmp_path):
    rows = results.load_rewrites(write_rows(tmp_path / "rewrites.jsonl", ROWS))
    texts = results.system_texts(rows)
    assert list(texts) == ["source", "base", "sft", "sft+dpo", "human"]
    scores = results.score_all(texts, {"Length": LengthDetector()})
    cfg = get_config("smoke", n_bootstrap=50)
    summary = results.summarize(cfg, texts, scores, fake_embedder, ["sure"],
                                unavailable={"RADAR": "offline"})
    by_key = {r["system"]: r for r in summary["systems"]}
    assert by_key["source"]["gap_closed"]["mean"] == 0.0
    assert by_key["human"]["gap_closed"]["mean"] == 1.0
    assert by_key["source"]["meaning"] is None and by_key["sft"]["meaning"]["mean"] < 1.0
    assert by_key["base"]["chat_artefacts"]["mean"] == 1.0
    assert by_key["sft"]["chat_artefacts"]["mean"] == 0.0
    assert by_key["base"]["facts"]["mean"] == 1.0  # "3 May" and the amount both survive
    assert by_key["sft+dpo"]["facts"]["mean"] == 0.0
    assert summary["detectors"]["Length"]["auroc"]["mean"] == 1.0
    assert summary["detectors"]["Length"]["flagged"]["human"] == 0.0
    md = results.render_markdown(json.loads(json.dumps(summary)))  # survives a JSON round trip
    assert "| source AI draft |" in md and "| SFT+DPO stacked |" in md
    assert "P(AI) Length" in md and "**RADAR** not run: offline" in md
    assert md.count("\n| ") == 6 + 1 + 1 + 1 + 4 + 5  # + targets table: header, 4 + 5 rows
    length = summary["differences"]["Length"]
    assert length["sft - base"]["mean"] < 0 and length["sft+dpo - human"]["mean"] < 0
    checks = {row[0]: row[2] for row in results.target_rows(summary)}
    assert checks["Length: SFT+DPO P(AI) ≤ human reference"] == "met"  # the shortest texts
    assert checks["facts kept ≥ 0.95"] == "**not met**"  # "Council met, money went."
    assert checks["chat artefacts ≤ 1%"] == "met" and checks["no empty outputs"] == "met"


def test_load_rewrites_errors_name_file_line_and_field(tmp_path):
    bad = dict(ROWS[0], outputs={"sft": 3})
    with pytest.raises(DataError, match=r"rewrites.jsonl:2: field 'outputs'"):
        results.load_rewrites(write_rows(tmp_path / "rewrites.jsonl", [ROWS[0], bad]))
    other = dict(ROWS[0], outputs={"sft": "x"})
    with pytest.raises(DataError, match=r":2: systems \['sft'\] differ"):
        results.load_rewrites(write_rows(tmp_path / "rewrites.jsonl", [ROWS[0], other]))
    no_human = {k: v for k, v in ROWS[0].items() if k != "human"}
    with pytest.raises(DataError, match=r":1: field 'human'"):
        results.load_rewrites(write_rows(tmp_path / "rewrites.jsonl", [no_human]))
    with pytest.raises(FileNotFoundError, match="run notebook 06"):
        results.load_rewrites(tmp_path / "missing.jsonl")
