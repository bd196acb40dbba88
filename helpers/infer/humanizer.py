"""The trained humanizer as one object: load a run, pick an adapter, rewrite or stream.

    from helpers.infer.humanizer import Humanizer
    h = Humanizer.load("runs/workshop")            # or Humanizer.load(get_config("workshop"))
    h.use("sft").rewrite(["A draft to rewrite."])  # any system the run has trained (h.adapters)
    for piece in h.stream("A draft to rewrite."):
        print(piece, end="")

One model carries both adapters (helpers/train/stacked.py's stacked layers; the one loader and the
list of systems are helpers/infer/systems.py's), so switching adapter flips two switches and
reloads nothing. Prompts, decoding and cleaning are those of notebooks 06-07:
the training system prompt unless a call brings its own, cfg's decoding, `clean_output`. The
command line (helpers.tools.rewrite_files), the server (helpers.tools.serve) and the export use this object.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

from helpers.core.config import PRESETS, Config, get_config
from helpers.infer.clean import clean_output
from helpers.infer.decode import decode_steps, eos_ramp_start, max_new_tokens, prompt_tokens
from helpers.infer.rewrite import Rewrite, rewrite_detailed, rewrite_eval_set
from helpers.infer.systems import check_system, load_system, trained_systems, use_system


def config_of_run(run_dir: str | Path) -> Config:
    """The config a run was made with: its saved config.json, else the preset (and experiment)
    named by the folder, runs/<preset>[/<experiment>]."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.json"
    if saved.exists():
        values = json.loads(saved.read_text(encoding="utf-8"))
        known = {f.name: f for f in dataclasses.fields(Config)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        preset = values.pop("preset", run_dir.name)
        values.pop("experiment", None)
        experiment = "" if run_dir.name == preset else run_dir.name
        return get_config(preset, experiment=experiment, **values)
    if run_dir.name in PRESETS:
        return get_config(run_dir.name, experiment="")
    if run_dir.parent.name in PRESETS:
        return get_config(run_dir.parent.name, experiment=run_dir.name)
    raise FileNotFoundError(f"{run_dir}: not a run folder (runs/<preset>[/<experiment>]) and no "
                            "config.json in it")


class Humanizer:
    def __init__(self, cfg: Config, model, tokenizer, adapters: tuple[str, ...]):
        self.cfg, self.model, self.tokenizer, self.adapters = cfg, model, tokenizer, adapters
        self.adapter = "base"

    @classmethod
    def load(cls, cfg_or_run_dir, adapter: str | None = None) -> "Humanizer":
        """The run's base with every adapter it has trained (systems.load_system, switchable),
        switched to `adapter` (default: the most trained one, sft+dpo when DPO has run); an
        adapter the run lacks is an error, raised before anything is loaded."""
        cfg = cfg_or_run_dir if isinstance(cfg_or_run_dir, Config) else config_of_run(cfg_or_run_dir)
        adapters = trained_systems(cfg)
        model, tokenizer = load_system(cfg, adapter or adapters[-1], switchable=True)
        return cls(cfg, model, tokenizer, adapters).use(adapter or adapters[-1])

    def use(self, adapter: str) -> "Humanizer":
        check_system(adapter, self.adapters)
        use_system(self.model, adapter)
        self.adapter = adapter
        return self

    @property
    def system_prompt(self) -> str:
        return self.cfg.system_prompt

    @property
    def max_input_tokens(self) -> int:
        """The longest draft (in tokens) one rewrite should get: its answer may use up to
        max_len_ratio times that, within the gen_max_tokens cap."""
        return int(self.cfg.gen_max_tokens / self.cfg.max_len_ratio)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _decoding(self, **settings) -> Config:
        known = {k: v for k, v in settings.items() if v is not None}
        return dataclasses.replace(self.cfg, **known) if known else self.cfg

    def rewrite_detailed(self, texts: list[str], adapter: str | None = None,
                         system_prompt: str | None = None, progress: bool = False,
                         plain: list[Rewrite] | None = None, **decoding) -> list[Rewrite]:
        """Rewrite every text (decoded together), in input order: generate.rewrite_detailed, the
        series' own rewrite. `decoding` may override cfg's temperature, top_p,
        repetition_penalty, gen_max_tokens, seed or fact_check_samples for this call; `plain`
        (this call's rewrites with the fact switch off) saves decoding them again."""
        if adapter:
            self.use(adapter)
        cfg = self._decoding(system_prompt=system_prompt, **decoding)
        return rewrite_detailed(self.model, self.tokenizer, texts, cfg, progress=progress,
                                plain=plain)

    def rewrite(self, texts: list[str], adapter: str | None = None,
                system_prompt: str | None = None, **decoding) -> list[str]:
        return [r.text for r in self.rewrite_detailed(texts, adapter, system_prompt, **decoding)]

    def stream(self, text: str, adapter: str | None = None, system_prompt: str | None = None,
               **decoding) -> Iterator[str]:
        """The rewrite of one text, piece by piece as it is decoded. Pieces are cleaned as they
        come (a leading "Sure, here is..." never shows); joined, they are the start of what
        `rewrite` returns, which may also drop a closing remark such as "I hope this helps"."""
        if adapter:
            self.use(adapter)
        cfg = self._decoding(system_prompt=system_prompt, **decoding)
        prompt = prompt_tokens(self.tokenizer, text, cfg.system_prompt)
        tokens, shown = [], ""
        steps = decode_steps(self.model, self.tokenizer, [prompt],
                             [max_new_tokens(self.tokenizer, text, cfg)], cfg,
                             ramp_starts=[eos_ramp_start(self.tokenizer, text, cfg)])
        for _, token, _reason in steps:
            if token is not None:
                tokens.append(token)
            raw = self.tokenizer.decode(tokens)
            if "\n" not in raw.strip() and len(raw) < 160 and _reason is None:
                continue  # the first line may still turn out to be a preamble
            # cleaning may take back what was shown (quotes around the whole answer): then the
            # stream goes on with the uncleaned text
            text = next((t for t in (clean_output(raw), raw.strip()) if t.startswith(shown)), shown)
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text

    def rewrite_eval_set(self, rows: list[dict], systems=("base", "sft", "sft+dpo")) -> list[dict]:
        """Notebook 07's input, runs/<preset>/rewrites.jsonl: every eval row rewritten by each
        system (generate.rewrite_eval_set), then back to the adapter in use before."""
        current = self.adapter
        try:
            return rewrite_eval_set(self.cfg, self.model, self.tokenizer, rows, systems)
        finally:
            self.use(current)
