"""Decoding many drafts together with mlx-lm's BatchGenerator (on a CPU a batch of 32
costs little more per step than one sequence): nucleus sampling, repetition
processors, a length-aware token cap, the shared prompt prefix computed once.
"""
from __future__ import annotations

import math
import os

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import make_prompt_cache
from tqdm.auto import tqdm

from helpers.core.prompt import chat_messages
from helpers.core.text_measures import content_words
from helpers.train.merge import fused_view


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
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.sample_utils import make_logits_processors

    if cfg.repetition_penalty == 1.0:
        return []
    return make_logits_processors(repetition_penalty=cfg.repetition_penalty,
                                  repetition_context_size=cfg.repetition_context)


def padded_to(flags: mx.array, size: int) -> mx.array:
    """Per-vocabulary flags padded with False to `size`: a model may have more logits than its
    tokenizer has entries."""
    return mx.pad(flags, (0, max(0, size - flags.shape[0])))


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
            banned = banned & ~padded_to(exempt, hits.shape[0])
        return mx.where(banned, -mx.inf, logits)

    return processor


def dry_penalty(multiplier: float, base: float = 1.75, allowed_length: int = 2,
                exempt: mx.array | None = None, max_match: int = 16):
    """A logits processor for one sequence: the DRY penalty ("don't repeat yourself", as in
    llama.cpp's sampler) on the answer a_1..a_t. A token x that followed an earlier stretch of the
    answer equal to its last L tokens would extend a repeat of length L; its logit loses

        multiplier * base ** (L - allowed_length)   when L >= allowed_length,

    L taken as the longest such match (at most max_match tokens). A short repeat ("the FTC" twice)
    costs little, a loop's tenth repeated token costs more than any logit gap, so a loop is
    steered away from without banning a name's second mention outright (no_repeat_ngram's
    failure). Only the answer counts, so copying the draft is free; `exempt` tokens (digits) are
    never penalised. Unlike llama.cpp there are no sequence breakers: this project's loops repeat
    whole sentences, and a breaker at each full stop would reset the match inside them.

    The match lengths are kept from step to step: when token a_t arrives, the candidate j (the
    token that followed a_1..a_{j-1}) matches one token longer than candidate j-1 did if
    a_{j-1} = a_t, else not at all; a handful of MLX operations a step, and no sync."""
    steps = 0
    length = mx.zeros((0,), dtype=mx.float32)  # the match length of each candidate a_2..a_t

    def processor(context: mx.array, logits: mx.array) -> mx.array:
        nonlocal steps, length
        answer, steps = context[len(context) - steps:] if steps else context[:0], steps + 1
        t = answer.shape[0]
        if t >= 2:
            grown = mx.concatenate([mx.zeros((1,), dtype=mx.float32), length]) + 1
            length = mx.minimum(mx.where(answer[:t - 1] == answer[t - 1], grown, 0.0), max_match)
        if t < max(allowed_length, 1) + 1:
            return logits
        penalty = mx.where(length >= allowed_length,
                           multiplier * mx.power(base, length - allowed_length), 0.0)
        per_token = mx.zeros((logits.shape[-1],), dtype=mx.float32).at[answer[1:]].maximum(penalty)
        if exempt is not None:
            per_token = mx.where(padded_to(exempt, per_token.shape[0]),
                                 0.0, per_token)
        return logits - per_token.astype(logits.dtype)

    return processor


def content_word_penalty(penalty: float, word_starts: mx.array):
    """A logits processor for one sequence: a presence penalty on content words. A token that
    begins a content word (`word_starts`, a boolean per vocabulary entry) and already occurs in the
    answer a_1..a_t loses `penalty` logits, once, however often it occurred:

        logit(x) -= penalty   when word_starts[x] and x is among a_1..a_t.

    A restatement says a clause again with the same nouns and verbs between other function words
    ("... combines urban and hip hop culture ..., which is a high-energy dance that combines ...
    urban and hip hop ..."); DRY, keyed on verbatim runs, lets it through. Here every content word
    it reuses costs `penalty`, so a clause of five reused words pays five times, while a word said
    twice pays once. Only the answer counts: the draft's words are free the first time."""
    steps, starts, seen = 0, None, None  # seen: the penalty each vocabulary entry carries now

    def processor(context: mx.array, logits: mx.array) -> mx.array:
        nonlocal steps, starts, seen
        if seen is None:
            starts = padded_to(word_starts, logits.shape[-1]).astype(mx.float32)
            seen = mx.zeros((logits.shape[-1],), dtype=mx.float32)
        if steps:  # the context's last token is the answer token chosen at the previous step
            last = context[-1:]
            seen = seen.at[last].maximum(penalty * starts[last])
        steps += 1
        return logits - seen.astype(logits.dtype)

    return processor


def restatement_penalty(multiplier: float, allowed: int, word_starts: mx.array,
                        clause_ends: mx.array, growth: float = 2.0):
    """A logits processor for one sequence: DRY for clauses. A restated clause says an earlier
    clause again in other words: most of its content words were used before. Within the current
    clause (since the last token in `clause_ends`: , ; : . ! ? or a line break), let c count the
    tokens written so far that start a content word (`word_starts`) already used in an earlier
    clause. Once c reaches `allowed`, every such reused word start loses

        multiplier * growth ** (c - allowed)   logits,

    so a clause may pick up a few words of earlier ones (a name, the subject) for free, and a
    clause that goes on repeating them pays more with each. Words reused within one clause are
    DRY's business, not this one's. The counts are kept with MLX array operations, no sync."""
    steps, state = 0, None
    never = float("inf")

    def processor(context: mx.array, logits: mx.array) -> mx.array:
        nonlocal steps, state
        if state is None:
            size = logits.shape[-1]
            # first[x]: the clause in which word start x was first written (never: not yet);
            # x was used in an earlier clause when first[x] < clause
            state = {"starts": padded_to(word_starts, size), "ends": padded_to(clause_ends, size),
                     "first": mx.full((size,), never), "clause": mx.array(0.0),
                     "reused": mx.array(0.0)}
        if steps:  # the context's last token is the answer token chosen at the previous step
            last, s = context[-1], state
            ended, start = s["ends"][last], s["starts"][last]
            earlier = start & (s["first"][last] < s["clause"])
            state = {**s, "reused": mx.where(ended, 0.0, s["reused"] + earlier),
                     "first": s["first"].at[last].minimum(mx.where(start, s["clause"], never)),
                     "clause": s["clause"] + ended}
        steps += 1
        cost = mx.where(state["reused"] >= allowed,
                        multiplier * mx.power(growth, state["reused"] - allowed), 0.0)
        return logits - mx.where(state["first"] < state["clause"], cost, 0.0).astype(logits.dtype)

    return processor


def eos_ramp(eos_ids: list[int], start: int, per_token: float,
             sentence_end: mx.array | None = None):
    """A logits processor for one sequence: a length-aware end. From answer token `start` on
    (the draft's length times eos_ramp_from), every end-of-sequence token gains `per_token` logits
    more each step, but only right after a token that ends a sentence (`sentence_end`, a boolean
    per vocabulary entry; None: after any token). Choosing answer token t > start after a full stop,

        logit(EOS) += per_token * (t - start).

    A rewrite that has said what the draft says and runs on (the drift or restatement that would
    otherwise stop at the token cap, cut mid-sentence) finds ending ever more likely at its next
    full stop. Before `start` nothing changes, and it never ends a sentence early: a bonus on EOS
    anywhere made the model stop where its full stop would have come. A linear version of
    transformers' `exponential_decay_length_penalty`, in logits, so that its size does not depend
    on the sign or scale of the EOS logit."""
    steps = 0
    eos = mx.array(eos_ids)
    ends = sentence_end

    def processor(context: mx.array, logits: mx.array) -> mx.array:
        nonlocal steps, ends
        steps += 1  # this call chooses answer token number `steps`
        if steps <= start:
            return logits
        bonus = mx.array(per_token * (steps - start), dtype=logits.dtype)
        if ends is not None:
            if ends.shape[0] < logits.shape[-1]:  # once: `ends` is kept padded
                ends = padded_to(ends, logits.shape[-1])
            bonus = mx.where(ends[context[-1]], bonus, 0.0)
        return logits + mx.zeros((logits.shape[-1],), dtype=logits.dtype).at[eos].add(bonus)

    return processor


_CLOSING = "\"'”’)]*"


def _decoded_token_flags(tokenizer, name: str, test) -> mx.array:
    """test(text) for the decoded text of every vocabulary entry, computed once per tokenizer."""
    key = (name, id(tokenizer))
    if key not in _TOKEN_FLAGS:
        size = max(tokenizer.vocab.values()) + 1
        _TOKEN_FLAGS[key] = mx.array([test(tokenizer.decode([i])) for i in range(size)])
    return _TOKEN_FLAGS[key]


def _ends_with(text: str, marks: str) -> bool:
    return "\n" in text or text.rstrip().rstrip(_CLOSING)[-1:] in tuple(marks)


def sentence_end_tokens(tokenizer) -> mx.array:
    """True for every vocabulary entry after which a sentence may be over: its text ends with
    . ! ? or … (closing quotes and brackets aside), or holds a line break."""
    return _decoded_token_flags(tokenizer, "sentence end", lambda text: _ends_with(text, ".!?…"))


def clause_end_tokens(tokenizer) -> mx.array:
    """True for every vocabulary entry after which a clause is over: its text ends with one of
    , ; : . ! ? or … (closing quotes and brackets aside), or holds a line break (the clause
    boundaries of text_measures.clauses)."""
    return _decoded_token_flags(tokenizer, "clause end", lambda text: _ends_with(text, ",;:.!?…"))


def content_word_tokens(tokenizer) -> mx.array:
    """True for every vocabulary entry that starts a content word: a space, then lower-case
    letters alone that text_measures.content_words keeps (3 or more, no function word). Names are
    left out: with their first piece penalised the model wrote the rest of the name after another
    piece ("Frederick" became "Freddie", "Santa Monica" "Santa Monico" on validation drafts)."""
    return _decoded_token_flags(
        tokenizer, "content words",
        lambda text: text[:1] == " " and text[1:].isalpha() and text[1:2].islower()
        and bool(content_words(text)))


def digit_tokens(tokenizer) -> mx.array:
    """True for every vocabulary entry that is digits alone (after the tokenizer's space mark)."""
    vocab = tokenizer.vocab
    key = ("digits", id(tokenizer))
    if key not in _TOKEN_FLAGS:
        flags = [False] * (max(vocab.values()) + 1)
        for piece, i in vocab.items():
            digits = piece.lstrip("Ġ▁ ")
            flags[i] = bool(digits) and all(c in "0123456789" for c in digits)
        _TOKEN_FLAGS[key] = mx.array(flags)
    return _TOKEN_FLAGS[key]


def logits_processors(cfg, tokenizer=None, ramp_start: int | None = None) -> list:
    """One sequence's processors: the repetition penalty, then the n-gram block, the DRY penalty,
    the content-word and restatement penalties and the EOS ramp (from answer token `ramp_start`),
    each when set (fresh ones per sequence: they count that sequence's steps; digits exempt when
    the tokenizer is given)."""
    exempt = digit_tokens(tokenizer) if tokenizer is not None else None
    processors = repetition_processors(cfg)
    if cfg.no_repeat_ngram > 0:
        processors.append(no_repeat_ngram(cfg.no_repeat_ngram, exempt))
    if cfg.dry_multiplier > 0:
        processors.append(dry_penalty(cfg.dry_multiplier, cfg.dry_base, cfg.dry_allowed_length,
                                      exempt))
    if cfg.content_word_penalty > 0 and tokenizer is not None:
        processors.append(content_word_penalty(cfg.content_word_penalty,
                                               content_word_tokens(tokenizer)))
    if cfg.restate_penalty > 0 and tokenizer is not None:
        processors.append(restatement_penalty(cfg.restate_penalty, cfg.restate_allowed,
                                              content_word_tokens(tokenizer),
                                              clause_end_tokens(tokenizer)))
    if cfg.eos_ramp > 0 and ramp_start is not None and tokenizer is not None:
        processors.append(eos_ramp(sorted(tokenizer.eos_token_ids), ramp_start, cfg.eos_ramp,
                                   sentence_end_tokens(tokenizer)))
    return processors


def prompt_tokens(tokenizer, draft: str, system: str) -> list[int]:
    """The same chat prefix the adapters were trained on (up to the assistant's turn)."""
    return tokenizer.apply_chat_template(chat_messages(draft, system), add_generation_prompt=True,
                                         return_dict=False)


def source_length(tokenizer, draft: str) -> int:
    return len(tokenizer.encode(draft, add_special_tokens=False))


def max_new_tokens(tokenizer, draft: str, cfg) -> int:
    return min(cfg.gen_max_tokens, max(16, math.ceil(cfg.max_len_ratio *
                                                      source_length(tokenizer, draft))))


def eos_ramp_start(tokenizer, draft: str, cfg) -> int:
    """The answer token from which the EOS ramp pushes towards an end: the draft's length times
    cfg.eos_ramp_from (a rewrite about as long as its draft has room to finish its sentence)."""
    return math.ceil(cfg.eos_ramp_from * source_length(tokenizer, draft))

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
                 seed: int | None = None, ramp_starts: list[int] | None = None):
    """Decode the prompts together, step by step: yields (index, token, finish_reason) as mlx-lm's
    BatchGenerator makes them (token None for the EOS step; finish_reason "stop", "length" or
    None). `ramp_starts`: where each prompt's EOS ramp starts (`eos_ramp_start`; None: no ramp).
    Both batch rewriting and streaming go through here, so they decode alike."""
    ramp_starts = ramp_starts or [None] * len(prompts)
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
                                    logits_processors=[
                                        logits_processors(cfg, tokenizer, ramp_starts[i])
                                        for i in order],
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
    if not drafts:
        return []
    prompts = [prompt_tokens(tokenizer, d, cfg.system_prompt) for d in drafts]
    budgets = [max_new_tokens(tokenizer, d, cfg) for d in drafts]
    starts = [eos_ramp_start(tokenizer, d, cfg) for d in drafts]
    tokens, reasons = [[] for _ in drafts], [None] * len(drafts)
    with tqdm(total=len(drafts), disable=not progress, desc=desc) as bar:
        for i, token, reason in decode_steps(model, tokenizer, prompts, budgets, cfg, seed,
                                             starts):
            if token is not None:
                tokens[i].append(token)
            if reason is not None:
                reasons[i] = reason
                bar.update(1)
    if finish_reasons is not None:
        finish_reasons[:] = reasons
    return tokens


_TOKEN_FLAGS: dict[tuple, mx.array] = {}  # per tokenizer: which entries are digits, sentence ends
