"""Training loops for the SFT and DPO adapters (notebooks 04 and 05).

- SFT: next-token cross-entropy on the answer tokens only (mlx-lm's ChatDataset finds where the
  answer starts; the batch layout is mlx-lm's: tokens + (answer offset, length) per row).
- DPO: sigmoid loss on  beta·[(log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))]
  where π is base + SFT + DPO and π_ref is base + SFT (the DPO term switched off), whose
  log-probs are computed once per pair before training.
- One loop for both: seeded (the dropout RNG is re-seeded from (seed, step), so it needs no saving),
  a checkpoint every N steps and on KeyboardInterrupt (adapter + optimizer state in safetensors,
  step and settings in JSON), resumed automatically, every step logged to CSV.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import llama
from mlx_lm.tuner.datasets import ChatDataset

from .data import chat_messages, sft_examples
from .fast_cpu import cross_entropy
from .io import atomic_write_json, atomic_write_text
from .lora import (base_fingerprint, lora_config, save_dpo_adapter, save_sft_adapter,
                   set_adapters, stacked_layers)

PAD_TO = 32  # pad batches to a multiple of this: fewer distinct shapes to compile


# ---------------------------------------------------------------- data -> token batches

def chat_tokens(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """(tokens of the whole chat, index of the first answer token), via mlx-lm's ChatDataset."""
    return ChatDataset([], tokenizer, mask_prompt=True).process({"messages": messages})


def truncate(item: tuple[list[int], int], max_seq_len: int) -> tuple[list[int], int] | None:
    """Cut to max_seq_len tokens; None when no answer token would be left."""
    tokens, offset = item
    tokens = tokens[:max_seq_len]
    return (tokens, offset) if offset < len(tokens) else None


def sft_dataset(rows: list[dict], tokenizer, cfg) -> list[tuple[list[int], int]]:
    items = [truncate(chat_tokens(tokenizer, ex["messages"]), cfg.max_seq_len)
             for ex in sft_examples(rows, cfg.system_prompt)]
    kept = [it for it in items if it is not None]
    if len(kept) < len(items):
        print(f"dropped {len(items) - len(kept)} examples whose prompt fills max_seq_len")
    return kept


def dpo_dataset(pairs: list[dict], tokenizer, cfg) -> list[dict]:
    """Each pair as chosen and rejected chats that share the prompt."""
    out = []
    for p in pairs:
        chosen = truncate(chat_tokens(tokenizer, chat_messages(p["prompt"], cfg.system_prompt,
                                                               p["chosen"])), cfg.max_seq_len)
        rejected = truncate(chat_tokens(tokenizer, chat_messages(p["prompt"], cfg.system_prompt,
                                                                 p["rejected"])), cfg.max_seq_len)
        if chosen and rejected:
            out.append({"id": p["id"], "chosen": chosen, "rejected": rejected})
    if len(out) < len(pairs):
        print(f"dropped {len(pairs) - len(out)} pairs whose prompt fills max_seq_len")
    return out


def pad_batch(items: list[tuple[list[int], int]]) -> tuple[mx.array, mx.array]:
    """(tokens [B, T] zero-padded, lengths [B, 2] = (answer offset, length)): mlx-lm's layout."""
    longest = max(len(t) for t, _ in items)
    width = 1 + PAD_TO * ((longest + PAD_TO - 1) // PAD_TO)
    batch = np.zeros((len(items), width), np.int32)
    for row, (tokens, _) in enumerate(items):
        batch[row, :len(tokens)] = tokens
    return mx.array(batch), mx.array([[offset, len(tokens)] for tokens, offset in items])


def batch_order(lengths: list[int], batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the batch for `step` (counted from 1). Items of similar length are batched
    together (less padding); the batches are shuffled per epoch from (seed, epoch), so any step's
    batch can be recomputed after a restart."""
    if len(lengths) < batch_size:
        raise ValueError(f"{len(lengths)} examples, fewer than batch_size={batch_size}")
    by_length = np.argsort(lengths, kind="stable")
    n_batches = len(lengths) // batch_size
    epoch, position = divmod(step - 1, n_batches)
    chosen = np.random.default_rng([seed, epoch]).permutation(n_batches)[position]
    return by_length[chosen * batch_size:(chosen + 1) * batch_size].tolist()


# ---------------------------------------------------------------- losses

def answer_mask(lengths: mx.array, width: int) -> mx.array:
    """[B, width] mask over next-token targets: true where the target is an answer token.
    Target j is token j + 1, so answer targets are offset <= j + 1 < length. (mlx-lm 0.32's
    default_loss uses `<= length` and so also trains on one padding token per row: mlx-lm PR 1697.)"""
    steps = mx.arange(1, width + 1)
    return mx.logical_and(steps >= lengths[:, 0:1], steps < lengths[:, 1:])


def first_answer_position(items: list[tuple[list[int], int]]) -> int:
    """The first logit position any item's answer needs: target j is token j + 1, so the earliest
    answer target is min(offset) - 1. Logits before it only score the prompt."""
    return max(0, min(offset for _, offset in items) - 1)


def answer_logits(model, inputs: mx.array, start: int = 0) -> mx.array:
    """The model's logits at positions start.. only. The prompt is half a batch's positions, and
    the vocabulary projection with its cross-entropy is the costliest per-position work, so mlx-lm's
    llama (SmolLM2) gets its hidden states cut before its head; another architecture may scale or
    soft-cap in its head, so it gets its full logits, cut after."""
    if start and type(model).__call__ is llama.Model.__call__:
        hidden = model.model(inputs)[:, start:]
        if model.args.tie_word_embeddings:
            return model.model.embed_tokens.as_linear(hidden)
        return model.lm_head(hidden)
    return model(inputs)[:, start:]


def answer_token_losses(model, batch: mx.array, lengths: mx.array, start: int = 0):
    """(cross-entropy of every next-token target from position `start` on, the mask of those
    that are answer tokens): `start` (first_answer_position) skips logits no answer token needs."""
    logits = answer_logits(model, batch[:, :-1], start)
    mask = answer_mask(lengths, batch.shape[1] - 1)[:, start:]
    return cross_entropy(logits, batch[:, 1 + start:]), mask


def answer_logprobs(model, batch: mx.array, lengths: mx.array, start: int = 0) -> mx.array:
    """Sum of log p(answer token | everything before it), one number per sequence."""
    token_losses, mask = answer_token_losses(model, batch, lengths, start)
    return (-token_losses * mask).sum(axis=1)


def sft_loss(model, batch, lengths, start: int = 0):
    """Mean cross-entropy over the answer tokens of the batch: the prompt is context only."""
    token_losses, mask = answer_token_losses(model, batch, lengths, start)
    n_tokens = mask.sum()
    loss = (token_losses * mask).astype(mx.float32).sum() / n_tokens
    return loss, {"tokens": n_tokens}


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Sigmoid DPO loss (Rafailov et al., 2023) and its diagnostics, from summed log-probs."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = mx.logaddexp(mx.zeros_like(margin), -margin).mean()  # = -log sigmoid(margin)
    return loss, {
        "reward_accuracy": (margin > 0).astype(mx.float32).mean(),
        "margin": margin.mean(),
        "chosen_reward": chosen_reward.mean(),
        "rejected_reward": rejected_reward.mean(),
        "chosen_logp": policy_chosen.mean(),
        "rejected_logp": policy_rejected.mean(),
    }


def make_dpo_batch_loss(beta: float, start: int = 0):
    def loss_fn(model, batch, lengths, ref_chosen, ref_rejected):
        logps = answer_logprobs(model, batch, lengths, start)
        half = logps.shape[0] // 2  # chosen first, then rejected
        return dpo_loss(logps[:half], logps[half:], ref_chosen, ref_rejected, beta)
    return loss_fn


def dpo_answer_position(dataset: list[dict]) -> int:
    return first_answer_position([d[side] for d in dataset for side in ("chosen", "rejected")])


def dpo_batch(dataset: list[dict], indices: list[int]) -> tuple[mx.array, mx.array]:
    items = [dataset[i]["chosen"] for i in indices] + [dataset[i]["rejected"] for i in indices]
    return pad_batch(items)


def reference_logprobs(model, dataset: list[dict], batch_size: int,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """log π_ref(chosen), log π_ref(rejected) for every pair, with the DPO term switched off."""
    from tqdm.auto import tqdm

    set_adapters(model, sft=True, dpo=False)
    model.eval()
    chosen, rejected, first = [], [], dpo_answer_position(dataset)
    try:
        for start in tqdm(range(0, len(dataset), batch_size), disable=not progress,
                          desc="reference log-probs"):
            indices = list(range(start, min(start + batch_size, len(dataset))))
            logps = answer_logprobs(model, *dpo_batch(dataset, indices), first)
            mx.eval(logps)
            chosen += logps[:len(indices)].tolist()
            rejected += logps[len(indices):].tolist()
    finally:
        set_adapters(model, sft=True, dpo=True)
    return np.array(chosen, np.float32), np.array(rejected, np.float32)


def evaluate_sft(model, dataset: list[tuple[list[int], int]], batch_size: int) -> float:
    """Mean cross-entropy per answer token over the whole dataset (dropout off)."""
    was_training = model.training
    model.eval()
    total, tokens, first = 0.0, 0, first_answer_position(dataset)
    for start in range(0, len(dataset), batch_size):
        loss, metrics = sft_loss(model, *pad_batch(dataset[start:start + batch_size]), first)
        mx.eval(loss, metrics)
        total += loss.item() * metrics["tokens"].item()
        tokens += metrics["tokens"].item()
    model.train(was_training)
    return total / max(tokens, 1)


# ---------------------------------------------------------------- the loop

@dataclass
class RunSettings:
    """What a checkpoint must match to be resumed."""
    kind: str
    steps: int
    learning_rate: float
    batch_size: int
    seed: int
    adapter: dict


def make_optimizer(learning_rate: float, steps: int) -> optim.Optimizer:
    """Adam; linear warm-up over the first 10% of steps, then cosine decay to a tenth."""
    warmup = max(1, steps // 10)
    schedule = optim.join_schedules(
        [optim.linear_schedule(learning_rate / 10, learning_rate, warmup),
         optim.cosine_decay(learning_rate, max(1, steps - warmup), learning_rate / 10)], [warmup])
    return optim.Adam(learning_rate=schedule)


def save_checkpoint(folder: Path, snapshot: dict, settings: RunSettings, adapter_config: dict):
    """adapters.safetensors + adapter_config.json (a standard mlx-lm adapter: the DPO adapter's
    dpo_a/dpo_b are stored as lora_a/lora_b), optimizer.safetensors, state.json; written to a
    temporary folder and renamed."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "adapters.safetensors"),
                        {k.replace(".dpo_", ".lora_"): v for k, v in snapshot["weights"].items()})
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), snapshot["optimizer"])
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    (tmp / "state.json").write_text(json.dumps({
        "step": snapshot["step"], "elapsed_s": snapshot["elapsed_s"],
        "settings": asdict(settings)}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(folder: Path, model, optimizer, settings: RunSettings) -> dict | None:
    """Restore adapter weights and optimizer state; None if there is no matching checkpoint."""
    state_file = folder / "state.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    if state["settings"] != json.loads(json.dumps(asdict(settings))):
        print(f"{folder}: checkpoint was made with other settings; starting from scratch")
        return None
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    weights = mx.load(str(folder / "adapters.safetensors"))
    model.load_weights([(k if k in trainable else k.replace(".lora_", ".dpo_"), v)
                        for k, v in weights.items()], strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(folder / "optimizer.safetensors")).items()))
    mx.eval(model.parameters(), optimizer.state)
    return state


def read_log(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: (v if k == "split" else float(v) if v != "" else None) for k, v in r.items()}
                for r in csv.DictReader(f)]
    for r in rows:
        r["step"] = int(r["step"])
    return [r for r in rows if r["step"] <= up_to_step]


def write_log(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(fields)] + [",".join("" if r.get(k) is None else str(r[k]) for k in fields)
                                  for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def train(model, loss_fn, batch_at, settings: RunSettings, checkpoint_dir: Path, log_path: Path,
          adapter_config: dict, checkpoint_every: int, evaluate=None, val_every: int = 0,
          on_log=None, compile: bool = True) -> list[dict]:
    """Train the model's trainable parameters for settings.steps steps, resuming from
    checkpoint_dir if it holds a checkpoint made with the same settings. Returns the log rows.

    loss_fn(model, *batch_at(step)) -> (loss, {name: scalar}); evaluate() -> validation loss."""
    optimizer = make_optimizer(settings.learning_rate, settings.steps)
    checkpoint_dir, log_path = Path(checkpoint_dir), Path(log_path)
    resumed = load_checkpoint(checkpoint_dir, model, optimizer, settings)
    start = resumed["step"] if resumed else 0
    elapsed = resumed["elapsed_s"] if resumed else 0.0
    log = read_log(log_path, start) if resumed else []
    if resumed:
        print(f"resuming from step {start} ({checkpoint_dir})")

    value_and_grad = nn.value_and_grad(model, loss_fn)

    def step_fn(*batch):
        (loss, metrics), grads = value_and_grad(model, *batch)
        optimizer.update(model, grads)
        return loss, metrics

    if compile:
        state = [model.state, optimizer.state, mx.random.state]
        step_fn = mx.compile(step_fn, inputs=state, outputs=state)

    def record(row):
        log.append(row)
        if on_log is not None:
            on_log(row, log)

    def snapshot(step):  # arrays are immutable: keeping references is a consistent copy
        return {"step": step, "elapsed_s": elapsed,
                "weights": dict(tree_flatten(model.trainable_parameters())),
                "optimizer": dict(tree_flatten(optimizer.state))}

    last = snapshot(start)
    model.train()
    try:
        if evaluate is not None and start == 0:
            record({"step": 0, "split": "val", "loss": evaluate()})
        for step in range(start + 1, settings.steps + 1):
            mx.random.seed(settings.seed * 1_000_003 + step)  # dropout masks depend on step only
            tic = time.perf_counter()
            loss, metrics = step_fn(*batch_at(step))
            mx.eval(loss, metrics, model.trainable_parameters(), optimizer.state)
            elapsed += time.perf_counter() - tic
            last = snapshot(step)
            record({"step": step, "split": "train", "loss": loss.item(),
                    "learning_rate": optimizer.learning_rate.item(), "elapsed_s": round(elapsed, 2),
                    **{k: v.item() for k, v in metrics.items()}})
            if evaluate is not None and val_every and (step % val_every == 0
                                                       or step == settings.steps):
                record({"step": step, "split": "val", "loss": evaluate()})
                model.train()
            if step % checkpoint_every == 0 or step == settings.steps:
                save_checkpoint(checkpoint_dir, last, settings, adapter_config)
                write_log(log_path, log)
    except KeyboardInterrupt:
        save_checkpoint(checkpoint_dir, last, settings, adapter_config)
        write_log(log_path, [r for r in log if r["step"] <= last["step"]])
        print(f"interrupted: saved step {last['step']} to {checkpoint_dir}; run again to resume")
        raise
    model.eval()
    if on_log is not None and log:
        on_log(log[-1], log)  # a final redraw (also when a finished run was only reloaded)
    return log


# ---------------------------------------------------------------- the two recipes

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


def dpo_reference(model, tokenizer, cfg, pairs: list[dict], progress: bool = True) -> dict:
    """The pairs this run will visit (dpo_steps x dpo_batch_size, in order) and their reference
    log-probs under base + SFT, computed once and cached in runs/<preset>/dpo_reference.json."""
    if not stacked_layers(model):
        raise ValueError("DPO needs a model with the SFT adapter and a DPO adapter on top "
                         "(lora.add_dpo_adapter)")
    dataset = dpo_dataset(pairs, tokenizer, cfg)[:cfg.dpo_steps * cfg.dpo_batch_size]
    ids, sft = [d["id"] for d in dataset], adapter_fingerprint(cfg) + base_fingerprint(cfg)
    cache = cfg.path("dpo_reference.json")
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("ids") == ids and cached.get("sft") == sft:
        chosen, rejected = np.array(cached["chosen"]), np.array(cached["rejected"])
    else:
        chosen, rejected = reference_logprobs(model, dataset, 2 * cfg.dpo_batch_size, progress)
        atomic_write_json(cache, {"ids": ids, "sft": sft, "chosen": chosen.tolist(),
                                  "rejected": rejected.tolist()})
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


def adapter_fingerprint(cfg) -> str:
    """Hash of the SFT adapter file: reference log-probs cached for one SFT adapter are not reused
    for another."""
    path = cfg.input_path("adapters/sft") / "adapters.safetensors"
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16] if path.exists() else "none"


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


class LivePlot:
    """A loss plot that redraws in a notebook as training logs rows: pass it as on_log.
    `metrics` are log columns, one panel each; validation rows are drawn as dots."""

    def __init__(self, metrics=("loss",), every: int = 1, title: str = ""):
        from matplotlib.figure import Figure

        self.metrics, self.every, self.title = metrics, every, title
        self.figure = Figure(figsize=(4.2 * len(metrics), 3.2), layout="constrained")
        self.axes = self.figure.subplots(1, len(metrics), squeeze=False)[0]
        self.handle = None

    def __call__(self, row: dict, log: list[dict]) -> None:
        if row["split"] == "train" and row["step"] % self.every:
            return
        for ax, metric in zip(self.axes, self.metrics):
            ax.clear()
            for split, style in (("train", "-"), ("val", "o-")):
                points = [(r["step"], r[metric]) for r in log
                          if r["split"] == split and r.get(metric) is not None]
                if points:
                    ax.plot(*zip(*points), style, label=split, markersize=4)
            ax.set_xlabel("step")
            ax.set_title(metric)
            ax.legend(loc="best")
        self.figure.suptitle(self.title)
        try:
            from IPython.display import Image, display
        except ImportError:
            return
        png = io.BytesIO()
        self.figure.savefig(png, format="png", dpi=90)
        if self.handle is None:
            self.handle = display(Image(png.getvalue()), display_id=True)
        else:
            self.handle.update(Image(png.getvalue()))

    def save(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.figure.savefig(path, dpi=120)
