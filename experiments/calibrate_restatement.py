"""How often the restated-clause and unfinished-ending measures flag text that is fine: the L2R dev
file's human paragraphs (each once) and AI drafts, for a few (K, T), and whether the near-repeat
the 8-word loop measure misses is caught. The figures beside RESTATE_MIN_WORDS, RESTATE_OVERLAP and
`ends_mid_sentence` in helpers/core/text_measures.py come from this script.

    python experiments/calibrate_restatement.py
    python experiments/calibrate_restatement.py --rewrites runs/workshop/rewrites.jsonl
"""
from __future__ import annotations

import argparse

from helpers.core.io import DataError
from helpers.core.text_measures import ends_mid_sentence, has_loop, has_restatement
from helpers.data.sources import l2r_file, read_pairs
from helpers.evaluate.scoring import load_rewrites

MIN_WORDS = (4, 5, 6, 7)
OVERLAPS = (0.5, 0.6, 0.7, 0.8)
# the near-repeat that beat the loop measure (a rewrite decoded with DRY)
NEAR_REPEAT = ("This high-energy dance sport combines urban and hip hop culture with physical "
               "acrobatic feats, which is a high-energy dance that combines the rhythmic flair of "
               "urban and hip hop with physical athleticism.")


def rate(flags) -> str:
    flags = list(flags)
    return f"{sum(flags)}/{len(flags)} = {100 * sum(flags) / len(flags):.1f}%"


def dev_texts() -> dict[str, list[str]]:
    rows, _ = read_pairs(l2r_file("dev"))
    humans = {r["group"]: r["human"] for r in rows}  # a human paragraph has several drafts
    return {"human": list(humans.values()), "AI draft": [r["ai"] for r in rows]}


def calibration_table(texts: dict[str, list[str]]) -> None:
    print("| K | T | human | AI draft | near-repeat flagged |\n|---|---|---|---|---|")
    for k in MIN_WORDS:
        for t in OVERLAPS:
            cells = [rate(has_restatement(x, k, t) for x in group) for group in texts.values()]
            print(f"| {k} | {t} | {' | '.join(cells)} | {has_restatement(NEAR_REPEAT, k, t)} |")
    print("\nunfinished: " + ", ".join(f"{name} {rate(map(ends_mid_sentence, group))}"
                                       for name, group in texts.items()))


def rewrites_table(path: str) -> None:
    """Per system of a rewrites.jsonl: restated, loops, unfinished, and restated among loops."""
    rows = load_rewrites(path)
    systems = {"source": [r["source"] for r in rows], "human": [r["human"] for r in rows]}
    systems |= {key: [r["outputs"][key] for r in rows] for key in rows[0]["outputs"]}
    print(f"\n{path}\n| system | restated | loops | unfinished | restated among loops |\n"
          "|---|---|---|---|---|")
    for key, texts in systems.items():
        looping = [t for t in texts if has_loop(t)]
        among = rate(map(has_restatement, looping)) if looping else "—"
        print(f"| {key} | {rate(map(has_restatement, texts))} | {rate(map(has_loop, texts))} | "
              f"{rate(map(ends_mid_sentence, texts))} | {among} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rewrites", help="a rewrites.jsonl (notebook 06) to read the same way")
    args = parser.parse_args()
    calibration_table(dev_texts())
    if args.rewrites:
        try:
            rewrites_table(args.rewrites)
        except (FileNotFoundError, DataError) as error:  # exit 1 with the file, line and fix
            raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
