"""Paired data: (AI draft -> human text), split by human paragraph, turned into SFT and DPO sets.

Rows look like {"id", "domain", "human", "ai", "ai_model", "low_overlap"} (the L2R files in
data/l2r/, CC BY 3.0: data/README.md). Every row carries `group`, a hash of its human paragraph:
splits are made on groups so that no paragraph is in two splits.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from helpers.core.io import atomic_write_json, atomic_write_jsonl, iter_jsonl
from helpers.core.prompt import chat_messages
from helpers.core.text_measures import fact_preservation, word_count
from helpers.data.sources import load_split


def clean(rows: list[dict], cfg) -> tuple[list[dict], dict]:
    """Keep rows whose pairing is certain and whose texts are of a usable length.
    Returns the rows and the count dropped for each reason (nothing is cut silently)."""
    kept, dropped = [], defaultdict(int)
    for r in rows:
        if cfg.drop_low_overlap and r["low_overlap"]:
            dropped["low_overlap"] += 1
        elif min(word_count(r["human"]), word_count(r["ai"])) < cfg.min_words:
            dropped[f"shorter than {cfg.min_words} words"] += 1
        elif max(word_count(r["human"]), word_count(r["ai"])) > cfg.max_words:
            dropped[f"longer than {cfg.max_words} words"] += 1
        else:
            kept.append(r)
    return kept, dict(dropped)


def split_by_paragraph(rows: list[dict], n_holdout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(rest, holdout): `n_holdout` whole human paragraphs go to holdout, chosen with `seed`."""
    groups = sorted({r["group"] for r in rows})
    random.Random(seed).shuffle(groups)
    held = set(groups[:n_holdout])
    return [r for r in rows if r["group"] not in held], [r for r in rows if r["group"] in held]


def one_per_paragraph(rows: list[dict], n: int, seed: int) -> list[dict]:
    """`n` rows from `n` different paragraphs (a stable, seeded choice)."""
    by_group = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    rng = random.Random(seed)
    groups = sorted(by_group)
    rng.shuffle(groups)
    return [rng.choice(sorted(by_group[g], key=lambda r: r["id"])) for g in groups[:n]]


def prepare(cfg) -> dict:
    """Everything notebooks need: train / val pairs from the training file, eval drafts from the
    dev file (evaluation only, never trained on), and the cleaning report. `train` and the DPO
    prompts keep only faithful pairs (cfg.min_train_facts); `detector` is the MiniLM detector's
    share of the training file, chosen before that filter so the detector does not depend on it."""
    train_rows, train_report = load_split(cfg, "train")
    dev_rows, dev_report = load_split(cfg, "dev")
    train_clean, train_dropped = clean(train_rows, cfg)
    dev_clean, dev_dropped = clean(dev_rows, cfg)
    train, val = split_by_paragraph(train_clean, cfg.n_val_paragraphs, cfg.seed)
    dpo = dpo_pairs(train, cfg.n_dpo_pairs, cfg.seed, cfg.min_train_facts)
    rng = random.Random(cfg.seed)
    rng.shuffle(train)
    detector = train[:cfg.detector_train_pairs]
    faithful_train = [r for r in train if faithful(r, cfg.min_train_facts)]
    if len(faithful_train) < len(train):
        train_dropped[f"human text keeps < {cfg.min_train_facts:.0%} of the draft's facts"] = \
            len(train) - len(faithful_train)
    train = faithful_train[:cfg.max_train_pairs]
    evaluation = one_per_paragraph(dev_clean, cfg.n_eval, cfg.seed)
    return {
        "train": train, "val": val, "eval": evaluation,
        "dpo": dpo, "detector": detector,
        "report": {
            "train_file": train_report.summary() if train_report else "hub",
            "dev_file": dev_report.summary() if dev_report else "hub",
            "train_dropped": train_dropped, "dev_dropped": dev_dropped,
        },
    }


def faithful(row: dict, min_facts: float) -> bool:
    """Does the human text keep at least `min_facts` of the draft's numbers, dates, URLs and
    names? (Drafts without any pass.) Training on pairs where the person dropped or changed facts
    teaches the model to drop them too."""
    if min_facts <= 0:
        return True
    kept = fact_preservation(row["ai"], row["human"])
    return kept != kept or kept >= min_facts  # NaN: no facts to keep


def sft_examples(rows: list[dict], system: str) -> list[dict]:
    """mlx-lm chat format; the trainer masks everything but the assistant turn."""
    return [{"messages": chat_messages(r["ai"], system, r["human"]), "id": r["id"]} for r in rows]


def dpo_pairs(rows: list[dict], n: int, seed: int, min_facts: float = 0.0) -> list[dict]:
    """(prompt draft, chosen = the human text, rejected = another model's rewrite of the same
    paragraph). Only paragraphs with at least two AI rewrites give pairs; the prompt is a draft
    whose human text is faithful to it (`faithful`)."""
    by_group = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    rng = random.Random(seed)
    pairs = []
    for group in sorted(by_group):
        members = sorted(by_group[group], key=lambda r: r["id"])
        prompts = [m for m in members if faithful(m, min_facts)]
        if len(members) < 2 or not prompts:
            continue
        if len(prompts) == len(members):  # unfiltered: the same pairs as without the filter
            draft, other = rng.sample(members, 2)
        else:
            draft = rng.choice(prompts)
            other = rng.choice([m for m in members if m is not draft])
        pairs.append({"id": draft["id"], "group": group, "prompt": draft["ai"],
                      "chosen": draft["human"], "rejected": other["ai"],
                      "rejected_source": other["ai_model"]})
    rng.shuffle(pairs)
    return pairs[:n]

PREPARED_FILES = ("train", "val", "eval", "dpo", "detector")


def save_prepared(cfg, prepared: dict) -> Path:
    """Write notebook 01's output under runs/<preset>/data/ (each file atomically)."""
    out = cfg.path("data")
    out.mkdir(exist_ok=True)
    for name in PREPARED_FILES:
        atomic_write_jsonl(out / f"{name}.jsonl", prepared[name])
    atomic_write_json(out / "report.json", prepared["report"])
    return out


def load_prepared(cfg) -> dict:
    """What notebook 01 wrote: {'train', 'val', 'eval', 'dpo', 'detector'} lists of rows."""
    folder = cfg.input_path("data")
    missing = [n for n in PREPARED_FILES if not (folder / f"{n}.jsonl").exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: no {', '.join(missing)} data; run notebook "
                                f"01_data.ipynb with preset {cfg.preset!r} first")
    return {name: [obj for _, obj in iter_jsonl(folder / f"{name}.jsonl", strict=True)]
            for name in PREPARED_FILES}
