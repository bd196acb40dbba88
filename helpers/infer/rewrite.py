"""Rewrite drafts with one of the four systems: decode, clean, and (the fact switch)
resample and repair rewrites that lost the draft's facts. The command line for
files is `python -m helpers.tools.rewrite_files`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from helpers.core.cache import content_key, load_json, save_json
from helpers.core.io import atomic_write_jsonl, iter_jsonl
from helpers.core.text_measures import fact_preservation, has_loop, invented_facts
from helpers.infer.clean import clean_output, cut_loop
from helpers.infer.decode import generate_tokens
from helpers.infer.fact_repair import repair_facts, sentence_candidates
from helpers.infer.systems import use_system
from helpers.train.adapters import adapter_digest
from helpers.train.base import base_fingerprint
from helpers.train.trainer import adapter_fingerprint, ids_digest


@dataclasses.dataclass
class Rewrite:
    text: str
    n_tokens: int  # answer tokens generated
    hit_cap: bool  # stopped by the token cap, not by the model: the text may be cut short


def rewrite_detailed(model, tokenizer, drafts: list[str], cfg, progress: bool = True,
                     clean: bool = True, seed: int | None = None,
                     desc: str = "rewriting", plain: list[Rewrite] | None = None) -> list[Rewrite]:
    """Rewrite every draft (batched, sampled, length-capped), in input order. With
    cfg.loop_check_samples > 0 a rewrite that loops or hits the cap is resampled (resample_loops).
    With cfg.fact_check_samples > 0 a rewrite that lost facts is resampled (verify_and_resample,
    unless cfg.fact_resample is off), then, with cfg.fact_repair, what is still lost is put back
    sentence by sentence (fact_repair). `plain`: these drafts' rewrites with the fact switch off
    (the loop switch as cfg has it), when the caller already decoded them with the same model and
    settings; the fact switch starts from them."""
    def decode(texts, run_cfg, run_seed, label):
        reasons = []
        tokens = generate_tokens(model, tokenizer, texts, run_cfg, progress, run_seed, label,
                                 finish_reasons=reasons)
        texts = [clean_output(tokenizer.decode(t)) if clean else tokenizer.decode(t)
                 for t in tokens]
        texts = [cut_loop(t) for t in texts] if run_cfg.cut_loops else texts
        return [Rewrite(text, len(t), r == "length") for text, t, r in zip(texts, tokens, reasons)]

    if plain is not None and len(plain) != len(drafts):
        raise ValueError(f"rewrite_detailed: {len(plain)} plain rewrites for {len(drafts)} drafts")
    base_seed = cfg.seed if seed is None else seed
    first = decode(drafts, cfg, seed, desc) if plain is None else list(plain)
    if cfg.loop_check_samples > 0 and plain is None:
        loop_sampling = dataclasses.replace(cfg, temperature=cfg.loop_check_temperature)
        first = resample_loops(drafts, first, cfg.loop_check_samples, lambda texts: decode(
            texts, loop_sampling, base_seed + 4, "loop check"), cfg.loop_check_choice)
    if cfg.fact_check_samples <= 0:
        return first
    n = cfg.fact_check_samples
    sampling = dataclasses.replace(cfg, temperature=cfg.fact_check_temperature)
    chosen = verify_and_resample(drafts, first, n, lambda texts: decode(
        texts, sampling, base_seed + 1, "fact check")) if cfg.fact_resample else first
    if not cfg.fact_repair:
        return chosen

    def rewrite_sentences(texts):  # the first candidate decodes as cfg does, n more are sampled
        return sentence_candidates(
            texts, n, lambda t: [r.text for r in decode(t, cfg, base_seed + 2, "fact repair")],
            lambda t: [r.text for r in decode(t, sampling, base_seed + 3, "fact repair")])

    repaired = repair_facts(drafts, [r.text for r in chosen], rewrite_sentences)
    return [dataclasses.replace(r, text=t) for r, t in zip(chosen, repaired)]


# The loop switch checks for a repeated 6-word sequence, stricter than the 8 words the loop rate
# counts: a rewrite on its way into a loop is caught early, and the measure is not what is selected
LOOP_CHECK_N = 6


def fluent(rewrite: Rewrite) -> bool:
    """Not empty, no repeated LOOP_CHECK_N-word sequence, ended by the model and not by the cap."""
    return bool(rewrite.text.strip()) and not rewrite.hit_cap and \
        not has_loop(rewrite.text, LOOP_CHECK_N)


def resample_where(drafts: list[str], first: list[Rewrite], n: int, sample, needs,
                   choose) -> list[Rewrite]:
    """What both switches do: for each rewrite i with needs(i), n more candidates from
    `sample(texts) -> rewrites` (all such drafts in one call, each repeated n times), and
    choose(i, candidates) with the plain rewrite first among them; the others stay as they are."""
    chosen = list(first)
    todo = [i for i in range(len(first)) if needs(i)]
    if not todo:
        return chosen
    extra = sample([drafts[i] for i in todo for _ in range(n)])
    for k, i in enumerate(todo):
        chosen[i] = choose(i, [first[i]] + extra[k * n:(k + 1) * n])
    return chosen


LOOP_CHOICES = ("first", "facts")


def resample_loops(drafts: list[str], first: list[Rewrite], n: int, sample,
                   choice: str = "first") -> list[Rewrite]:
    """The loop switch: for each rewrite that is not `fluent`, n more candidates
    (resample_where); keep a fluent one, the plain rewrite when none is (so a draft the model
    cannot rewrite without looping keeps the same text as with the switch off). `choice`
    "first": the first fluent candidate; "facts": the fluent candidate keeping the most of the
    draft's facts, then inventing the fewest, then the first."""
    if choice not in LOOP_CHOICES:
        raise ValueError(f"loop_check_choice must be one of {LOOP_CHOICES}, got {choice!r}")

    def rank(i, candidate):  # higher is better; NaN facts kept (no facts in the draft) ties at 0
        kept = fact_preservation(drafts[i], candidate.text)
        return (0.0 if kept != kept else kept, -len(invented_facts(drafts[i], candidate.text)))

    def keep(i, cands):
        ok = [c for c in cands[1:] if fluent(c)]
        if not ok:
            return cands[0]
        return ok[0] if choice == "first" else max(ok, key=lambda c: rank(i, c))  # max: first of ties

    return resample_where(drafts, first, n, sample, lambda i: not fluent(first[i]), keep)


def verify_and_resample(drafts: list[str], first: list[Rewrite], n: int, sample) -> list[Rewrite]:
    """The fact switch's resampling: for each rewrite that lost some of its draft's facts, n more
    candidates (resample_where); keep the one that keeps the most facts (best_by_facts: ties go
    to the first, the plain rewrite)."""
    def lossy(i):  # NaN (no facts) compares False: kept
        return fact_preservation(drafts[i], first[i].text) < 1.0

    def most_facts(i, cands):
        return cands[best_by_facts(drafts[i], [c.text for c in cands])]

    return resample_where(drafts, first, n, sample, lossy, most_facts)


def rewrite(model, tokenizer, drafts: list[str], cfg, progress: bool = True,
            clean: bool = True, seed: int | None = None, desc: str = "rewriting") -> list[str]:
    """Rewrite every draft (batched, sampled, length-capped); returns texts in input order."""
    return [r.text for r in rewrite_detailed(model, tokenizer, drafts, cfg, progress, clean, seed,
                                             desc)]


# every Config field that changes what `rewrite` writes for a given model and draft
DECODING_FIELDS = ("system_prompt", "temperature", "top_p", "repetition_penalty",
                   "repetition_context", "no_repeat_ngram", "dry_multiplier", "dry_base",
                   "dry_allowed_length", "content_word_penalty", "restate_penalty",
                   "restate_allowed", "cut_loops", "max_len_ratio",
                   "eos_ramp", "eos_ramp_from",
                   "gen_max_tokens", "gen_batch_size", "loop_check_samples",
                   "loop_check_temperature", "loop_check_choice",
                   "seed", "fact_check_samples", "fact_check_temperature", "fact_resample",
                   "fact_repair", "compute_dtype")


def decoding_settings(cfg) -> dict:
    """The DECODING_FIELDS that can change a rewrite: the loop switch's temperature and choice
    only while it is on, the settings of DRY, the content-word and restatement penalties and the
    EOS ramp only while each is on, so that changing them with their switch off reuses the cached
    rewrites."""
    off = ("loop_check_temperature", "loop_check_choice") if cfg.loop_check_samples == 0 else ()
    off += ("dry_multiplier", "dry_base", "dry_allowed_length") if cfg.dry_multiplier == 0 else ()
    off += ("eos_ramp", "eos_ramp_from") if cfg.eos_ramp == 0 else ()
    off += ("content_word_penalty",) if cfg.content_word_penalty == 0 else ()
    off += ("restate_penalty", "restate_allowed") if cfg.restate_penalty == 0 else ()
    return {f: getattr(cfg, f) for f in DECODING_FIELDS if f not in off}


# bump when the rewrites would change for the same key: old cache entries are then ignored
EVAL_REWRITES_VERSION = 1
ON_POLICY_VERSION = 1


def rewrite_eval_set(cfg, model, tokenizer, rows: list[dict], systems=("base", "sft", "sft+dpo"),
                     out_path: Path | None = None) -> list[dict]:
    """The contract notebook 07 reads: one row per eval draft with every system's rewrite
    (`outputs`) and whether it stopped at the token cap (`hit_cap`, by system), written
    atomically to runs/<preset>/rewrites.jsonl. Its cache key (helpers.core.cache: base, adapters
    in memory, drafts, systems, decoding fields) goes beside it; a call with the same key reads the
    file back instead of generating again, so rerunning the cell is instant and any change reruns."""
    out_path = Path(out_path or cfg.path("rewrites.jsonl"))
    key_path = out_path.with_name(out_path.name + ".key.json")
    key = content_key("eval-rewrites", EVAL_REWRITES_VERSION, base=base_fingerprint(cfg),
                      adapters=adapter_digest(model),
                      drafts=ids_digest([f"{r['id']}\t{r['ai']}" for r in rows]),
                      systems=list(systems),
                      decoding=decoding_settings(cfg),
                      fields=["outputs", "hit_cap"])
    if out_path.exists() and load_json(key_path, key) is not None:
        print(f"{out_path} was written for these adapters, drafts and decoding: read back")
        return [row for _, row in iter_jsonl(out_path, strict=True)]
    outputs = {}
    for which in systems:
        use_system(model, which)
        outputs[which] = rewrite_detailed(model, tokenizer, [r["ai"] for r in rows], cfg,
                                          desc=which)
    records = [{"id": r["id"], "domain": r["domain"], "source": r["ai"], "human": r["human"],
                "outputs": {which: outputs[which][i].text for which in systems},
                "hit_cap": {which: outputs[which][i].hit_cap for which in systems}}
               for i, r in enumerate(rows)]
    key_path.unlink(missing_ok=True)  # a crash between the two writes leaves no stale key
    atomic_write_jsonl(out_path, records)
    save_json(key_path, key, {"rows": len(records)}, keep=False)
    return records


def on_policy_decoding(cfg):
    """cfg decoding as the SFT model writes on its own: sampled at cfg.on_policy_temperature,
    without the repetition penalty, DRY, the content-word and restatement penalties and the EOS
    ramp, so that DPO's samples show its failure modes (loops and drifts to the token cap
    included)."""
    return dataclasses.replace(cfg, temperature=cfg.on_policy_temperature, repetition_penalty=1.0,
                               dry_multiplier=0.0, eos_ramp=0.0, content_word_penalty=0.0,
                               restate_penalty=0.0)


def on_policy_samples(cfg, model, tokenizer, drafts: list[str]) -> list[str]:
    """The SFT model's own rewrites of `drafts`, sampled at cfg.on_policy_temperature: DPO's
    on-policy rejected texts. Cached in
    runs/<preset>/dpo_on_policy.json (helpers.core.cache) for this SFT adapter and these sampling
    settings."""
    cfg = on_policy_decoding(cfg)
    key = content_key("on-policy-samples", ON_POLICY_VERSION, sft=adapter_fingerprint(cfg),
                      drafts=ids_digest(drafts),
                      sampling=[cfg.temperature, cfg.top_p, cfg.max_len_ratio, cfg.gen_max_tokens,
                                cfg.seed])
    cache = cfg.path("dpo_on_policy.json")
    cached = load_json(cache, key)
    if cached is not None:
        return cached
    use_system(model, "sft")
    try:
        samples = rewrite(model, tokenizer, drafts, cfg, desc="on-policy samples")
    finally:
        use_system(model, "sft+dpo")
    save_json(cache, key, samples, keep=False)
    return samples


def best_by_facts(source: str, candidates: list[str], meaning_fn=None) -> int:
    """Index of the candidate rewrite of `source` to keep (verify and resample): the one keeping
    the most facts; ties go to the closest in meaning (`meaning_fn(source, candidates)` gives one
    similarity per candidate), then to the earliest. An empty text loses to any other."""
    if not candidates:
        raise ValueError("best_by_facts: no candidates to choose from")
    kept = [fact_preservation(source, c) for c in candidates]
    kept = [0.0 if k != k else k for k in kept]  # NaN: the source has no facts, all tie
    meaning = list(meaning_fn(source, candidates)) if meaning_fn else [0.0] * len(candidates)
    if len(meaning) != len(candidates):
        raise ValueError(f"best_by_facts: meaning_fn gave {len(meaning)} scores for "
                         f"{len(candidates)} candidates")
    keys = [(bool(c.strip()), k, float(m)) for c, k, m in zip(candidates, kept, meaning)]
    return max(range(len(candidates)), key=keys.__getitem__)  # max keeps the first of ties
