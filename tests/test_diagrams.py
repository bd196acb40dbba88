"""The course's diagrams: each is a Figure carrying the labels and numbers it claims to show."""
from __future__ import annotations

import matplotlib.text
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from helpers.core.statistics import threshold_at_fpr
from helpers.course import diagrams

HUMAN = [i / 20 for i in range(20)]   # 0.00 .. 0.95: at 5% FPR the threshold is 0.90
AI = [0.5, 0.9, 0.91, 0.99]           # 0.9 equals the threshold, so it is not flagged
SYSTEM = [0.2, 0.95, 0.3]


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def saves_png(fig: Figure, path) -> None:
    fig.savefig(path, format="png", dpi=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_names_every_notebook_in_order(tmp_path):
    fig = diagrams.pipeline_figure()
    titles = ["01 · data", "02/03 · quantize", "04 · SFT LoRA", "05 · DPO LoRA",
              "06 · inference", "07 · evaluation"]
    found = texts(fig)
    assert [t for t in found if t in titles] == titles
    assert {"frozen (not trained)", "trainable"} <= set(found)
    saves_png(fig, tmp_path / "pipeline.png")


def test_lora_counts_are_exact():
    assert diagrams.lora_parameter_counts(d_in=576, d_out=576, rank=8) == (331_776, 9_216)
    assert diagrams.lora_parameter_counts(d_in=10, d_out=6, rank=2) == (60, 32)


def test_lora_figure_prints_its_arguments_counts(tmp_path):
    fig = diagrams.lora_figure(d_in=10, d_out=6, rank=2)
    found = set(texts(fig))
    assert "W:  d_out × d_in = 6 × 10 = 60 parameters (frozen)" in found
    assert ("B, A:  r × (d_in + d_out) = 2 × (10 + 6) = 32 parameters (trained, 53.33% of W)"
            in found)
    assert {"W", "B", "A", "6 × 10\nfrozen", "6 × 2\ntrained", "2 × 10\ntrained"} <= found
    saves_png(fig, tmp_path / "lora.png")


def test_lora_figure_default_is_the_workshop_layer():
    found = set(texts(diagrams.lora_figure()))
    assert "W:  d_out × d_in = 576 × 576 = 331,776 parameters (frozen)" in found


def test_dpo_figure_shows_pair_stack_and_loss(tmp_path):
    fig = diagrams.dpo_figure()
    found = texts(fig)
    assert {"prompt  $x$ = the AI draft", "chosen  $y_w$ = the human text",
            "rejected  $y_l$ = a model rewrite", diagrams.DPO_LOSS,
            "SFT adapter (from 04)\nfrozen", r"reference $\pi_{ref}$"} <= set(found)
    assert any(t.startswith("DPO adapter\ntrainable") for t in found)
    assert any(t.startswith(r"reference $\pi_{ref}$ = base + SFT") for t in found)
    saves_png(fig, tmp_path / "dpo.png")


def test_switches_figure_names_four_systems_and_the_merge(tmp_path):
    fig = diagrams.switches_figure()
    found = set(texts(fig))
    assert {"base", "sft", "dpo-only", "sft+dpo", "SFT on", "SFT off", "DPO on", "DPO off",
            "merge (exact)"} <= found
    assert any(t.startswith(r"$\Delta W = (\alpha_{sft}/r_{sft})") for t in found)
    saves_png(fig, tmp_path / "switches.png")


def test_threshold_line_is_threshold_at_fpr_and_legend_counts_flagged(tmp_path):
    fig = diagrams.threshold_figure(HUMAN, AI, fpr=0.05, system_scores=SYSTEM)
    (line,) = [ln for ln in fig.findobj(Line2D) if ln.get_gid() == "threshold"]
    assert threshold_at_fpr(HUMAN, 0.05) == 0.9
    assert list(line.get_xdata()) == [0.9, 0.9]
    found = set(texts(fig))
    assert {"human (n=20): 5.0% flagged", "AI draft (n=4): 50.0% flagged",
            "system (n=3): 33.3% flagged", "threshold 0.900 (5% FPR on human texts)"} <= found
    saves_png(fig, tmp_path / "threshold.png")


@pytest.mark.parametrize("fpr, threshold, human_share", [(0.0, 0.95, "0.0%"), (0.1, 0.85, "10.0%")])
def test_threshold_follows_fpr_and_labels(fpr, threshold, human_share):
    fig = diagrams.threshold_figure(HUMAN, AI, fpr=fpr, labels=("people", "drafts"),
                                    system_scores=SYSTEM, system_label="sft+dpo")
    (line,) = [ln for ln in fig.findobj(Line2D) if ln.get_gid() == "threshold"]
    assert line.get_xdata()[0] == threshold_at_fpr(HUMAN, fpr) == pytest.approx(threshold)
    found = set(texts(fig))
    assert f"people (n=20): {human_share} flagged" in found
    assert any(t.startswith("sft+dpo (n=3): ") for t in found)


@pytest.mark.parametrize("draw", [diagrams.pipeline_figure, diagrams.dpo_figure,
                                  lambda: diagrams.threshold_figure(HUMAN, AI)])
def test_a_diagram_shows_itself_as_png_without_pyplot(draw):
    """The cell's value is the picture even before pyplot has drawn anything (notebook 00)."""
    assert draw()._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
