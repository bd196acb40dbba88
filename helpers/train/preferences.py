"""DPO preference pairs ranked from the SFT model's own samples (notebook 05, dpo_pair_source="ranked").

For each training draft the SFT model writes k samples; each sample gets four scores, all higher =
better, and one combined score

    S = w_judge·(1 − P_AI) + w_facts·F + w_meaning·M + w_surprise·H

- P_AI: the training judge's P(AI) (detectors.training_judge, never an evaluation detector);
- F: share of the draft's facts kept (text_measures.fact_preservation; 1 when the draft has none);
- M: MiniLM cosine similarity to the draft (metrics.meaning_similarity);
- H: mean surprise per token, −(1/n)·Σ log p_base(token), of the text alone under the base model:
  low-surprise (typical) text is what likelihood detectors flag, so more surprise scores higher.

The weights are Config fields (pref_weight_*). Chosen = the best sample (or the human text, with
dpo_chosen="human"), rejected = the worst; an empty sample always ranks last.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np

from helpers.core.cache import content_key, load_json, save_json
from helpers.core.text_measures import fact_preservation, has_loop
from helpers.evaluate.embedding import Embedder
from helpers.evaluate.meaning import meaning_similarity
from helpers.evaluate.trained_detectors import training_judge
from helpers.infer.rewrite import on_policy_decoding, on_policy_samples, rewrite
from helpers.infer.systems import use_system
from helpers.train.batches import pad_batch
from helpers.train.dpo import with_on_policy
from helpers.train.losses import answer_logprobs
from helpers.train.trainer import adapter_fingerprint, ids_digest

COMPONENTS = ("judge", "facts", "meaning", "surprise")
SAMPLES_VERSION = 1  # bump when the sampled rewrites would change: old cache entries are ignored


def weights_of(cfg) -> dict[str, float]:
    return {name: getattr(cfg, f"pref_weight_{name}") for name in COMPONENTS}


def combined_scores(scores: dict, weights: dict) -> np.ndarray:
    """S per candidate: the weighted sum of the components (each an array, one value per candidate)."""
    missing = [name for name in weights if name not in scores]
    if missing:
        raise ValueError(f"combined_scores: weights name components {missing} that scores lack "
                         f"(scores has {sorted(scores)})")
    columns = [np.asarray(scores[name], np.float64) for name in weights]
    sizes = {len(c) for c in columns}
    if len(sizes) > 1:
        raise ValueError(f"combined_scores: components have different lengths "
                         f"{ {name: len(c) for name, c in zip(weights, columns)} }")
    if any(np.isnan(c).any() for c in columns):
        bad = [name for name, c in zip(weights, columns) if np.isnan(c).any()]
        raise ValueError(f"combined_scores: NaN in component(s) {bad}")
    return sum(w * c for w, c in zip(weights.values(), columns))


def rank_candidates(scores: dict, weights: dict, empty=None) -> list[int]:
    """Candidate indices, best first, by combined score; ties keep the earlier candidate first.
    Candidates flagged in `empty` (one bool each) go last whatever their score."""
    total = combined_scores(scores, weights)
    empty = [False] * len(total) if empty is None else list(empty)
    return sorted(range(len(total)), key=lambda i: (empty[i], -total[i]))


def build_pairs(rows: list[dict], samples: list[list[str]], scores: list[dict], weights: dict,
                chosen: str = "best") -> list[dict]:
    """One pair per draft: prompt = row["prompt"], rejected = its worst sample, chosen = its best
    sample ("best") or row["chosen"], the human text ("human"). Drafts whose best and worst samples
    tie on S or are the same text give no pair (nothing to prefer). Each pair records the
    components of both sides (`chosen_scores`, `rejected_scores`; NaN for the unscored human text)."""
    if chosen not in ("best", "human"):
        raise ValueError(f"build_pairs: chosen={chosen!r}; use 'best' or 'human'")
    if not len(rows) == len(samples) == len(scores):
        raise ValueError(f"build_pairs: {len(rows)} rows, {len(samples)} sample lists and "
                         f"{len(scores)} score dicts; need one of each per draft")
    pairs = []
    for row, texts, comps in zip(rows, samples, scores):
        order = rank_candidates(comps, weights, [not t.strip() for t in texts])
        best, worst = order[0], order[-1]
        total = combined_scores(comps, weights)
        if len(texts) < 2 or total[best] == total[worst] or texts[best] == texts[worst] \
                or not texts[best].strip() and chosen == "best":
            continue
        side = {i: {name: float(comps[name][i]) for name in weights} | {"total": float(total[i])}
                for i in (best, worst)}
        pairs.append({"id": f"{row['id']}:ranked", "group": row.get("group"),
                      "prompt": row["prompt"],
                      "chosen": texts[best] if chosen == "best" else row["chosen"],
                      "rejected": texts[worst], "rejected_source": "sft model (ranked)",
                      "chosen_source": "sft model (ranked)" if chosen == "best" else "human",
                      "chosen_scores": side[best] if chosen == "best"
                      else {name: float("nan") for name in side[best]},
                      "rejected_scores": side[worst]})
    return pairs


# ---------------------------------------------------------------- scoring with models

def mean_surprise(model, tokenizer, texts: list[str], batch_size: int = 8) -> np.ndarray:
    """−(1/n)·Σ log p(token | text so far) of each text alone (no prompt), under `model` as it is
    switched now; NaN for a text of fewer than two tokens."""
    out = np.full(len(texts), np.nan)
    items = [(tokenizer.encode(t, add_special_tokens=False), 1) for t in texts]
    scorable = [i for i, (tokens, _) in enumerate(items) if len(tokens) >= 2]
    for start in range(0, len(scorable), batch_size):
        chunk = scorable[start:start + batch_size]
        logps = answer_logprobs(model, *pad_batch([items[i] for i in chunk]))
        mx.eval(logps)
        for i, logp in zip(chunk, logps.tolist()):
            out[i] = -logp / (len(items[i][0]) - 1)  # token 0 has no prediction
    return out


def score_samples(model, tokenizer, drafts: list[str], texts: list[str], judge, embedder) -> dict:
    """The four components for each (draft, sample) pair; `model` is a stacked model, scored as
    the base (both adapters off) and switched back to sft+dpo after."""
    facts = np.array([fact_preservation(d, t) for d, t in zip(drafts, texts)])
    use_system(model, "base")
    try:
        surprise = mean_surprise(model, tokenizer, texts)
    finally:
        use_system(model, "sft+dpo")
    empty = np.array([not t.strip() for t in texts])
    return {"judge": 1.0 - np.asarray(judge.score(texts), np.float64),
            "facts": np.where(np.isnan(facts), 1.0, facts),  # no facts in the draft: none lost
            "meaning": np.asarray(meaning_similarity(embedder, texts, drafts), np.float64),
            "surprise": np.where(np.isnan(surprise) | empty, 0.0, surprise)}


def sample_rewrites(cfg, model, tokenizer, rows: list[dict], k: int, cache: bool = True) -> list[list[str]]:
    """k samples per draft from base + SFT at cfg.on_policy_temperature, no repetition penalty nor
    DRY (as on_policy_samples: the SFT model's own habits), all drafts × k decoded in one batch.
    Cached in runs/<preset>/dpo_ranked_samples.json (helpers.core.cache) for this SFT adapter,
    these drafts and these sampling settings."""
    cfg = on_policy_decoding(cfg)
    key = content_key("ranked-samples", SAMPLES_VERSION, sft=adapter_fingerprint(cfg),
                      drafts=ids_digest([r["id"] for r in rows]), k=k,
                      sampling=[cfg.temperature, cfg.top_p, cfg.max_len_ratio, cfg.gen_max_tokens,
                                cfg.seed])
    path = cfg.path("dpo_ranked_samples.json") if cache else None
    saved = load_json(path, key) if path is not None else None
    if saved is not None:
        return saved
    use_system(model, "sft")
    try:  # rows of one batch draw their own random numbers: the k copies differ
        flat = rewrite(model, tokenizer, [r["prompt"] for r in rows for _ in range(k)], cfg,
                       desc=f"{k} samples per draft")
    finally:
        use_system(model, "sft+dpo")
    samples = [flat[i * k:(i + 1) * k] for i in range(len(rows))]
    if path is not None:
        save_json(path, key, samples, keep=False)
    return samples


def ranked_pairs(cfg, model, tokenizer, rows: list[dict], judge, embedder, k: int | None = None,
                 cache: bool = True, chosen: str | None = None) -> list[dict]:
    """Ranked pairs for the drafts of `rows` (offline pairs: prompt, chosen = human text), built
    with cfg's weights; k (default cfg.dpo_samples_k) samples each, chosen per cfg.dpo_chosen
    unless given."""
    k = cfg.dpo_samples_k if k is None else k
    if k < 2:
        raise ValueError(f"dpo_samples_k={k}: ranking needs at least 2 samples per draft")
    samples = sample_rewrites(cfg, model, tokenizer, rows, k, cache)
    drafts = [r["prompt"] for r in rows for _ in range(k)]
    flat = score_samples(model, tokenizer, drafts, [t for s in samples for t in s], judge, embedder)
    scores = [{name: values[i * k:(i + 1) * k] for name, values in flat.items()}
              for i in range(len(rows))]
    return build_pairs(rows, samples, scores, weights_of(cfg), chosen or cfg.dpo_chosen)


def with_ranked(cfg, model, tokenizer, pairs: list[dict], judge, embedder) -> list[dict]:
    """The pairs DPO trains on with dpo_pair_source="ranked": ranked pairs for the first
    dpo_steps × dpo_batch_size drafts, then the remaining offline pairs (so a draft that gave no
    ranked pair leaves no hole in the run)."""
    needed = cfg.dpo_steps * cfg.dpo_batch_size
    ranked = ranked_pairs(cfg, model, tokenizer, pairs[:needed], judge, embedder)
    ranked_ids = {r["id"] for r in ranked}
    unranked = [p for p in pairs[:needed] if f"{p['id']}:ranked" not in ranked_ids]
    return ranked + pairs[needed:] + unranked


def training_pairs(cfg, model, tokenizer, splits: dict) -> list[dict]:
    """The pairs notebook 05 trains on, per cfg.dpo_pair_source: "human" = the offline pairs (plus
    on-policy rejected samples with cfg.on_policy_rejected, only the looping ones with
    cfg.on_policy_loops_only), "ranked" = with_ranked (already on-policy, so it replaces them)."""
    pairs = splits["dpo"]
    if cfg.dpo_chosen not in ("best", "human"):
        raise ValueError(f"Config.dpo_chosen={cfg.dpo_chosen!r}; use 'best' or 'human'")
    if cfg.dpo_pair_source == "ranked":
        judge, embedder = training_judge(cfg, splits), Embedder(cfg.embedder)
        return with_ranked(cfg, model, tokenizer, pairs, judge, embedder)
    if cfg.dpo_pair_source != "human":
        raise ValueError(f"Config.dpo_pair_source={cfg.dpo_pair_source!r}; use 'human' or 'ranked'")
    if not cfg.on_policy_rejected:
        return pairs
    samples = on_policy_samples(cfg, model, tokenizer, [p["prompt"] for p in pairs[:cfg.n_on_policy]])
    if cfg.on_policy_loops_only:  # with_on_policy skips the emptied ones
        samples = [s if has_loop(s) else "" for s in samples]
    return with_on_policy(pairs, samples)
