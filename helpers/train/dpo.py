"""The DPO recipe (notebook 05): a second adapter stacked on the frozen SFT adapter,
trained on (chosen, rejected) pairs; the reference log-probs (base + SFT) are
computed once per pair before training.
"""
from __future__ import annotations

import mlx.core as mx

from helpers.core.cache import content_key, load_arrays, save_arrays
from helpers.train.adapters import save_dpo_adapter
from helpers.train.base import base_fingerprint
from helpers.train.batches import batch_order, dpo_answer_position, dpo_batch, dpo_dataset
from helpers.train.lora import lora_config
from helpers.train.losses import make_dpo_batch_loss, reference_logprobs
from helpers.train.stacked import set_adapters, stacked_layers
from helpers.train.trainer import RunSettings, adapter_fingerprint, ids_digest, train

DPO_REFERENCE_VERSION = 1  # bump when the reference log-probs would change: old entries are ignored


def dpo_reference(model, tokenizer, cfg, pairs: list[dict], progress: bool = True) -> dict:
    """The pairs this run will visit (dpo_steps x dpo_batch_size, in order) and their reference
    log-probs under base + SFT, computed once and cached in runs/<preset>/dpo_reference.safetensors
    (helpers.core.cache: keyed on the pairs' ids, the SFT adapter and the base)."""
    if not stacked_layers(model):
        raise ValueError("DPO needs a model with the SFT adapter and a DPO adapter on top "
                         "(lora.add_dpo_adapter)")
    dataset = dpo_dataset(pairs, tokenizer, cfg)[:cfg.dpo_steps * cfg.dpo_batch_size]
    ids, sft = [d["id"] for d in dataset], adapter_fingerprint(cfg) + base_fingerprint(cfg)
    path, key = cfg.path("dpo_reference.safetensors"), content_key(
        "dpo-reference", DPO_REFERENCE_VERSION, ids=ids_digest(ids), sft=sft)
    cached = load_arrays(path, key)
    if cached is not None:
        chosen, rejected = cached["chosen"], cached["rejected"]
    else:
        chosen, rejected = reference_logprobs(model, dataset, 2 * cfg.dpo_batch_size, progress)
        save_arrays(path, key, {"chosen": chosen, "rejected": rejected})
    return {"dataset": dataset, "chosen": chosen, "rejected": rejected, "sft": sft}


def reference_of_first(reference: dict, n_pairs: int) -> dict:
    """dpo_reference's result for the first n_pairs only. π_ref is base + SFT with the DPO term off:
    β, the learning rate and the number of steps do not enter it, so a shorter trial run on the
    same pairs reuses it instead of computing it again."""
    if n_pairs > len(reference["dataset"]):
        raise ValueError(f"the reference covers {len(reference['dataset'])} pairs, not {n_pairs}")
    return {**reference, "dataset": reference["dataset"][:n_pairs],
            "chosen": reference["chosen"][:n_pairs], "rejected": reference["rejected"][:n_pairs]}


def train_dpo(model, cfg, reference: dict, on_log=None, compile: bool = True) -> list[dict]:
    """DPO of the DPO adapter while base and SFT adapter stay frozen; saves
    runs/<preset>/adapters/dpo. `reference` comes from dpo_reference."""
    dataset, ref_chosen, ref_rejected = reference["dataset"], reference["chosen"], reference["rejected"]
    lengths = [len(d["chosen"][0]) + len(d["rejected"][0]) for d in dataset]
    config = lora_config(cfg, "dpo")
    settings = RunSettings("dpo", cfg.dpo_steps, cfg.dpo_lr, cfg.dpo_batch_size, cfg.seed,
                           {**config, "beta": cfg.dpo_beta, "sft": reference["sft"],
                            "max_seq_len": cfg.max_seq_len,
                            "pairs": ids_digest([d["id"] for d in dataset])})

    def batch_at(step):
        indices = batch_order(lengths, cfg.dpo_batch_size, step, cfg.seed)
        return (*dpo_batch(dataset, indices), mx.array(ref_chosen[indices]),
                mx.array(ref_rejected[indices]))

    set_adapters(model, sft=True, dpo=True)
    loss_fn = make_dpo_batch_loss(cfg.dpo_beta, dpo_answer_position(dataset))
    log = train(model, loss_fn, batch_at, settings, cfg.path("checkpoints/dpo"),
                cfg.path("dpo_log.csv"), config, cfg.checkpoint_every, on_log=on_log,
                compile=compile)
    save_dpo_adapter(model, cfg.path("adapters/dpo"), config)
    return log


def with_on_policy(pairs: list[dict], samples: list[str]) -> list[dict]:
    """Add (draft, human text, the SFT model's own rewrite) pairs for the first len(samples)
    prompts, alternating with the offline pairs so that any prefix of the list has both kinds."""
    on_policy = [{**p, "id": f"{p['id']}:on-policy", "rejected": s, "rejected_source": "sft model"}
                 for p, s in zip(pairs, samples) if s.strip()]
    mixed = []
    for i, p in enumerate(pairs):
        mixed.append(p)
        if i < len(on_policy):
            mixed.append(on_policy[i])
    return mixed
