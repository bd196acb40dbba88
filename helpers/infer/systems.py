"""The systems the series trains, evaluates and serves, and the one loader of a trained run.

SWITCHES is the one list of system names: each is a setting of the two switches of the stacked
model (base + SFT adapter + DPO adapter, helpers/train/stacked.py), in the order the series
builds them. The command line, the server, the export, the evaluation's labels and the
notebooks take the names from here. "merged" is not a switch setting but the two adapters folded
into one LoRA (notebook 06), loaded by that name only.

`load_system` is the one loader of a trained run: notebook 00's bare base, and (switchable) the
Humanizer's model that carries every trained adapter and switches between them without reloading.

Nothing here imports MLX at module level, so the command-line tools can check names cheaply.
"""
from __future__ import annotations

from pathlib import Path

from helpers.train.adapters import ADAPTER_FILE, check_base, load_stacked, read_adapter_config
from helpers.train.base import load_base
from helpers.train.stacked import add_dpo_adapter, set_adapters, stacked_layers

# system -> (SFT term on, DPO term on)
SWITCHES = {"base": (False, False), "sft": (True, False), "dpo-only": (False, True),
            "sft+dpo": (True, True)}
SYSTEMS = tuple(SWITCHES)
MERGED = "merged"


def adapter_dir(cfg, name: str) -> Path:
    return cfg.input_path(f"adapters/{name}")


def needed_adapters(which: str) -> tuple[str, ...]:
    """The adapter folders a system needs. The DPO adapter was trained on top of the SFT adapter,
    so even dpo-only needs both (its model is the stacked one with SFT switched off)."""
    sft, dpo = SWITCHES[which]
    return ("sft", "dpo") if dpo else ("sft",) if sft else ()


def trained_systems(cfg) -> tuple[str, ...]:
    """The systems the run's adapters make available, in SWITCHES order: all of them once DPO has
    run, base and sft after SFT alone, base before any training."""
    sft, dpo = adapter_dir(cfg, "sft"), adapter_dir(cfg, "dpo")
    has = {"sft": (sft / ADAPTER_FILE).exists(), "dpo": (dpo / ADAPTER_FILE).exists()}
    if has["dpo"] and not has["sft"]:
        raise FileNotFoundError(f"{dpo} exists but {sft} does not: the DPO adapter sits on "
                                "the SFT adapter; run notebook 04 again")
    return tuple(s for s in SYSTEMS if all(has[name] for name in needed_adapters(s)))


def check_system(which: str, available: tuple[str, ...] = SYSTEMS) -> None:
    """ValueError naming the available systems unless `which` is one of them."""
    if which not in available:
        known = "', '".join(SYSTEMS)
        raise ValueError(f"unknown or untrained adapter {which!r}: this run has "
                         f"{list(available)} (adapters are '{known}')")


def load_system(cfg, which: str = "sft+dpo", switchable: bool = False):
    """(model, tokenizer): system `which` (a name of SYSTEMS, or "merged") on the run's base
    (load_base), in eval mode.

    switchable=False loads what `which` needs and nothing more: the bare base for "base",
    mlx-lm's LoRA layers for "sft" when DPO has not run (and for "merged"), else the stacked
    model switched to `which`.

    switchable=True (the Humanizer, hence the command line, the server and the export) loads
    every adapter the run has trained, each checked against the base it was trained on, as
    stacked layers (a zero DPO term when only SFT has run), so that `use_system` moves between
    trained_systems(cfg) without reloading; `which` must be one of them."""
    if switchable:
        return _load_switchable(cfg, which)
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.tuner.utils import load_adapters


    if which not in SYSTEMS + (MERGED,):
        raise ValueError(f"unknown system {which!r}; choose one of {SYSTEMS + (MERGED,)}")
    model, tokenizer = load_base(cfg)
    if which == MERGED:
        load_adapters(model, str(adapter_dir(cfg, MERGED)))
    elif which != "base" and (adapter_dir(cfg, "dpo") / "adapters.safetensors").exists():
        load_stacked(model, adapter_dir(cfg, "sft"), adapter_dir(cfg, "dpo"))
        use_system(model, which)
    elif which == "sft":
        load_adapters(model, str(adapter_dir(cfg, "sft")))
    elif which != "base":
        raise FileNotFoundError(f"{adapter_dir(cfg, 'dpo')}: no DPO adapter; run notebook 05")
    model.eval()  # adapter modules are created in training mode (dropout on)
    return model, tokenizer


def _load_switchable(cfg, which: str):
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.tuner.utils import load_adapters


    trained = trained_systems(cfg)
    check_system(which, trained)
    model, tokenizer = load_base(cfg)
    adapters = needed_adapters(trained[-1])  # every adapter the run has: the last system's
    for name in adapters:
        check_base(adapter_dir(cfg, name), cfg)
    sft, dpo = adapter_dir(cfg, "sft"), adapter_dir(cfg, "dpo")
    if adapters == ("sft", "dpo"):
        load_stacked(model, sft, dpo)
    elif adapters == ("sft",):
        load_adapters(model, str(sft))
        add_dpo_adapter(model, read_adapter_config(sft))  # a zero DPO term: only the switches
        model.eval()
    use_system(model, which)
    return model, tokenizer


def use_system(model, which: str) -> None:
    """Switch a stacked model (base + SFT + DPO) to one of the four systems."""
    if which == "base" and not stacked_layers(model):
        return
    sft, dpo = SWITCHES[which]
    set_adapters(model, sft=sft, dpo=dpo)
