"""Rewriting: artefact cleaning, sampling, length caps, batched generation, system switches."""
from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

from helpers.core import text_measures
from helpers.core.config import get_config
from helpers.infer import decode
from helpers.infer.clean import clean_output, cut_loop
from helpers.infer.decode import (
    MIN_SHARED_PREFIX,
    clause_end_tokens,
    content_word_penalty,
    content_word_tokens,
    restatement_penalty,
    digit_tokens,
    dry_penalty,
    eos_ramp,
    eos_ramp_start,
    sentence_end_tokens,
    generate_tokens,
    make_nucleus_sampler,
    max_new_tokens,
    no_repeat_ngram,
    prefix_cache,
    prompt_tokens,
    repetition_processors,
    shared_prefix,
)
from helpers.infer.rewrite import Rewrite, decoding_settings, rewrite, rewrite_detailed
from helpers.infer.systems import SWITCHES, use_system
from helpers.train.lora import add_lora, lora_config
from helpers.train.stacked import add_dpo_adapter, stacked_layers

from conftest import make_tiny_model


@pytest.mark.parametrize("raw, clean", [
    ("Sure, here is the rewritten text:\n\nThe mill closed in 1931.", "The mill closed in 1931."),
    ("Here's a more natural version:\nThe mill closed in 1931.", "The mill closed in 1931."),
    ("Sure! Here is the rewritten text: The mill closed in 1931.", "The mill closed in 1931."),
    ("Certainly!\n\nThe mill closed in 1931.", "The mill closed in 1931."),
    ("Rewritten text:\nThe mill closed in 1931.", "The mill closed in 1931."),
    ('"The mill closed in 1931."', "The mill closed in 1931."),
    ("“The mill closed in 1931.”", "The mill closed in 1931."),
    ("The mill closed in 1931.\n\nI hope this helps! Let me know if you need changes.",
     "The mill closed in 1931."),
    ("**Rewritten text:** The mill closed in 1931.", "The mill closed in 1931."),
    ("To rewrite this text, I'll make the following changes:\n\nThe mill closed in 1931.",
     "The mill closed in 1931."),
    ("I will keep every fact:\nThe mill closed in 1931.", "The mill closed in 1931."),
    ("I will not go: the mill closed in 1931.", "I will not go: the mill closed in 1931."),
    # real text that merely looks like an artefact stays
    ("Here is what happened: the mill closed in 1931.", "Here is what happened: the mill closed in 1931."),
    ('He said "no" and left. She said "yes".', 'He said "no" and left. She said "yes".'),
    ("Sure enough, the mill closed in 1931.", "Sure enough, the mill closed in 1931."),
    ("The mill closed.\n\nThe town shrank.", "The mill closed.\n\nThe town shrank."),
])
def test_clean_output(raw, clean):
    assert clean_output(raw) == clean


def nucleus(logprobs, top_p):
    order = np.argsort(-logprobs)
    probs = np.exp(logprobs[order])
    return set(order[:int(np.searchsorted(np.cumsum(probs), top_p)) + 1].tolist())


def test_nucleus_sampler_samples_the_nucleus_with_the_right_frequencies():
    logits = np.full(49152, -30.0, np.float32)
    logits[[7, 70, 700, 7000, 40000]] = [3.0, 2.5, 2.0, 1.0, 0.0]
    logprobs = logits - np.log(np.exp(logits.astype(np.float64)).sum())
    sampler = make_nucleus_sampler(temperature=0.7, top_p=0.9)
    mx.random.seed(0)
    draws = np.array(sampler(mx.array(np.tile(logprobs, (4000, 1)))))
    allowed = nucleus(logprobs, 0.9)
    assert set(draws.tolist()) <= allowed and allowed == {7, 70, 700}
    # within the nucleus: softmax(logits / T), renormalized
    kept = np.array(sorted(allowed))
    expected = np.exp(logits[kept] / 0.7) / np.exp(logits[kept] / 0.7).sum()
    observed = np.array([(draws == k).mean() for k in kept])
    np.testing.assert_allclose(observed, expected, atol=0.03)


def test_greedy_sampler_at_temperature_zero():
    logprobs = mx.array([[0.1, 0.5, 0.2], [0.9, 0.0, 0.1]])
    assert make_nucleus_sampler(0.0, 0.9)(logprobs).tolist() == [1, 0]


@pytest.mark.slow
def test_rewrite_batches_in_order_and_caps_length(tokenizer):
    cfg = get_config("smoke", gen_max_tokens=12, gen_batch_size=2, lora_layers=-1)
    model, _ = make_tiny_model()
    add_lora(model, lora_config(cfg), seed=0)
    add_dpo_adapter(model, lora_config(cfg, "dpo"))
    drafts = ["One short draft.", "A second, slightly longer draft about mills.", "Third."]
    budgets = [max_new_tokens(tokenizer, d, cfg) for d in drafts]
    assert budgets == [12, 12, 12]  # the cap wins over max_len_ratio x source length
    tokens = generate_tokens(model, tokenizer, drafts, cfg, progress=False)
    assert all(1 <= len(t) <= 12 for t in tokens) and max(len(t) for t in tokens) == 12
    outputs = rewrite(model, tokenizer, drafts, cfg, progress=False, clean=False)
    assert outputs == [tokenizer.decode(t) for t in tokens]
    # the same seed gives the same texts; fusing during generation left the adapters in place
    assert rewrite(model, tokenizer, drafts, cfg, progress=False, clean=False) == outputs
    assert len(stacked_layers(model)) == 14
    # one batch or one at a time: each draft is decoded on its own (greedy to compare exactly)
    greedy = get_config("smoke", gen_max_tokens=12, gen_batch_size=1, temperature=0.0)
    alone = [rewrite(model, tokenizer, [d], greedy, progress=False, clean=False)[0]
             for d in drafts]
    together = rewrite(model, tokenizer, drafts, get_config(
        "smoke", gen_max_tokens=12, gen_batch_size=3, temperature=0.0), progress=False, clean=False)
    assert together == alone


def test_the_shared_prefix_is_prefilled_once_and_decodes_alike(tokenizer, monkeypatch):
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5]]) == [1, 2]
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == [1, 2]  # each keeps a token
    assert shared_prefix([[1, 2, 3]]) == []  # one prompt: nothing to share
    cfg = get_config("smoke", gen_max_tokens=12, temperature=0.0, repetition_penalty=1.3)
    model, _ = make_tiny_model()
    drafts = ["One short draft.", "A second, slightly longer draft about mills.", "Third."]
    prompts = [prompt_tokens(tokenizer, d, cfg.system_prompt) for d in drafts]
    prefix = shared_prefix(prompts)
    assert len(prefix) >= MIN_SHARED_PREFIX  # the chat template and system prompt
    prefilled = []
    original = prefix_cache
    monkeypatch.setattr("helpers.infer.decode.prefix_cache",
                        lambda m, p: prefilled.append(list(p)) or original(m, p))
    shared = generate_tokens(model, tokenizer, drafts, cfg, progress=False)
    assert prefilled == [prefix]
    monkeypatch.setattr("helpers.infer.decode.MIN_SHARED_PREFIX", 10 ** 6)  # every prompt prefilled whole
    assert generate_tokens(model, tokenizer, drafts, cfg, progress=False) == shared
    assert prefilled == [prefix]


def test_use_system_switches():
    cfg = get_config("smoke", lora_layers=-1)
    model, _ = make_tiny_model()
    add_lora(model, lora_config(cfg), seed=0)
    add_dpo_adapter(model, lora_config(cfg, "dpo"))
    for which, (sft, dpo) in SWITCHES.items():
        use_system(model, which)
        layer = stacked_layers(model)[0][1]
        assert (layer.use_sft, layer.use_dpo) == (sft, dpo)


@pytest.mark.slow
def test_repetition_penalty_breaks_greedy_loops(tokenizer):
    model, _ = make_tiny_model()
    drafts = ["The mill closed in 1931 and the town shrank."]

    def answer(**overrides):
        cfg = get_config("smoke", gen_max_tokens=16, temperature=0.0, **overrides)
        return generate_tokens(model, tokenizer, drafts, cfg, progress=False)[0]

    assert repetition_processors(get_config("smoke")) == []  # 1.0: nothing added
    plain = answer()
    assert len(set(plain)) < len(plain)  # this random model loops when greedy
    penalized = answer(repetition_penalty=1e6, repetition_context=16)
    assert len(penalized) == 16 and len(set(penalized)) == 16


LOOPING = ("The dance sport combines urban culture with acrobatic feats. This high-energy dance "
           "sport combines urban culture with acrobatic feats and music.")


def test_a_looping_rewrite_is_cut_before_it_says_it_again():
    assert LOOPING[text_measures.loop_start(LOOPING):].startswith("dance sport combines urban")
    assert cut_loop(LOOPING) == ("The dance sport combines urban culture with acrobatic "
                                          "feats.")
    words = "one two three four five six seven eight"
    assert cut_loop(f"{words}, {words} nine") == words  # no sentence end: cut at the repeat
    plain = "Rain fell for nine days. The river rose two metres."
    assert cut_loop(plain) == plain and text_measures.loop_start(plain) is None


def test_no_repeat_ngram_bans_what_would_complete_an_answer_ngram_seen_before():
    block = no_repeat_ngram(3)
    prompt = [9, 5, 6, 7]  # the prompt may hold the n-gram: copying the draft stays allowed
    answer = [5, 6, 7, 5, 6]
    logits = mx.zeros((1, 10))
    for k in range(len(answer) + 1):  # step k sees the prompt and the k answer tokens so far
        out = np.array(block(mx.array(prompt + answer[:k]), logits))
    assert np.isneginf(out[0, 7]) and np.isfinite(np.delete(out[0], 7)).all()  # (5, 6) -> 7 seen
    digits = no_repeat_ngram(3, exempt=mx.array([i == 7 for i in range(8)]))  # 7: a digit
    for k in range(len(answer) + 1):
        out = np.array(digits(mx.array(prompt + answer[:k]), logits))
    assert np.isfinite(out).all()  # a repeated number is not a loop: "1,000,000" stays writable
    fresh = no_repeat_ngram(3)
    for k in range(3):  # answer [5, 6]: nothing to repeat yet, whatever the prompt holds
        out = np.array(fresh(mx.array(prompt + answer[:k]), logits))
    assert np.isfinite(out).all()


def dry_after(processor, prompt, answer, vocab=10):
    """The processor's output at the step after `answer` (it is called once per decode step)."""
    for k in range(len(answer) + 1):
        out = np.array(processor(mx.array(prompt + answer[:k]), mx.zeros((1, vocab))))
    return out[0]


def test_dry_penalises_the_token_that_extends_a_repeat_by_its_length():
    prompt = [9, 8, 5, 6, 7]  # the prompt's (5, 6, 7, 8) is not the answer's: copying is free
    # answer 5 6 7 8 5 6 7: writing 8 again would extend a repeat of 3 tokens (5 6 7)
    out = dry_after(dry_penalty(1.0, base=2.0, allowed_length=2), prompt, [5, 6, 7, 8, 5, 6, 7])
    assert out[8] == -2.0  # 1.0 * 2 ** (3 - 2)
    assert (np.delete(out, 8) == 0).all()
    # a 2-token repeat is at the allowed length: penalised by the multiplier alone
    assert dry_after(dry_penalty(0.5, 2.0, 2), prompt, [5, 6, 7, 5, 6])[7] == -0.5
    # one repeated token is below it: "the" twice costs nothing
    assert (dry_after(dry_penalty(0.5, 2.0, 2), prompt, [5, 6, 7, 5]) == 0).all()
    # the longest match counts, here through a run of one token (3 3 3 -> 3: L = 3)
    assert dry_after(dry_penalty(1.0, 2.0, 2), prompt, [3, 3, 3, 3])[3] == -2.0
    # digits are exempt: a number's repeated digits stay writable
    exempt = mx.array([i == 8 for i in range(10)])
    assert (dry_after(dry_penalty(1.0, 2.0, 2, exempt), prompt, [5, 6, 7, 8, 5, 6, 7]) == 0).all()


def test_dry_kept_from_step_to_step_equals_the_definition():
    """The processor updates match lengths step by step; here each penalty is recomputed from the
    definition (the longest stretch before the candidate equal to the answer's end)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        answer = rng.integers(0, 4, 30).tolist()  # 4 tokens: many repeats, runs and overlaps
        processor = dry_penalty(0.5, base=1.5, allowed_length=2, max_match=6)
        for t in range(len(answer) + 1):
            out = np.array(processor(mx.array([9] + answer[:t]), mx.zeros((1, 10))))[0]
            expected = np.zeros(10)
            for j in range(1, t):
                match = 0
                while match < min(j, 6) and answer[j - 1 - match] == answer[t - 1 - match]:
                    match += 1
                if match >= 2:
                    expected[answer[j]] = max(expected[answer[j]], 0.5 * 1.5 ** (match - 2))
            np.testing.assert_allclose(out, -expected, rtol=1e-6)


def test_dry_settings_key_the_rewrites_only_while_it_is_on():
    off = get_config("smoke", dry_multiplier=0.0, dry_base=3.0, dry_allowed_length=5)
    assert decoding_settings(off) == decoding_settings(get_config("smoke", dry_multiplier=0.0))
    on = get_config("smoke", dry_multiplier=0.8)
    assert decoding_settings(on) != decoding_settings(dataclasses.replace(on, dry_base=3.0))


def test_content_word_penalty_costs_each_reused_content_word_once():
    starts = mx.array([i in (4, 5, 6) for i in range(8)])  # 4, 5, 6 start content words
    prompt = [4, 5, 9]  # the draft's words are free: only the answer counts; 10 logits
    outs = [dry_after(content_word_penalty(1.5, starts), prompt, answer)
            for answer in ([], [4, 1], [4, 1, 4, 5, 2])]
    assert (outs[0] == 0).all()
    assert outs[1][4] == -1.5 and (np.delete(outs[1], 4) == 0).all()  # 1 is no content word
    assert outs[2][4] == outs[2][5] == -1.5  # used twice, penalised once
    assert (np.delete(outs[2], [4, 5]) == 0).all()


@pytest.mark.slow
def test_content_word_tokens_start_words_that_are_not_function_words(tokenizer):
    flags = np.array(content_word_tokens(tokenizer))
    assert flags[tokenizer.encode(" court", add_special_tokens=False)[0]]
    for text in (" the", " which", " 1931", "court", " a", ",", " Court", " Frederick"):
        assert not flags[tokenizer.encode(text, add_special_tokens=False)[0]], text


def test_restatement_penalty_charges_a_clause_that_reuses_earlier_words():
    starts = mx.array([i in (4, 5, 6, 7) for i in range(9)])  # 4..7 start content words
    ends = mx.array([i == 8 for i in range(9)])  # 8 is ","; the model has 10 logits
    penalty = lambda answer: dry_after(restatement_penalty(1.0, 2, starts, ends), [9], answer)
    # clause 1 uses 4 5 6; clause 2 has reused 4 and 5: the allowed two, so 6 now costs 1.0
    out = penalty([4, 5, 6, 8, 4, 1, 5])
    assert out[4] == out[5] == out[6] == -1.0 and (np.delete(out, [4, 5, 6]) == 0).all()
    assert (penalty([4, 5, 6, 8, 4, 1]) == 0).all()  # one reused word: free
    assert penalty([4, 5, 6, 8, 4, 5, 6])[4] == -2.0  # three: 1.0 * 2 ** (3 - 2)
    assert (penalty([4, 5, 4, 5, 6]) == 0).all()  # reuse within one clause is DRY's business
    assert (penalty([4, 5, 6, 8, 4, 5, 8, 1]) == 0).all()  # a new clause starts the count again


def test_restatement_penalty_kept_from_step_to_step_equals_the_definition():
    rng = np.random.default_rng(1)
    starts, ends = np.arange(10) < 5, np.arange(10) == 9  # 0..4 words, 9 ends clauses
    for _ in range(10):
        answer = rng.integers(0, 10, 40).tolist()
        processor = restatement_penalty(0.5, 1, mx.array(starts), mx.array(ends), growth=3.0)
        for t in range(len(answer) + 1):
            out = np.array(processor(mx.array([9] + answer[:t]), mx.zeros((1, 10))))[0]
            cut = max([k + 1 for k in range(t) if ends[answer[k]]], default=0)
            earlier = {a for a in answer[:cut] if starts[a]}
            reused = sum(1 for a in answer[cut:t] if starts[a] and a in earlier)
            expected = np.zeros(10)
            if reused >= 1:
                expected[sorted(earlier)] = 0.5 * 3.0 ** (reused - 1)
            np.testing.assert_allclose(out, -expected, rtol=1e-5)


@pytest.mark.slow
def test_clause_end_tokens_end_at_punctuation_and_line_breaks(tokenizer):
    flags = np.array(clause_end_tokens(tokenizer))
    for text in (",", ".", ";", "\n"):
        assert flags[tokenizer.encode(text, add_special_tokens=False)[-1]], text
    for text in (" court", " the", "-"):
        assert not flags[tokenizer.encode(text, add_special_tokens=False)[0]], text


def test_content_word_penalty_keys_the_rewrites_only_while_it_is_on():
    off = get_config("smoke", content_word_penalty=0.0)
    assert decoding_settings(off) == decoding_settings(get_config("smoke"))
    assert decoding_settings(get_config("smoke", content_word_penalty=1.0)) != \
        decoding_settings(off)


def test_eos_ramp_adds_its_slope_to_eos_for_each_token_past_its_start():
    ramp = eos_ramp([3, 7], start=2, per_token=0.5)
    bonus = [np.array(ramp(mx.array([9] * (5 + k)), mx.zeros((1, 10))))[0] for k in range(5)]
    assert (bonus[0] == 0).all() and (bonus[1] == 0).all()  # tokens 1 and 2: before the start
    for k, expected in ((2, 0.5), (3, 1.0), (4, 1.5)):  # token 3 gains one slope, 4 two, ...
        assert bonus[k][3] == bonus[k][7] == expected
        assert (np.delete(bonus[k], [3, 7]) == 0).all()


def test_eos_ramp_ends_only_after_a_sentence_end():
    full_stop = mx.array([i == 5 for i in range(8)])  # token 5 is "."; the model has 10 logits
    ramp = eos_ramp([3], start=1, per_token=1.0, sentence_end=full_stop)
    answer = [2, 5, 2, 9]  # "x . x y": only the step after "." may end
    bonus = [np.array(ramp(mx.array([9] + answer[:k]), mx.zeros((1, 10))))[0][3]
             for k in range(len(answer) + 1)]
    assert bonus == [0.0, 0.0, 2.0, 0.0, 0.0]  # answer token 3 follows ".": two past the start


def test_eos_ramp_settings_key_the_rewrites_only_while_it_is_on():
    off = get_config("smoke", eos_ramp=0.0, eos_ramp_from=2.0)
    assert decoding_settings(off) == decoding_settings(get_config("smoke", eos_ramp=0.0))
    on = get_config("smoke", eos_ramp=0.5)
    assert decoding_settings(on) != decoding_settings(dataclasses.replace(on, eos_ramp_from=2.0))


@pytest.mark.slow
def test_eos_ramp_ends_answers_soon_after_the_draft_length(tokenizer, monkeypatch):
    model, _ = make_tiny_model()
    drafts = ["The mill closed in 1931 and the town shrank, and then the school closed too.",
              "Rain fell for nine days."]
    cfg = get_config("smoke", gen_max_tokens=48, temperature=0.0, max_len_ratio=3.0)
    reasons = []
    free = generate_tokens(model, tokenizer, drafts, cfg, progress=False, finish_reasons=reasons)
    assert reasons == ["length", "length"]  # this random model never ends on its own
    assert not np.array(sentence_end_tokens(tokenizer))[free[0] + free[1]].any()
    # this random model writes no full stop: let a token it writes late in answer 0 end sentences
    ends = np.zeros(len(np.array(sentence_end_tokens(tokenizer))), dtype=bool)
    ends[free[0][-3]] = True
    monkeypatch.setattr(decode, "sentence_end_tokens", lambda _: mx.array(ends))
    ramped_cfg = dataclasses.replace(cfg, eos_ramp=100.0, eos_ramp_from=0.2)
    ramped = generate_tokens(model, tokenizer, drafts, ramped_cfg, progress=False,
                             finish_reasons=reasons)
    # a slope above any logit gap ends each answer at its first sentence end past the start,
    # the same answer until then; one that never ends a sentence runs to the cap
    for draft, answer, ramped_answer, reason in zip(drafts, free, ramped, reasons):
        start = eos_ramp_start(tokenizer, draft, ramped_cfg)
        cut = next((k for k in range(max(start, 1), len(answer)) if ends[answer[k - 1]]), None)
        assert ramped_answer == answer[:cut]
        assert reason == ("length" if cut is None else "stop")
    assert "stop" in reasons  # the ramp ended at least one answer


@pytest.mark.slow
def test_digit_tokens_are_the_digits_of_the_tokenizer(tokenizer):
    flags = np.array(digit_tokens(tokenizer))
    digits = {tokenizer.decode([i]) for i in np.flatnonzero(flags)}
    assert {str(d) for d in range(10)} <= {d.strip() for d in digits}
    assert all(d.strip().isdigit() for d in digits) and flags.sum() < 100


@pytest.mark.slow
def test_no_repeat_ngram_decodes_answers_without_a_repeated_ngram(tokenizer):
    model, _ = make_tiny_model()
    drafts = ["The mill closed in 1931 and the town shrank.", "Rain fell for nine days."]

    def answers(**overrides):
        cfg = get_config("smoke", gen_max_tokens=24, temperature=0.0, **overrides)
        return generate_tokens(model, tokenizer, drafts, cfg, progress=False)

    def repeats(tokens, n):
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        return len(grams) - len(set(grams))

    assert all(repeats(a, 2) for a in answers())  # this random model loops when greedy
    blocked = answers(no_repeat_ngram=2)
    cfg = get_config("smoke", gen_max_tokens=24)
    assert [len(a) for a in blocked] == [max_new_tokens(tokenizer, d, cfg) for d in drafts]
    assert not any(repeats(a, 2) for a in blocked)
    steered = answers(dry_multiplier=100.0, dry_allowed_length=2)  # penalty above any logit gap
    assert not any(repeats(a, 3) for a in steered)  # a third repeated token never follows two


def test_verify_and_resample_keeps_the_candidate_with_the_most_facts():
    from helpers.infer.rewrite import Rewrite, verify_and_resample

    drafts = ["Paris hosted 3 events in 2019.", "No facts here at all.", "Rome had 7 hills."]
    first = [Rewrite("Paris hosted events.", 3, False), Rewrite("Nothing.", 1, False),
             Rewrite("Rome had 7 hills.", 4, False)]
    asked = []

    def sample(texts):
        asked.append(texts)
        return [Rewrite("Paris hosted 3 events.", 4, False),  # 2 of 3 facts
                Rewrite("In 2019 Paris hosted 3 events.", 6, True)]  # all 3

    chosen = verify_and_resample(drafts, first, 2, sample)
    assert asked == [[drafts[0], drafts[0]]]  # only the lossy rewrite is resampled, n times
    assert [c.text for c in chosen] == ["In 2019 Paris hosted 3 events.", "Nothing.",
                                        "Rome had 7 hills."]
    assert chosen[0].hit_cap and chosen[0].n_tokens == 6


def test_resample_loops_keeps_the_first_fluent_candidate():
    from helpers.infer.rewrite import Rewrite, resample_loops

    loop = "one two three four five six one two three four five six"
    drafts = ["a", "b", "c", "d"]
    first = [Rewrite(loop, 12, False), Rewrite("fine text", 2, False),
             Rewrite("cut short by the", 4, True), Rewrite(loop, 12, True)]
    asked = []

    def sample(texts):
        asked.append(texts)
        return [Rewrite(loop + " again", 13, False), Rewrite("fixed a", 2, False),  # draft a
                Rewrite("fixed c", 2, False), Rewrite("not this one", 3, False),  # draft c
                Rewrite(loop, 12, True), Rewrite("", 0, False)]  # draft d: none fluent

    chosen = resample_loops(drafts, first, 2, sample)
    assert asked == [["a", "a", "c", "c", "d", "d"]]  # only the stuck rewrites, n times each
    assert [c.text for c in chosen] == ["fixed a", "fine text", "fixed c", loop]
    assert chosen[3] is first[3]  # nothing fluent: the plain rewrite stays


def test_the_facts_choice_keeps_the_fluent_sample_that_keeps_most_and_invents_least():
    from helpers.infer.rewrite import Rewrite, resample_loops

    loop = "one two three four five six one two three four five six"
    drafts = ["Berlin hosted 120 delegates in 2021."]
    samples = [Rewrite("The delegates met.", 4, False),  # fluent, keeps no fact
               Rewrite(loop, 12, False),  # keeps nothing and loops: never chosen
               Rewrite("Berlin hosted 120 delegates in 2021 at the Kessler Institute.", 12, False),
               Rewrite("In 2021 Berlin hosted 120 delegates.", 8, False)]

    def pick(choice):
        return resample_loops(drafts, [Rewrite(loop, 12, True)], 4, lambda texts: samples,
                              choice)[0].text

    assert pick("first") == "The delegates met."
    assert pick("facts") == "In 2021 Berlin hosted 120 delegates."  # all facts, none invented
    with pytest.raises(ValueError, match="loop_check_choice"):
        pick("best")


def test_loop_switch_off_changes_nothing_and_on_never_adds_a_loop(tokenizer):
    from helpers.core.text_measures import has_loop
    from helpers.infer.rewrite import LOOP_CHECK_N

    model, _ = make_tiny_model()
    drafts = ["Berlin hosted 120 delegates on 4 May 2021.", "Ada Lovelace wrote in 1843."]
    plain = get_config("smoke", temperature=0.0, gen_max_tokens=24, repetition_penalty=1.0)
    switched = get_config("smoke", temperature=0.0, gen_max_tokens=24, repetition_penalty=1.0,
                          loop_check_samples=3)
    before = rewrite_detailed(model, tokenizer, drafts, plain, progress=False)
    after = rewrite_detailed(model, tokenizer, drafts, switched, progress=False)
    for b, a in zip(before, after):
        stuck = b.hit_cap or has_loop(b.text, LOOP_CHECK_N)
        assert a == b or stuck  # a fluent plain rewrite is never replaced
        assert not (has_loop(a.text, LOOP_CHECK_N) and not has_loop(b.text, LOOP_CHECK_N))


def test_the_loop_switch_settings_key_the_rewrites_only_while_it_is_on():
    from helpers.infer.rewrite import decoding_settings

    off = decoding_settings(get_config("smoke"))
    assert off == decoding_settings(get_config("smoke", loop_check_choice="first",
                                               loop_check_temperature=0.3))
    on = decoding_settings(get_config("smoke", loop_check_samples=2))
    assert on["loop_check_choice"] == "facts" and on["loop_check_samples"] == 2
    assert on != decoding_settings(get_config("smoke", loop_check_samples=2,
                                              loop_check_choice="first"))


def test_fact_switch_never_keeps_fewer_facts(tokenizer):
    from helpers.core.text_measures import fact_preservation

    model, _ = make_tiny_model()
    drafts = ["Berlin hosted 120 delegates on 4 May 2021.", "Ada Lovelace wrote in 1843."]
    plain = get_config("smoke", temperature=0.0, gen_max_tokens=8)
    resampled = get_config("smoke", temperature=0.0, gen_max_tokens=8, fact_check_samples=3,
                           fact_repair=False)
    before = rewrite(model, tokenizer, drafts, plain, progress=False)
    after = rewrite(model, tokenizer, drafts, resampled, progress=False)
    for d, b, a in zip(drafts, before, after):
        assert fact_preservation(d, a) >= fact_preservation(d, b)
    # with the sentence repair every lost fact comes back: each draft is one sentence, and this
    # random model keeps none, so the draft sentence itself is spliced in
    repaired = rewrite(model, tokenizer, drafts, dataclasses.replace(resampled,
                                                                              fact_repair=True),
                                progress=False)
    assert [fact_preservation(d, r) for d, r in zip(drafts, repaired)] == [1.0, 1.0]


def test_without_resampling_the_fact_switch_goes_straight_to_the_repair(monkeypatch):
    from helpers.core.text_measures import fact_preservation

    drafts = ["Berlin hosted 120 delegates on 4 May 2021.", "Ada Lovelace wrote in 1843."]
    decoded = []

    def fake_tokens(model, tokenizer, texts, cfg, progress, seed, desc, finish_reasons):
        decoded.append((desc, list(texts)))
        finish_reasons[:] = ["stop"] * len(texts)
        return [[] for _ in texts]  # every rewrite empty: every fact lost

    class Decoder:
        def decode(self, tokens):
            return ""

    monkeypatch.setattr("helpers.infer.rewrite.generate_tokens", fake_tokens)
    cfg = get_config("smoke", fact_check_samples=2, fact_resample=False)
    repaired = rewrite(None, Decoder(), drafts, cfg, progress=False)
    assert [desc for desc, _ in decoded] == ["rewriting", "fact repair", "fact repair"]
    assert decoded[2][1] == [drafts[0]] * 2 + [drafts[1]] * 2  # 2 samples a failing sentence
    assert [fact_preservation(d, r) for d, r in zip(drafts, repaired)] == [1.0, 1.0]


def test_given_plain_rewrites_the_fact_switch_starts_from_them(monkeypatch):
    drafts = ["Berlin hosted 120 delegates.", "Ada wrote in 1843."]
    decoded = []

    def fake_tokens(model, tokenizer, texts, cfg, progress, seed, desc, finish_reasons):
        decoded.append(desc)
        finish_reasons[:] = ["stop"] * len(texts)
        return [[] for _ in texts]

    class Decoder:
        def decode(self, tokens):
            return "Berlin hosted 120 delegates."  # every sample keeps the first draft's facts

    monkeypatch.setattr("helpers.infer.rewrite.generate_tokens", fake_tokens)
    plain = [Rewrite("Berlin hosted delegates.", 3, False),
             Rewrite("Ada wrote in 1843.", 4, False)]
    cfg = get_config("smoke", fact_check_samples=2, fact_repair=False)
    chosen = rewrite_detailed(None, Decoder(), drafts, cfg, progress=False, plain=plain)
    assert decoded == ["fact check"]  # no plain decode: only the lossy first draft is resampled
    assert [r.text for r in chosen] == ["Berlin hosted 120 delegates.", "Ada wrote in 1843."]
    assert chosen[1] is plain[1]
    with pytest.raises(ValueError, match="1 plain rewrites for 2 drafts"):
        rewrite_detailed(None, Decoder(), drafts, cfg, progress=False, plain=plain[:1])


def test_on_policy_samples_are_decoded_without_the_loop_and_length_fixes():
    from helpers.infer.rewrite import on_policy_decoding

    cfg = get_config("workshop")
    assert cfg.dry_multiplier > 0 and cfg.eos_ramp > 0 and cfg.repetition_penalty > 1
    sampled = on_policy_decoding(cfg)
    assert (sampled.dry_multiplier, sampled.eos_ramp, sampled.repetition_penalty) == (0, 0, 1.0)
    assert sampled.temperature == cfg.on_policy_temperature and sampled.seed == cfg.seed
