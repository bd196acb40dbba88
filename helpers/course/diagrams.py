"""Pictures of the course's ideas, drawn by code so they always match the code they explain.

A learner meets quantization, two stacked LoRA adapters, a preference loss and a detector threshold
in seven notebooks; one picture per idea keeps the whole in view while the numbers change. Which
notebook shows which: `pipeline_figure` opens 00 (the tour) and every notebook's "where are we";
`lora_figure` is 04 (SFT LoRA: what is trained, how many parameters); `dpo_figure` is 05 (a
preference pair, the frozen SFT adapter under a trainable DPO adapter, the loss); `switches_figure`
is 06 (the four systems and the exact merge); `threshold_figure` is 07 (a detector's scores and the
threshold at a 5% false-positive rate on human texts). Colours mean the same thing everywhere:
grey-blue = frozen, orange = trainable. Every function returns a matplotlib Figure built without
pyplot, so it works under any backend (Agg included) and shows inline when it is a cell's value.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch, Rectangle

from helpers.core.statistics import threshold_at_fpr
from helpers.infer.systems import SWITCHES

FROZEN = "#b7c7d9"      # grey-blue: weights that do not change
FROZEN_EDGE = "#3f5f80"
TRAINABLE = "#f5a55c"   # orange: weights the optimizer updates
TRAINABLE_EDGE = "#b85c00"
NEUTRAL = "#eeeeee"     # data, inference, evaluation
NEUTRAL_EDGE = "#666666"
HUMAN, AI, SYSTEM = "#3f7fbf", "#d62728", "#f28e2b"
EDGES = {FROZEN: FROZEN_EDGE, TRAINABLE: TRAINABLE_EDGE, NEUTRAL: NEUTRAL_EDGE}


# --- drawing helpers ------------------------------------------------------------------------------


class ShownFigure(Figure):
    """A Figure that a notebook shows as a PNG when it is a cell's value, under any backend.

    A pyplot-free Figure has no picture of its own for IPython: the inline backend registers one
    only once pyplot has drawn something, so a notebook that starts with a diagram (00) would
    print "<Figure size ...>". Where the inline backend is active its printer is used instead."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        return buffer.getvalue()


def _canvas(width: float, height: float):
    """A figure whose single, axis-free axes counts in inches, so boxes are placed by size."""
    fig = ShownFigure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, w, h, text, color=NEUTRAL, title=None, size=11):
    """A rounded box with lower-left corner (x, y); `title` in bold above the body text."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor=EDGES.get(color, NEUTRAL_EDGE), lw=1.5))
    if title:
        ax.text(x + w / 2, y + h - 0.12, title, ha="center", va="top", fontsize=size + 1,
                fontweight="bold")
        ax.text(x + w / 2, y + (h - 0.45) / 2, text, ha="center", va="center", fontsize=size,
                linespacing=1.3)
    else:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
                linespacing=1.3)


def _arrow(ax, start, end):
    """An arrow from point `start` to point `end`."""
    ax.annotate("", xy=end, xytext=start, arrowprops={
        "arrowstyle": "-|>", "lw": 1.8, "color": "#333333", "mutation_scale": 18})


def _colour_legend(ax, loc="lower right", extra=(), anchor=None):
    """The frozen/trainable key shared by every diagram, in one row."""
    handles = [Patch(facecolor=FROZEN, edgecolor=FROZEN_EDGE, label="frozen (not trained)"),
               Patch(facecolor=TRAINABLE, edgecolor=TRAINABLE_EDGE, label="trainable"), *extra]
    ax.legend(handles=handles, loc=loc, bbox_to_anchor=anchor, ncols=len(handles), fontsize=10,
              frameon=False)


# --- 1. the whole pipeline ------------------------------------------------------------------------

PIPELINE = [  # (notebook, title, body, colour): the order the course runs in
    ("01", "data", "pairs of\nAI draft → human text", NEUTRAL),
    ("02/03", "quantize", "mixed 4/8-bit:\nmore bits where the\nKL sensitivity is high", FROZEN),
    ("04", "SFT LoRA", "learn to turn\nthe AI draft into\nthe human text", TRAINABLE),
    ("05", "DPO LoRA", "on top of the frozen\nSFT adapter: prefer human\ntext to a model rewrite",
     TRAINABLE),
    ("06", "inference", "four switches\n(base, sft, dpo-only, sft+dpo),\nexact merge, fact switch",
     FROZEN),
    ("07", "evaluation", "AI detectors at 5% FPR,\nmeaning kept, facts kept,\nloops", NEUTRAL),
]


def pipeline_figure() -> Figure:
    """The course as six boxes in reading order: top row left to right, bottom row right to left."""
    fig, ax = _canvas(12, 5.6)
    w, h, gap = 3.2, 1.75, 0.9
    spots = [(0.4 + i * (w + gap), 3.1) for i in range(3)]
    spots += [(0.4 + i * (w + gap), 0.75) for i in (2, 1, 0)]
    for (nb, title, body, colour), (x, y) in zip(PIPELINE, spots):
        _box(ax, x, y, w, h, body, colour, title=f"{nb} · {title}")
    for i in range(len(spots) - 1):
        (x0, y0), (x1, y1) = spots[i], spots[i + 1]
        if y0 == y1:  # same row: side to side, in the row's direction
            step = 1 if x1 > x0 else -1
            start = (x0 + w / 2 + step * w / 2, y0 + h / 2)
            _arrow(ax, start, (start[0] + step * gap, y0 + h / 2))
        else:  # end of the top row: straight down
            _arrow(ax, (x0 + w / 2, y0), (x1 + w / 2, y1 + h))
    ax.text(0.4, 5.3, "From AI draft to human-sounding text: the course in six steps",
            fontsize=14, fontweight="bold", va="center")
    _colour_legend(ax, loc="lower center", anchor=(0.5, 0.0), extra=[
        Patch(facecolor=NEUTRAL, edgecolor=NEUTRAL_EDGE, label="data / measurement")])
    return fig


# --- 2. LoRA -------------------------------------------------------------------------------------


def lora_parameter_counts(d_in: int, d_out: int, rank: int) -> tuple[int, int]:
    """(parameters of W, of B and A): d_out*d_in frozen against r*(d_in+d_out) trained."""
    return d_out * d_in, rank * (d_in + d_out)


def _matrix(ax, x, y, w, h, name, shape, colour):
    """A matrix as a rectangle (lower-left x, y) with its name inside and its shape underneath."""
    ax.add_patch(Rectangle((x, y), w, h, facecolor=colour, edgecolor=EDGES[colour], lw=1.5))
    ax.text(x + w / 2, y + h / 2, name, ha="center", va="center", fontsize=15, fontweight="bold")
    ax.text(x + w / 2, y - 0.12, shape, ha="center", va="top", fontsize=10)


def lora_figure(d_in: int = 576, d_out: int = 576, rank: int = 8) -> Figure:
    """W (d_out x d_in, frozen) beside its low-rank update B (d_out x r) · A (r x d_in, trained).

    Sides are to scale except that a rank side is never drawn thinner than a readable strip.
    (mlx-lm stores the transposes: A as (d_in, r), B as (r, d_out).)"""
    unit = 2.6 / max(d_in, d_out)  # inches per row/column: the larger side of W is 2.6 in
    strip = max(rank * unit, 0.3)
    w, h = d_in * unit, d_out * unit
    x_b = 0.6 + w + 1.5
    x_a = x_b + strip + 0.5
    fig, ax = _canvas(max(10.5, x_a + w + 0.6), 5.4)
    base, middle = 1.7, 1.7 + h / 2
    _matrix(ax, 0.6, base, w, h, "W", f"{d_out} × {d_in}\nfrozen", FROZEN)
    ax.text(0.6 + w + 0.75, middle, r"$+\ \frac{\alpha}{r}\ \cdot$", fontsize=18,
            ha="center", va="center")
    _matrix(ax, x_b, base, strip, h, "B", f"{d_out} × {rank}\ntrained", TRAINABLE)
    ax.text(x_b + strip + 0.25, middle, r"$\cdot$", fontsize=22, ha="center", va="center")
    _matrix(ax, x_a, middle - strip / 2, w, strip, "A", f"{rank} × {d_in}\ntrained", TRAINABLE)
    _lora_text(ax, d_in, d_out, rank)
    return fig


def _lora_text(ax, d_in, d_out, rank):
    """Formula on top, the parameter count comparison at the bottom."""
    ax.text(0.6, 5.0, r"$y = W\,x + \frac{\alpha}{r}\, B\,A\,x$", fontsize=20, va="center")
    ax.text(4.0, 5.0, f"LoRA: W stays frozen, only B and A (rank r = {rank}) are trained",
            fontsize=12, va="center")
    full, lora = lora_parameter_counts(d_in, d_out, rank)
    ax.text(0.6, 0.75, f"W:  d_out × d_in = {d_out} × {d_in} = {full:,} parameters (frozen)",
            fontsize=12, color=FROZEN_EDGE, va="center")
    ax.text(0.6, 0.35, f"B, A:  r × (d_in + d_out) = {rank} × ({d_in} + {d_out}) = {lora:,} "
            f"parameters (trained, {lora / full:.2%} of W)",
            fontsize=12, color=TRAINABLE_EDGE, va="center")


# --- 3. DPO on top of SFT -------------------------------------------------------------------------

DPO_PAIR = [  # (role, example text)
    ("prompt  $x$ = the AI draft",
     "“In today's fast-paced world, remote work\noffers numerous benefits for employees.”"),
    ("chosen  $y_w$ = the human text",
     "“Two years at my kitchen table. I miss\nthe office coffee, not the commute.”"),
    ("rejected  $y_l$ = a model rewrite",
     "“Remote work offers many benefits, allowing\nemployees to enjoy flexibility and balance.”"),
]
DPO_LOSS = (r"$\mathcal{L} = -\log\,\sigma\,(\,\beta\,[\,(\log\pi_\theta(y_w|x)"
            r" - \log\pi_{ref}(y_w|x)) - (\log\pi_\theta(y_l|x)"
            r" - \log\pi_{ref}(y_l|x))\,]\,)$")


def dpo_figure() -> Figure:
    """Left: one preference pair. Right: the adapter stack. Bottom: the DPO loss."""
    fig, ax = _canvas(12, 6.2)
    ax.text(0.4, 5.85, "DPO: one preference pair, trained on top of the frozen SFT adapter",
            fontsize=14, fontweight="bold", va="center")
    for i, (role, example) in enumerate(DPO_PAIR):
        _box(ax, 0.4, 4.0 - i * 1.45, 5.6, 1.25, example, title=role, size=10)
    _dpo_stack(ax, x=7.0)
    _arrow(ax, (6.1, 3.1), (6.9, 3.9))
    ax.text(6.15, 3.65, "trains", fontsize=10, ha="left", va="bottom", rotation=45)
    ax.text(6.0, 0.75, DPO_LOSS, fontsize=14, ha="center", va="center")
    ax.text(6.0, 0.25, r"reference $\pi_{ref}$ = base + SFT (frozen);  policy $\pi_\theta$ = "
            r"base + SFT + DPO;  $\beta$ sets how far the policy may move from the reference",
            fontsize=10.5, ha="center", va="center")
    return fig


def _dpo_stack(ax, x):
    """Three layers bottom-up, with brackets naming which make the reference and the policy."""
    layers = [("quantized base model (4/8-bit)", "frozen", FROZEN),
              ("SFT adapter (from 04)", "frozen", FROZEN),
              ("DPO adapter", "trainable: the only weights that change", TRAINABLE)]
    w, h, y0 = 3.4, 0.9, 1.45
    for i, (name, state, colour) in enumerate(layers):
        _box(ax, x, y0 + i * (h + 0.15), w, h, f"{name}\n{state}", colour, size=10.5)
    _bracket(ax, x + w + 0.15, y0, y0 + 2 * h + 0.15, r"reference $\pi_{ref}$")
    _bracket(ax, x + w + 0.9, y0, y0 + 3 * h + 0.3, r"policy $\pi_\theta$")


def _bracket(ax, x, y_low, y_high, label):
    """A vertical bracket from y_low to y_high with a label turned along it."""
    ax.plot([x, x + 0.1, x + 0.1, x], [y_low, y_low, y_high, y_high], color="#333333", lw=1.5)
    ax.text(x + 0.2, (y_low + y_high) / 2, label, rotation=90, ha="left", va="center",
            fontsize=11)


# --- 4. four switches and the merge ---------------------------------------------------------------

_TERMS = {"sft": r" + s_{sft} B_{sft} A_{sft} x", "dpo": r" + s_{dpo} B_{dpo} A_{dpo} x"}
SYSTEMS = {  # (sft on, dpo on): (name, what the layer computes), named by the one list of systems
    (sft, dpo): (name, "$W x" + (_TERMS["sft"] if sft else "") + (_TERMS["dpo"] if dpo else "") + "$")
    for name, (sft, dpo) in SWITCHES.items()}


def switches_figure() -> Figure:
    """The 2x2 grid of systems (SFT on/off × DPO on/off) and the merge of the two adapters."""
    fig, ax = _canvas(12, 6.4)
    ax.text(0.4, 6.1, "Four switches on one model, and one exact merge",
            fontsize=14, fontweight="bold", va="center")
    cell_w, cell_h, x0, y0 = 3.6, 1.2, 1.6, 2.55
    for (sft, dpo), (name, formula) in SYSTEMS.items():
        x, y = x0 + dpo * (cell_w + 0.2), y0 + (not sft) * (cell_h + 0.2)
        _box(ax, x, y, cell_w, cell_h, formula, FROZEN, title=name, size=11)
    for i, state in enumerate(("DPO off", "DPO on")):
        ax.text(x0 + i * (cell_w + 0.2) + cell_w / 2, y0 + 2 * cell_h + 0.35, state,
                ha="center", fontsize=12, fontweight="bold")
    for i, state in enumerate(("SFT on", "SFT off")):
        ax.text(x0 - 0.2, y0 + i * (cell_h + 0.2) + cell_h / 2, state, ha="right",
                va="center", fontsize=12, fontweight="bold")
    _merge_panel(ax, (x0 + 2 * cell_w + 0.2, y0 + cell_h / 2))
    ax.text(0.4, 2.1, r"$s = \alpha / r$ for each adapter; at inference nothing is trained, "
            "a switch only adds or drops a term", fontsize=10.5, va="center")
    return fig


def _merge_panel(ax, sft_dpo_edge):
    """The merge as a box under the grid, reached from the sft+dpo cell."""
    x, y, w, h = 0.4, 0.3, 11.2, 1.35
    body = (r"$\Delta W = (\alpha_{sft}/r_{sft})\ B_{sft} A_{sft}"
            r" + (\alpha_{dpo}/r_{dpo})\ B_{dpo} A_{dpo}$"
            "   =   one adapter of rank $r_{sft} + r_{dpo}$ and scale 1:\n"
            r"$B = [\,s_{sft} B_{sft} \mid s_{dpo} B_{dpo}\,]$  (side by side),   "
            r"$A = [\,A_{sft}\,;\, A_{dpo}\,]$  (stacked)  —  the same outputs as sft+dpo")
    _box(ax, x, y, w, h, body, FROZEN, title="merge (exact)", size=11)
    _arrow(ax, (sft_dpo_edge[0] + 0.35, sft_dpo_edge[1]), (sft_dpo_edge[0] + 0.35, y + h))
    ax.text(sft_dpo_edge[0] + 0.5, sft_dpo_edge[1] - 0.3, "merge", fontsize=10, va="center")


# --- 5. detector threshold ------------------------------------------------------------------------


def flagged_share(scores, threshold: float) -> float:
    """The share of texts a detector flags as AI: those scoring strictly above the threshold."""
    return float(np.mean(np.asarray(scores, dtype=float) > threshold))


def threshold_figure(human_scores, ai_scores, fpr: float = 0.05, labels=("human", "AI draft"),
                     system_scores=None, system_label=None) -> Figure:
    """Histograms of P(AI) per group and the threshold that flags at most `fpr` of human texts.

    Bars are shares of each group (not counts), so groups of different sizes compare directly."""
    threshold = threshold_at_fpr(human_scores, fpr)
    groups = [(labels[0], human_scores, HUMAN), (labels[1], ai_scores, AI)]
    if system_scores is not None:
        groups.append((system_label or "system", system_scores, SYSTEM))
    fig = ShownFigure(figsize=(10, 5.2), layout="constrained")
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 21)
    for label, scores, colour in groups:
        scores = np.asarray(scores, dtype=float)
        weights = np.full(len(scores), 1 / len(scores))  # bar height = share of the group
        ax.hist(scores, bins=bins, weights=weights, histtype="stepfilled", color=colour,
                alpha=0.25)
        ax.hist(scores, bins=bins, weights=weights, histtype="step", color=colour, lw=2,
                label=f"{label} (n={len(scores)}): {flagged_share(scores, threshold):.1%} flagged")
    ax.axvline(threshold, color="black", lw=2, ls="--", gid="threshold",
               label=f"threshold {threshold:.3f} ({fpr:.0%} FPR on {labels[0]} texts)")
    ax.set(xlim=(0, 1), xlabel="detector's P(AI)", ylabel="share of the group's texts",
           title="Flagged as AI = P(AI) above the threshold")
    fig.legend(loc="outside lower center", ncols=2, fontsize=10.5, frameon=False)
    return fig
