"""Rewrite drafts with one of the four systems: base, sft, dpo-only, sft+dpo (or the merged adapter).

Drafts are decoded together with mlx-lm's BatchGenerator (on a CPU a batch of 32 costs little more
per step than one sequence), sampled with cfg.temperature / cfg.top_p, each capped at
cfg.max_len_ratio times its source length, and cleaned of chat artefacts ("Sure, here is...").
The command line for files is `python -m helpers.humanize` (helpers/humanize.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import make_prompt_cache

from .data import chat_messages
from .fact_repair import repair_facts, sentence_candidates
from .io import atomic_write_json, atomic_write_jsonl
from .lora import fused_view, load_base, load_stacked, set_adapters, stacked_layers
from .text_measures import loop_start

SYSTEMS = ("base", "sft", "dpo-only", "sft+dpo")
SWITCHES = {"base": (False, False), "sft": (True, False), "dpo-only": (False, True),
            "sft+dpo": (True, True)}


# ---------------------------------------------------------------- models

def adapter_dir(cfg, name: str) -> Path:
    return cfg.input_path(f"adapters/{name}")


def load_system(cfg, which: str = "sft+dpo"):
    """(model, tokenizer) for base, sft, dpo-only, sft+dpo or merged. For the four stackable
    systems the model carries both adapters (when trained) and `use_system` switches between them
    without reloading."""
    from mlx_lm.tuner.utils import load_adapters

    if which not in SYSTEMS + ("merged",):
        raise ValueError(f"unknown system {which!r}; choose one of {SYSTEMS + ('merged',)}")
    model, tokenizer = load_base(cfg)
    if which == "merged":
        load_adapters(model, str(adapter_dir(cfg, "merged")))
    elif which != "base" and (adapter_dir(cfg, "dpo") / "adapters.safetensors").exists():
        load_stacked(model, adapter_dir(cfg, "sft"), adapter_dir(cfg, "dpo"))
        use_system(model, which)
    elif which == "sft":
        load_adapters(model, str(adapter_dir(cfg, "sft")))
    elif which != "base":
        raise FileNotFoundError(f"{adapter_dir(cfg, 'dpo')}: no DPO adapter; run notebook 05")
    model.eval()  # adapter modules are created in training mode (dropout on)
    return model, tokenizer


def use_system(model, which: str) -> None:
    """Switch a stacked model (base + SFT + DPO) to one of the four systems."""
    if which == "base" and not stacked_layers(model):
        return
    sft, dpo = SWITCHES[which]
    set_adapters(model, sft=sft, dpo=dpo)


# ---------------------------------------------------------------- cleaning

_META = r"(?:rewrit|revis|version|text|paragraph|passage|human|natural)"
_PREAMBLE_LINE = re.compile(
    rf"^\W*(?:(?:sure|certainly|of course|absolutely|okay|ok)\b[^\n]*?|"
    rf"(?:here(?:'s| is| are)|below is|the following is)\b[^\n]*?{_META}[^\n]*?|"
    rf"(?:the )?{_META}\w*(?: \w+){{0,3}})\s*[:!.]?\W*$", re.I)
_PREAMBLE_COLON = re.compile(r"^\W*(?:to rewrite|in rewriting|i'll|i will|let me|i've|i have)\b"
                             r"[^\n]*:\W*$", re.I)
_PREAMBLE_INLINE = re.compile(
    rf"^\W*(?:(?:sure|certainly|of course|absolutely|okay|ok)\W+)?"
    rf"(?:here(?:'s| is| are)|below is)\b[^\n:]{{0,80}}?{_META}[^\n:]{{0,40}}:\s*", re.I)
_TRAILER = re.compile(r"^\W*(?:i hope|let me know|feel free|note:|this rewrit|this version|"
                      r"in this (?:rewrit|version)|i (?:have|'ve) (?:rewritten|made|kept))", re.I)
_QUOTES = {'"': '"', "“": "”", "'": "'"}


def clean_output(text: str) -> str:
    """The rewrite alone: no "Sure, here is the rewritten text:", no closing "I hope this helps",
    no quotes around the whole answer."""
    text = text.strip()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    while len(paragraphs) > 1 and len(paragraphs[0]) < 120 and (
            _PREAMBLE_LINE.match(paragraphs[0]) or _PREAMBLE_COLON.match(paragraphs[0])):
        paragraphs.pop(0)
    while len(paragraphs) > 1 and _TRAILER.match(paragraphs[-1]):
        paragraphs.pop()
    text = "\n\n".join(paragraphs)
    lines = text.split("\n")
    if len(lines) > 1 and len(lines[0]) < 120 and (_PREAMBLE_LINE.match(lines[0])
                                                   or _PREAMBLE_COLON.match(lines[0])):
        text = "\n".join(lines[1:]).strip()
    text = _PREAMBLE_INLINE.sub("", text, count=1).strip()
    text = re.sub(r"^\*\*[^*\n]{0,60}\*\*\s*", "", text) if text.startswith("**") else text
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]] \
            and text[0] not in text[1:-1] and _QUOTES[text[0]] not in text[1:-1]:
        text = text[1:-1].strip()
    return text


_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)")


def cut_loop(text: str) -> str:
    """A looping rewrite cut where it starts to say the same thing again (the second occurrence
    of its first repeated 8-word sequence), back to the last sentence end before that point when
    there is one: the loop is dropped, not rewritten, so no word is made up to avoid it."""
    start = loop_start(text)
    if start is None:
        return text
    head = text[:start]
    ends = list(_SENTENCE_END.finditer(head))
    return (head[:ends[-1].end()] if ends else head).rstrip(" ,;:-—\n")


# ---------------------------------------------------------------- rewriting

def make_nucleus_sampler(temperature: float, top_p: float, top_k: int = 64):
    """Nucleus (top-p) sampling, as mlx-lm's make_sampler(temp, top_p) does it, but over the top_k
    most likely tokens: a partial sort of the 49k-token vocabulary instead of a full one (on a CPU
    the full sort costs more than the model's decode step). The distribution is the same whenever
    the nucleus has at most top_k tokens; otherwise the tail beyond top_k is dropped."""
    if temperature == 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)

    def sample(logprobs: mx.array) -> mx.array:
        k = min(top_k, logprobs.shape[-1])
        candidates = mx.argpartition(-logprobs, k - 1, axis=-1)[..., :k]
        top = mx.take_along_axis(logprobs, candidates, axis=-1)
        order = mx.argsort(-top, axis=-1)
        top = mx.take_along_axis(top, order, axis=-1)
        candidates = mx.take_along_axis(candidates, order, axis=-1)
        probs = mx.exp(top)
        mass_before = mx.cumsum(probs, axis=-1) - probs  # keep tokens until the mass reaches top_p
        top = mx.where(mass_before < top_p, top, -mx.inf)  # logprobs are normalized
        choice = mx.random.categorical(top * (1.0 / temperature), axis=-1)
        return mx.take_along_axis(candidates, choice[..., None], axis=-1).squeeze(-1)

    return sample



def repetition_processors(cfg) -> list:
    """mlx-lm's repetition penalty over the answer's last tokens: small models fall into loops
    ("his voice, his voice, ...") that sampling alone does not break."""
    from mlx_lm.sample_utils import make_logits_processors

    if cfg.repetition_penalty == 1.0:
        return []
    return make_logits_processors(repetition_penalty=cfg.repetition_penalty,
                                  repetition_context_size=cfg.repetition_context)


def no_repeat_ngram(n: int, exempt: mx.array | None = None):
    """A logits processor for one sequence that never lets its answer repeat an n-gram of tokens
    (fairseq's and transformers' `no_repeat_ngram_size`): with the answer a_1..a_t, every token x
    such that (a_{t-n+2}, ..., a_t, x) already occurs in the answer gets logit -inf. Only the
    answer counts, so copying a name or a clause from the draft stays allowed; a loop ("... which
    is a high-energy dance sport that combines ...") cannot start its second turn. Tokens where
    `exempt` (a boolean per vocabulary entry) is true are never banned: digits, because this
    tokenizer writes numbers one digit a token, and banning a repeated "0 0 0" turns "1,000,000"
    into an invented number.

    The processor keeps its own count of decode steps: at step k the context ends with the k
    answer tokens written so far, however the prompt before them was cached. The ban is computed
    with MLX array operations, so decoding stays asynchronous (no .item() per step)."""
    steps = 0

    def processor(context: mx.array, logits: mx.array) -> mx.array:
        nonlocal steps
        answer, steps = context[len(context) - steps:] if steps else context[:0], steps + 1
        t = answer.shape[0]
        if t < n:
            return logits
        # windows j = 0..t-n: does answer[j : j+n-1] equal the last n-1 tokens?
        same = mx.ones((t - n + 1,), dtype=mx.bool_)
        for i in range(n - 1):
            same = same & (answer[i:t - n + 1 + i] == answer[t - n + 1 + i])
        hits = mx.zeros((logits.shape[-1],), dtype=mx.float32).at[answer[n - 1:]].add(
            same.astype(mx.float32))
        banned = hits > 0
        if exempt is not None:  # a model may have more logits than the tokenizer has entries
            banned = banned & ~mx.pad(exempt, (0, max(0, hits.shape[0] - exempt.shape[0])))
        return mx.where(banned, -mx.inf, logits)

    return processor


_DIGITS: dict[int, mx.array] = {}


def digit_tokens(tokenizer) -> mx.array:
    """True for every vocabulary entry that is digits alone (after the tokenizer's space mark)."""
    vocab = tokenizer.vocab
    key = id(tokenizer)
    if key not in _DIGITS:
        flags = [False] * (max(vocab.values()) + 1)
        for piece, i in vocab.items():
            digits = piece.lstrip("Ġ▁ ")
            flags[i] = bool(digits) and all(c in "0123456789" for c in digits)
        _DIGITS[key] = mx.array(flags)
    return _DIGITS[key]


def logits_processors(cfg, tokenizer=None) -> list:
    """One sequence's processors: the repetition penalty, then the n-gram block (a fresh one per
    sequence: it counts that sequence's steps; digits exempt when the tokenizer is given)."""
    if cfg.no_repeat_ngram <= 0:
        return repetition_processors(cfg)
    exempt = digit_tokens(tokenizer) if tokenizer is not None else None
    return repetition_processors(cfg) + [no_repeat_ngram(cfg.no_repeat_ngram, exempt)]


def prompt_tokens(tokenizer, draft: str, system: str) -> list[int]:
    """The same chat prefix the adapters were trained on (up to the assistant's turn)."""
    return tokenizer.apply_chat_template(chat_messages(draft, system), add_generation_prompt=True,
                                         return_dict=False)


def max_new_tokens(tokenizer, draft: str, cfg) -> int:
    n_source = len(tokenizer.encode(draft, add_special_tokens=False))
    return min(cfg.gen_max_tokens, max(16, math.ceil(cfg.max_len_ratio * n_source)))


MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate prefill


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt starts with (the chat template and system prompt), less what
    would leave a prompt with no token of its own to prefill."""
    if len(prompts) < 2:
        return []
    return os.path.commonprefix(prompts)[:min(map(len, prompts)) - 1]


def prefix_cache(model, prefix: list[int]) -> list:
    """The KV cache of `prefix`, computed once: BatchGenerator copies it into each prompt's
    row (its merge only reads it), so the shared tokens are not prefilled again per prompt."""
    cache = make_prompt_cache(model)
    model(mx.array([prefix]), cache=cache)
    mx.eval([c.state for c in cache])
    return cache


def decode_steps(model, tokenizer, prompts: list[list[int]], budgets: list[int], cfg,
                 seed: int | None = None):
    """Decode the prompts together, step by step: yields (index, token, finish_reason) as mlx-lm's
    BatchGenerator makes them (token None for the EOS step; finish_reason "stop", "length" or
    None). Both batch rewriting and streaming go through here, so they decode alike."""
    model.eval()
    with fused_view(model):
        # seeded after fusing: building the fused linears draws random numbers, and the samples
        # must not depend on whether the model carries (switched-off) adapters
        mx.random.seed(cfg.seed if seed is None else seed)
        generator = BatchGenerator(
            model, stop_tokens=[[t] for t in tokenizer.eos_token_ids],
            sampler=make_nucleus_sampler(cfg.temperature, cfg.top_p),
            completion_batch_size=cfg.gen_batch_size,
            prefill_batch_size=min(8, cfg.gen_batch_size))
        # longest first: prefill batches pad less, and the last, shrinking batches hold the
        # short rewrites, not the long ones
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        prefix = shared_prefix(prompts)
        prefix = prefix if len(prefix) >= MIN_SHARED_PREFIX else []
        shared = {"caches": [prefix_cache(model, prefix)] * len(prompts),
                  # the tokens the cache holds: the repetition penalty sees the same context
                  "all_tokens": [list(prefix) for _ in prompts]} if prefix else {}
        try:
            uids = generator.insert([prompts[i][len(prefix):] for i in order],
                                    [budgets[i] for i in order],
                                    logits_processors=[logits_processors(cfg, tokenizer)
                                                       for _ in order],
                                    **shared)
            index = {uid: i for uid, i in zip(uids, order)}
            while responses := generator.next_generated():
                for r in responses:
                    yield index[r.uid], None if r.finish_reason == "stop" else r.token, \
                        r.finish_reason
        finally:
            generator.close()


def generate_tokens(model, tokenizer, drafts: list[str], cfg, progress: bool = True,
                    seed: int | None = None, desc: str = "rewriting",
                    finish_reasons: list | None = None) -> list[list[int]]:
    """The answer tokens for every draft (EOS excluded), batched and sampled, in input order.
    Pass a list as `finish_reasons` to get each draft's ("stop" or "length": the token cap)."""
    from tqdm.auto import tqdm

    if not drafts:
        return []
    prompts = [prompt_tokens(tokenizer, d, cfg.system_prompt) for d in drafts]
    budgets = [max_new_tokens(tokenizer, d, cfg) for d in drafts]
    tokens, reasons = [[] for _ in drafts], [None] * len(drafts)
    with tqdm(total=len(drafts), disable=not progress, desc=desc) as bar:
        for i, token, reason in decode_steps(model, tokenizer, prompts, budgets, cfg, seed):
            if token is not None:
                tokens[i].append(token)
            if reason is not None:
                reasons[i] = reason
                bar.update(1)
    if finish_reasons is not None:
        finish_reasons[:] = reasons
    return tokens


@dataclasses.dataclass
class Rewrite:
    text: str
    n_tokens: int  # answer tokens generated
    hit_cap: bool  # stopped by the token cap, not by the model: the text may be cut short


def rewrite_detailed(model, tokenizer, drafts: list[str], cfg, progress: bool = True,
                     clean: bool = True, seed: int | None = None,
                     desc: str = "rewriting", plain: list[Rewrite] | None = None) -> list[Rewrite]:
    """Rewrite every draft (batched, sampled, length-capped), in input order; with
    cfg.fact_check_samples > 0 a rewrite that lost facts is resampled (verify_and_resample, unless
    cfg.fact_resample is off), then, with cfg.fact_repair, what is still lost is put back sentence
    by sentence (fact_repair). `plain`: these drafts' rewrites with the switch off, when the caller
    already decoded them with the same model and settings; the switch starts from them."""
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
    first = decode(drafts, cfg, seed, desc) if plain is None else list(plain)
    if cfg.fact_check_samples <= 0:
        return first
    n, base_seed = cfg.fact_check_samples, cfg.seed if seed is None else seed
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


def verify_and_resample(drafts: list[str], first: list[Rewrite], n: int, sample) -> list[Rewrite]:
    """For each rewrite that lost some of its draft's facts, n more candidates from
    `sample(texts) -> rewrites` (all drafts at once, each repeated n times); keep the candidate
    that keeps the most facts (metrics.best_by_facts: ties go to the first, the plain rewrite)."""
    from .metrics import best_by_facts
    from .text_measures import fact_preservation

    lossy = [i for i, (d, r) in enumerate(zip(drafts, first))
             if fact_preservation(d, r.text) < 1.0]  # NaN (no facts) compares False: kept
    if not lossy:
        return first
    extra = sample([drafts[i] for i in lossy for _ in range(n)])
    chosen = list(first)
    for k, i in enumerate(lossy):
        candidates = [first[i]] + extra[k * n:(k + 1) * n]
        chosen[i] = candidates[best_by_facts(drafts[i], [c.text for c in candidates])]
    return chosen


def rewrite(model, tokenizer, drafts: list[str], cfg, progress: bool = True,
            clean: bool = True, seed: int | None = None, desc: str = "rewriting") -> list[str]:
    """Rewrite every draft (batched, sampled, length-capped); returns texts in input order."""
    return [r.text for r in rewrite_detailed(model, tokenizer, drafts, cfg, progress, clean, seed,
                                             desc)]


# every Config field that changes what `rewrite` writes for a given model and draft
DECODING_FIELDS = ("system_prompt", "temperature", "top_p", "repetition_penalty",
                   "repetition_context", "no_repeat_ngram", "cut_loops", "max_len_ratio",
                   "gen_max_tokens", "gen_batch_size",
                   "seed", "fact_check_samples", "fact_check_temperature", "fact_resample",
                   "fact_repair", "compute_dtype")


def rewrite_eval_set(cfg, model, tokenizer, rows: list[dict], systems=("base", "sft", "sft+dpo"),
                     out_path: Path | None = None) -> list[dict]:
    """The contract notebook 07 reads: one row per eval draft with every system's rewrite
    (`outputs`) and whether it stopped at the token cap (`hit_cap`, by system), written
    atomically to runs/<preset>/rewrites.jsonl. Its key (base, adapters in memory,
    drafts, systems, decoding fields) goes beside it; a call with the same key reads the file
    back instead of generating again, so rerunning the cell is instant and any change reruns."""
    from .io import iter_jsonl, read_json
    from .lora import adapter_digest, base_fingerprint
    from .train import ids_digest

    out_path = Path(out_path or cfg.path("rewrites.jsonl"))
    key_path = out_path.with_name(out_path.name + ".key.json")
    key = {"base": base_fingerprint(cfg), "adapters": adapter_digest(model),
           "drafts": ids_digest([f"{r['id']}\t{r['ai']}" for r in rows]), "systems": list(systems),
           "decoding": {f: getattr(cfg, f) for f in DECODING_FIELDS},
           "fields": ["outputs", "hit_cap"]}  # a file from before hit_cap was recorded: rewrite
    key = json.loads(json.dumps(key))  # tuples as lists, as read back
    if out_path.exists() and key_path.exists() and read_json(key_path) == key:
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
    atomic_write_json(key_path, key)
    return records


def on_policy_samples(cfg, model, tokenizer, drafts: list[str]) -> list[str]:
    """The SFT model's own rewrites of `drafts`, sampled at cfg.on_policy_temperature: DPO's
    on-policy rejected texts. Cached in
    runs/<preset>/dpo_on_policy.json for this SFT adapter and these sampling settings."""
    from .train import adapter_fingerprint, ids_digest

    # plain sampling, no repetition penalty: the rejected texts should show the SFT model's own
    # failure modes (loops included), so that DPO learns to move away from them
    cfg = dataclasses.replace(cfg, temperature=cfg.on_policy_temperature, repetition_penalty=1.0)
    key = {"sft": adapter_fingerprint(cfg), "drafts": ids_digest(drafts),
           "sampling": [cfg.temperature, cfg.top_p, cfg.max_len_ratio, cfg.gen_max_tokens, cfg.seed]}
    cache = cfg.path("dpo_on_policy.json")
    if cache.exists():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["samples"]
    use_system(model, "sft")
    try:
        samples = rewrite(model, tokenizer, drafts, cfg, desc="on-policy samples")
    finally:
        use_system(model, "sft+dpo")
    atomic_write_json(cache, {"key": key, "samples": samples})
    return samples
