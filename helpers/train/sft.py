"""The SFT recipe (notebook 04): a LoRA adapter on the quantized base, trained on
(AI draft -> human text) pairs with next-token cross-entropy on the answer only.
"""
from __future__ import annotations

from helpers.train.adapters import save_sft_adapter
from helpers.train.base import base_fingerprint
from helpers.train.batches import batch_order, first_answer_position, pad_batch, sft_dataset
from helpers.train.lora import lora_config
from helpers.train.losses import evaluate_sft, sft_loss
from helpers.train.trainer import RunSettings, ids_digest, train


def train_sft(model, tokenizer, cfg, data: dict, on_log=None, compile: bool = True) -> list[dict]:
    """SFT of the LoRA adapter already on `model` (see lora.add_lora) on data['train'], validated
    on the first cfg.val_examples rows of data['val']; saves runs/<preset>/adapters/sft."""
    train_set = sft_dataset(data["train"], tokenizer, cfg)
    val_set = sft_dataset(data["val"][:cfg.val_examples], tokenizer, cfg)
    lengths = [len(t) for t, _ in train_set]
    config = lora_config(cfg, "sft")
    settings = RunSettings("sft", cfg.sft_steps, cfg.sft_lr, cfg.batch_size, cfg.seed,
                           {**config, "base": base_fingerprint(cfg), "data": ids_digest(
                               [r["id"] for r in data["train"]]), "max_seq_len": cfg.max_seq_len})

    def batch_at(step):
        return pad_batch([train_set[i] for i in batch_order(lengths, cfg.batch_size, step, cfg.seed)])

    start = first_answer_position(train_set)  # one value per run: one compiled step per width
    log = train(model, lambda m, *batch: sft_loss(m, *batch, start), batch_at, settings,
                cfg.path("checkpoints/sft"), cfg.path("sft_log.csv"), config, cfg.checkpoint_every,
                evaluate=lambda: evaluate_sft(model, val_set, cfg.batch_size),
                val_every=cfg.val_every, on_log=on_log, compile=compile)
    save_sft_adapter(model, cfg.path("adapters/sft"), config)
    return log
