"""Two named smoke experiments scored like notebook 07 and compared side by side: each writes to
its own runs/<preset>/<name>/, reads what it did not make itself from the default run, and
list_experiments + results.compare_experiments put them in one table."""
import json

import numpy as np
import pytest

from helpers.core.config import get_config, list_experiments
from helpers.evaluate.experiments import compare_experiments
from helpers.evaluate.scoring import (
    load_rewrites,
    score_all,
    summarize,
    system_texts,
    write_results,
)

from conftest import LengthDetector, toy_embedder, toy_rewrites, write_jsonl

ROWS = toy_rewrites()


def notebook_07(name: str) -> None:
    """What notebook 07 does with a run's rewrites, with a toy detector and embedder."""
    cfg = get_config("smoke", experiment=name, notebook="07")
    rows = load_rewrites(cfg.input_path("rewrites.jsonl"))
    texts = system_texts(rows)
    scores = score_all(texts, {"Length": LengthDetector()})
    write_results(cfg, summarize(cfg, texts, scores, toy_embedder, []))


def test_two_experiments_side_by_side(runs):
    write_jsonl(runs / "smoke" / "rewrites.jsonl", ROWS)  # the default run's notebook 06
    # "keeps-facts" reran notebook 06 with other settings; "rescored" only reran notebook 07
    kept = [dict(r, outputs=dict(r["outputs"], **{"sft+dpo": r["outputs"]["sft"]})) for r in ROWS]
    write_jsonl(runs / "smoke" / "keeps-facts" / "rewrites.jsonl", kept)
    for name in ("", "keeps-facts", "rescored"):
        notebook_07(name)
    assert not (runs / "smoke" / "rescored" / "rewrites.jsonl").exists()
    assert (runs / "smoke" / "rescored" / "results.json").exists()
    names = list_experiments("smoke")
    assert names == ["", "keeps-facts", "rescored"]
    saved = json.loads((runs / "smoke" / "keeps-facts" / "config.json").read_text())
    assert list(saved["notebooks"]) == ["07"] and saved["notebooks"]["07"]["config"]["preset"] == "smoke"

    frame = compare_experiments(get_config("smoke"), names, runs_root=runs)
    facts = frame[frame.measure == "facts kept"].set_index("experiment")["mean"].to_dict()
    assert facts == {"(default)": 0.0, "keeps-facts": 1.0, "rescored": 0.0}
    p_ai = frame[frame.measure == "P(AI) Length"].set_index("experiment")["mean"].to_dict()
    assert p_ai["(default)"] == p_ai["rescored"] == pytest.approx(len("Council met, money went.") / 60)
    assert p_ai["keeps-facts"] == pytest.approx(np.mean([len(r["outputs"]["sft"]) / 60 for r in ROWS]))
