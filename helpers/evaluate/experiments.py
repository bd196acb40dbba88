"""Several experiments side by side, and one experiment's result saved with
its table.
"""
from __future__ import annotations

from pathlib import Path

from helpers.core import config
from helpers.core.io import DataError, atomic_write_json, atomic_write_text, read_json
from helpers.evaluate.verdicts import counted_detectors, target_rows


def save_experiment(out: Path, name: str, result: dict, render) -> str:
    """An experiment's measurements as out/<name>.json and its README table, render(result), as
    out/<name>.md (printed too); with result None the table is rebuilt from the saved JSON."""
    out.mkdir(parents=True, exist_ok=True)
    if result is None:
        result = read_json(out / f"{name}.json")
    else:
        atomic_write_json(out / f"{name}.json", result)
    text = render(result)
    atomic_write_text(out / f"{name}.md", text)
    print(text)
    return text


def experiment_results_path(preset: str, name: str, runs_root: Path | None = None) -> Path:
    """runs/<preset>/results.json for the default experiment (""), else
    runs/<preset>/<name>/results.json."""
    folder = Path(runs_root or config.RUNS_ROOT) / preset
    return (folder / name if name else folder) / "results.json"


def compare_experiments(cfg, names: list[str], system: str = "sft+dpo",
                        runs_root: Path | None = None):
    """Long table (experiment, measure, mean, lo, hi) of `system` in each experiment's
    results.json: P(AI) per detector, gap closed per counted detector, meaning, facts kept,
    slop, and how many targets each met."""
    # deferred: pandas is slow to import, and only this path needs it
    import pandas as pd
    out = []
    for name in names:
        path = experiment_results_path(cfg.preset, name, runs_root)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no results; run notebook 07 with preset "
                                    f"{cfg.preset!r} and experiment {name!r} first")
        results = read_json(path)
        rows = {r["system"]: r for r in results["systems"]}
        if system not in rows:
            raise DataError(f"{path}: system {system!r} missing (has {sorted(rows)})")
        row, label = rows[system], name or "(default)"
        measures = {**{f"P(AI) {d}": row["p_ai"][d] for d in results["detectors"]},
                    **{f"gap closed {d}": row["gap_closed_by_detector"][d]
                       for d in counted_detectors(results)},
                    "meaning": row["meaning"], "facts kept": row["facts"],
                    "slop /1K": row["slop_per_1k"]}
        for measure, ci in measures.items():
            ci = ci or {}
            out.append({"experiment": label, "measure": measure, "mean": ci.get("mean"),
                        "lo": ci.get("lo"), "hi": ci.get("hi")})
        verdicts = [v[2] for v in target_rows(results)]
        out.append({"experiment": label, "measure": "targets met", "mean": verdicts.count("met"),
                    "lo": None, "hi": None})
    return pd.DataFrame(out)


def plot_experiments(frame, columns: int = 4):
    """One panel per measure: each experiment's mean with its 95% CI."""
    # deferred: matplotlib is slow to import, and only this path needs it
    import matplotlib.pyplot as plt
    measures = [m for m in frame["measure"].unique() if m != "targets met"]
    n_rows = -(-len(measures) // columns)
    height = 1.0 + 0.35 * frame["experiment"].nunique()
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.2 * columns, height * n_rows),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    for ax, measure in zip(axes.flat, measures):
        part = frame[frame["measure"] == measure].astype({"mean": float, "lo": float, "hi": float})
        ax.errorbar(part["mean"], part["experiment"], fmt="o",
                    xerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]])
        ax.set_title(measure, fontsize=9)
    fig.tight_layout()
    return fig
