"""One training loop for both adapters: seeded (the dropout RNG is re-seeded from (seed, step), so
it needs no saving), a checkpoint every N steps and on KeyboardInterrupt (adapter + optimizer state
in safetensors, step and settings in JSON), resumed automatically, every step logged to CSV.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from helpers.core.cache import bytes_digest, content_key, file_digest, load_json, save_json
from helpers.core.io import atomic_write_text

CHECKPOINT_VERSION = 1  # bump when a checkpoint of the same settings could no longer be resumed


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
    save_json(tmp / "state.json", checkpoint_key(settings), {
        "step": snapshot["step"], "elapsed_s": snapshot["elapsed_s"], "settings": asdict(settings)})
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def checkpoint_key(settings: RunSettings) -> str:
    """A checkpoint resumes only a run of the same settings (helpers.core.cache's content key)."""
    return content_key("checkpoint", CHECKPOINT_VERSION, settings=asdict(settings))


def load_checkpoint(folder: Path, model, optimizer, settings: RunSettings) -> dict | None:
    """Restore adapter weights and optimizer state; None if there is no matching checkpoint (none,
    made with other settings or by an older version, or a state file that cannot be read)."""
    state = load_json(folder / "state.json", checkpoint_key(settings))
    if state is None:
        if (folder / "state.json").exists():
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


def adapter_fingerprint(cfg) -> str:
    """Digest of the SFT adapter file ("none" without one): a cache key part, so that results
    cached for one SFT adapter are not reused for another."""
    return file_digest(cfg.input_path("adapters/sft") / "adapters.safetensors")


def ids_digest(ids: list[str]) -> str:
    """Digest of a list of ids (or texts), in order: a cache key part."""
    return bytes_digest("\n".join(ids).encode())


class LivePlot:
    """A loss plot that redraws in a notebook as training logs rows: pass it as on_log.
    `metrics` are log columns, one panel each; validation rows are drawn as dots."""

    def __init__(self, metrics=("loss",), every: int = 1, title: str = ""):
        # deferred: matplotlib is slow to import, and only this path needs it
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
            # deferred: IPython (present only in a notebook) may be missing, and only this path needs it
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
