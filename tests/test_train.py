"""Training: answer-only loss, DPO loss, reference log-probs, batches, checkpoints and resume."""
from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from helpers.core.config import get_config
from helpers.train.batches import (
    batch_order,
    chat_tokens,
    dpo_batch,
    first_answer_position,
    pad_batch,
)
from helpers.train.dpo import reference_of_first, with_on_policy
from helpers.train.lora import add_lora, lora_config, lora_layers
from helpers.train.losses import (
    answer_logits,
    answer_logprobs,
    dpo_loss,
    evaluate_sft,
    make_dpo_batch_loss,
    reference_logprobs,
    sft_loss,
)
from helpers.train.stacked import add_dpo_adapter, set_adapters, stacked_layers
from helpers.train.trainer import RunSettings, load_checkpoint, make_optimizer, train

from conftest import make_tiny_model


@pytest.fixture
def cfg():
    return get_config("smoke", lora_layers=-1, lora_rank=4, lora_dropout=0.1)


def synthetic_items(n=8, seed=0):
    """(tokens, answer offset) pairs of varied length, like sft_dataset returns."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        length = int(rng.integers(8, 20))
        items.append((rng.integers(3, 5000, size=length).tolist(), int(rng.integers(2, length - 2))))
    return items


def test_loss_counts_answer_tokens_only():
    model, _ = make_tiny_model()
    items = [([10, 11, 12, 13, 14, 15, 16], 4), ([20, 21, 22, 23, 24], 2)]
    batch, lengths = pad_batch(items)
    loss, metrics = sft_loss(model, batch, lengths)
    # by hand: -log p(token t | tokens < t) for every answer token t (t >= offset), averaged
    terms = []
    for tokens, offset in items:
        logprobs = nn.log_softmax(model(mx.array([tokens[:-1]]))[0], axis=-1)
        terms += [-logprobs[t - 1, tokens[t]].item() for t in range(offset, len(tokens))]
    assert metrics["tokens"].item() == len(terms) == 3 + 3
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # the same tokens with a different prompt/answer split give a different loss
    other, _ = sft_loss(model, batch, mx.array([[1, 7], [1, 5]]))
    assert abs(other.item() - loss.item()) > 1e-4


def test_answer_logprobs_sum_the_answer_tokens():
    model, _ = make_tiny_model()
    items = [([10, 11, 12, 13, 14, 15, 16], 4)]
    logps = answer_logprobs(model, *pad_batch(items))
    logprobs = nn.log_softmax(model(mx.array([items[0][0][:-1]]))[0], axis=-1)
    by_hand = sum(logprobs[t - 1, items[0][0][t]].item() for t in range(4, 7))
    assert logps.item() == pytest.approx(by_hand, rel=1e-5)


def test_logits_from_the_first_answer_position_give_the_same_losses():
    from mlx_lm.models import llama

    class ScaledHead(llama.Model):  # another head: answer_logits must cut its full logits
        def __call__(self, inputs, cache=None, input_embeddings=None):
            return 0.5 * super().__call__(inputs, cache, input_embeddings)

    model, config = make_tiny_model()
    items = [([10, 11, 12, 13, 14, 15, 16], 4), ([20, 21, 22, 23, 24], 3)]
    start = first_answer_position(items)
    assert start == 2
    batch, lengths = pad_batch(items)
    for m in (model, ScaledHead(llama.ModelArgs.from_dict(config))):
        m.update(model.parameters())
        assert answer_logits(m, batch[:, :-1], start).shape[1] == batch.shape[1] - 1 - start
        np.testing.assert_allclose(answer_logprobs(m, batch, lengths, start),
                                   answer_logprobs(m, batch, lengths), rtol=1e-6)
        assert sft_loss(m, batch, lengths, start)[0].item() == pytest.approx(
            sft_loss(m, batch, lengths)[0].item(), rel=1e-6)
    scaled = answer_logits(m, batch[:, :-1], start)  # the subclass keeps its own head
    np.testing.assert_allclose(scaled, 0.5 * model(batch[:, :-1])[:, start:], rtol=1e-6)


def test_llama_projects_only_the_answer_positions_onto_the_vocabulary(monkeypatch):
    widths, as_linear = [], nn.Embedding.as_linear
    monkeypatch.setattr(nn.Embedding, "as_linear",
                        lambda self, x: widths.append(x.shape[1]) or as_linear(self, x))
    model, _ = make_tiny_model(tie_word_embeddings=True)
    batch, lengths = pad_batch([([10, 11, 12, 13, 14, 15, 16], 4)])
    answer_logprobs(model, batch, lengths, 3)
    assert widths == [batch.shape[1] - 1 - 3]


@pytest.mark.slow
def test_chat_offset_marks_the_answer(tokenizer):
    from helpers.core.prompt import chat_messages

    tokens, offset = chat_tokens(tokenizer, chat_messages("A draft.", "Be plain.", "Human text."))
    assert tokenizer.decode(tokens[offset:]).startswith("Human text.")
    assert "Human text." not in tokenizer.decode(tokens[:offset])


def test_dpo_loss_by_hand():
    beta = 0.1
    pc, pr = mx.array([-10.0, -20.0]), mx.array([-12.0, -18.0])
    rc, rr = mx.array([-11.0, -20.0]), mx.array([-11.0, -19.0])
    loss, m = dpo_loss(pc, pr, rc, rr, beta)
    # pair 1: margin = 0.1*(-10+11) - 0.1*(-12+11) = 0.2 ; pair 2: 0.1*0 - 0.1*(1) = -0.1
    expected = (math.log1p(math.exp(-0.2)) + math.log1p(math.exp(0.1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["reward_accuracy"].item() == 0.5
    assert m["margin"].item() == pytest.approx(0.05, rel=1e-5)
    assert m["chosen_reward"].item() == pytest.approx(0.05, rel=1e-5)
    assert m["rejected_reward"].item() == pytest.approx(0.0, abs=1e-7)
    assert m["chosen_logp"].item() == -15.0 and m["rejected_logp"].item() == -15.0


def test_dpo_loss_is_log2_when_policy_equals_reference():
    x = mx.array([-5.0, -7.0])
    loss, m = dpo_loss(x, x, x, x, beta=0.5)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_reference_logprobs_are_the_sft_model(cfg):
    model, _ = make_tiny_model()
    add_lora(model, lora_config(cfg), seed=0)
    for _, layer in lora_layers(model):
        layer.lora_b = 0.05 * mx.random.normal(layer.lora_b.shape)
    model.eval()
    items = synthetic_items(6)
    dataset = [{"id": str(i), "chosen": items[i], "rejected": items[i + 3]} for i in range(3)]
    sft_only = answer_logprobs(model, *dpo_batch(dataset, [0, 1, 2]))
    add_dpo_adapter(model, lora_config(cfg, "dpo"))
    for _, layer in stacked_layers(model):
        layer.dpo_b = 0.05 * mx.random.normal(layer.dpo_b.shape)
    chosen, rejected = reference_logprobs(model, dataset, batch_size=2, progress=False)
    np.testing.assert_allclose(np.concatenate([chosen, rejected]), np.array(sft_only), rtol=1e-5)
    policy = answer_logprobs(model, *dpo_batch(dataset, [0, 1, 2]))
    assert np.abs(np.array(policy) - np.array(sft_only)).max() > 1e-3  # DPO term back on


def test_reference_logprobs_keep_every_answer_token_whatever_the_batch(cfg):
    model, _ = make_tiny_model()
    add_lora(model, lora_config(cfg), seed=0)
    add_dpo_adapter(model, lora_config(cfg, "dpo"))
    model.eval()
    item = ([10, 11, 12, 13, 14, 15, 16], 2)  # answer from token 2: later batches start past it
    dataset = [{"id": str(i), "chosen": item, "rejected": item} for i in range(5)]
    chosen, _ = reference_logprobs(model, dataset, batch_size=1, progress=False)
    set_adapters(model, sft=True, dpo=False)
    whole = answer_logprobs(model, *pad_batch([item])).item()
    np.testing.assert_allclose(chosen, [whole] * 5, rtol=1e-5)


def test_batch_order_is_a_stable_per_epoch_permutation():
    lengths = [5, 1, 4, 2, 3, 6, 8, 7]
    epoch = [batch_order(lengths, 2, step, seed=0) for step in range(1, 5)]
    assert sorted(i for b in epoch for i in b) == list(range(8))
    assert all(abs(lengths[a] - lengths[b]) == 1 for a, b in epoch)  # similar lengths together
    assert epoch == [batch_order(lengths, 2, step, seed=0) for step in range(1, 5)]
    assert epoch != [batch_order(lengths, 2, step, seed=0) for step in range(5, 9)]


def run_training(cfg, folder, steps=4, stop_at=None, compile=True):
    model, _ = make_tiny_model()
    config = lora_config(cfg)
    add_lora(model, config, seed=cfg.seed)
    items = synthetic_items(8)
    lengths = [len(t) for t, _ in items]
    settings = RunSettings("sft", steps, 1e-2, 2, cfg.seed, config)

    def batch_at(step):
        return pad_batch([items[i] for i in batch_order(lengths, 2, step, cfg.seed)])

    def stop(row, log):
        if row["split"] == "train" and row["step"] == stop_at:
            raise KeyboardInterrupt

    log = train(model, sft_loss, batch_at, settings, folder / "ckpt",
                      folder / "log.csv", config, checkpoint_every=100,
                      evaluate=lambda: evaluate_sft(model, items[:2], 2), val_every=2,
                      on_log=stop, compile=compile)
    return model, log


def train_losses(log):
    return [r["loss"] for r in log if r["split"] == "train"]


@pytest.mark.parametrize("compile", [True, False])
def test_resume_continues_the_same_loss_curve(cfg, tmp_path, compile):
    _, straight = run_training(cfg, tmp_path / "straight", compile=compile)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "resumed", stop_at=2, compile=compile)
    model, resumed = run_training(cfg, tmp_path / "resumed", compile=compile)
    assert [r["step"] for r in resumed if r["split"] == "train"] == [1, 2, 3, 4]
    np.testing.assert_allclose(train_losses(resumed), train_losses(straight), rtol=1e-6)
    val = [r["loss"] for r in straight if r["split"] == "val"]
    assert len(val) == 3 and val[-1] < val[0]  # steps 0, 2, 4: it learns
    assert [r for r in resumed if r["split"] == "val"][-1]["loss"] == pytest.approx(val[-1], rel=1e-6)
    assert (tmp_path / "resumed" / "log.csv").read_text().count("\n") == len(resumed) + 1
    # the finished checkpoint is a loadable mlx-lm adapter
    fresh, _ = make_tiny_model()
    from mlx_lm.tuner.utils import load_adapters
    load_adapters(fresh, str(tmp_path / "resumed" / "ckpt"))
    tokens = mx.array([[3, 4, 5, 6]])
    fresh.eval(), model.eval()
    assert mx.abs(fresh(tokens) - model(tokens)).max().item() <= 1e-6


def test_dropout_makes_steps_differ_but_reproducibly(cfg, tmp_path):
    _, a = run_training(cfg, tmp_path / "a", steps=2)
    _, b = run_training(cfg, tmp_path / "b", steps=2)
    assert train_losses(a) == train_losses(b)
    no_dropout = get_config("smoke", lora_layers=-1, lora_rank=4, lora_dropout=0.0)
    _, c = run_training(no_dropout, tmp_path / "c", steps=2)
    assert train_losses(a) != train_losses(c)


def tiny_dpo_setup(cfg, seed):
    """A tiny model with SFT + DPO adapters, 4 synthetic pairs and their reference log-probs."""
    model, _ = make_tiny_model()
    add_lora(model, lora_config(cfg), seed=0)
    add_dpo_adapter(model, lora_config(cfg, "dpo"))
    items = synthetic_items(8, seed=seed)
    dataset = [{"id": str(i), "chosen": items[i], "rejected": items[i + 4]} for i in range(4)]
    ref_c, ref_r = reference_logprobs(model, dataset, 4, progress=False)
    return model, dataset, ref_c, ref_r, lora_config(cfg, "dpo")


def test_dpo_training_raises_reward_accuracy(cfg, tmp_path):
    model, dataset, ref_c, ref_r, config = tiny_dpo_setup(cfg, seed=1)
    settings = RunSettings("dpo", 12, 1e-2, 4, 0, config)

    def batch_at(step):
        idx = [0, 1, 2, 3]
        return (*dpo_batch(dataset, idx), mx.array(ref_c[idx]), mx.array(ref_r[idx]))

    log = train(model, make_dpo_batch_loss(0.1), batch_at, settings,
                      tmp_path / "ckpt", tmp_path / "log.csv", config, checkpoint_every=100)
    assert log[0]["loss"] == pytest.approx(math.log(2), rel=1e-4)  # starts at the reference
    assert log[-1]["reward_accuracy"] == 1.0 and log[-1]["margin"] > 0
    assert log[-1]["loss"] < log[0]["loss"]


def test_on_policy_pairs_alternate_with_offline_pairs():
    pairs = [{"id": str(i), "prompt": f"d{i}", "chosen": f"h{i}", "rejected": f"r{i}",
              "rejected_source": "GPT-4o"} for i in range(4)]
    mixed = with_on_policy(pairs, ["s0", "", "s2"])  # an empty sample is skipped
    assert [p["id"] for p in mixed] == ["0", "0:on-policy", "1", "2:on-policy", "2", "3"]
    on = [p for p in mixed if p["rejected_source"] == "sft model"]
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in on] == [("d0", "h0", "s0"),
                                                                         ("d2", "h2", "s2")]


def test_dpo_checkpoint_is_a_standard_adapter_and_resumes(cfg, tmp_path):
    from mlx_lm.tuner.utils import load_adapters

    def dpo_run(stop_at=None):
        model, dataset, ref_c, ref_r, config = tiny_dpo_setup(cfg, seed=2)
        lengths = [len(d["chosen"][0]) for d in dataset]

        def batch_at(step):
            idx = batch_order(lengths, 2, step, 0)
            return (*dpo_batch(dataset, idx), mx.array(ref_c[idx]), mx.array(ref_r[idx]))

        def stop(row, log):
            if row["step"] == stop_at:
                raise KeyboardInterrupt

        log = train(model, make_dpo_batch_loss(0.1), batch_at,
                          RunSettings("dpo", 4, 1e-2, 2, 0, config), tmp_path / "ckpt",
                          tmp_path / "log.csv", config, checkpoint_every=2, on_log=stop)
        return model, log

    with pytest.raises(KeyboardInterrupt):
        dpo_run(stop_at=3)
    model, resumed = dpo_run()
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    dpo_only, _ = make_tiny_model()
    load_adapters(dpo_only, str(tmp_path / "ckpt"))  # mlx-lm reads the DPO checkpoint as is
    dpo_only.eval()  # new LoRA modules start in training mode (dropout on), as in mlx_lm.load
    set_adapters(model, sft=False, dpo=True)
    tokens = mx.array([[3, 4, 5, 6, 7]])
    assert mx.abs(dpo_only(tokens) - model(tokens)).max().item() <= 1e-5


def test_checkpoint_of_other_settings_is_not_resumed(cfg, tmp_path):
    model, _ = run_training(cfg, tmp_path, steps=2)
    config = lora_config(cfg)
    same = RunSettings("sft", 2, 1e-2, 2, cfg.seed, config)
    other_base = RunSettings("sft", 2, 1e-2, 2, cfg.seed, {**config, "base": "another"})
    optimizer = make_optimizer(1e-2, 2)
    assert load_checkpoint(tmp_path / "ckpt", model, optimizer, same)["step"] == 2
    assert load_checkpoint(tmp_path / "ckpt", model, optimizer, other_base) is None


def test_a_shorter_run_reuses_the_reference_of_its_first_pairs(cfg):
    model, dataset, ref_c, ref_r, _ = tiny_dpo_setup(cfg, seed=3)
    reference = {"dataset": dataset, "chosen": ref_c, "rejected": ref_r, "sft": "fp"}
    first = reference_of_first(reference, 2)
    alone_c, alone_r = reference_logprobs(model, dataset[:2], 4, progress=False)
    assert [d["id"] for d in first["dataset"]] == ["0", "1"] and first["sft"] == "fp"
    assert np.allclose(first["chosen"], alone_c, atol=1e-4)
    assert np.allclose(first["rejected"], alone_r, atol=1e-4)
    with pytest.raises(ValueError, match="covers 4 pairs, not 5"):
        reference_of_first(reference, 5)
