import pytest

from helpers.evaluate.scoring import ITEM_SCORES
from helpers.tools import update_docs

START, END = update_docs.markers("results")


def test_section_replaced_between_markers_only():
    readme = f"# Title\n\n{START}\nold table\n{END}\n\n## Tests\n"
    section = update_docs.section("results", update_docs.results_body("| a | b |\n|---|---|\n| 1 | 2 |\n",
                                                           "workshop", {"total": 3000}))
    new = update_docs.replace_section(readme, section)
    assert new.startswith("# Title\n\n") and new.endswith("\n\n## Tests\n")
    assert "old table" not in new and "| 1 | 2 |" in new
    assert "`make readme`" in new and "PRESET=workshop make run" in new and "50 min" in new
    assert update_docs.replace_section(new, section) == new


def test_the_headline_is_the_first_two_tables_with_what_introduces_and_explains_them():
    results = ("Preset x.\n\nWhat a reader sees first.\n\n| loops |\n|---|\n| 34% |\n\nLoops: legend."
               "\n\n| P(AI) | gap closed |\n|---|---|\n| 0.32 | 85% |\n\nP(AI): legend.\n\n| third |\n")
    body = update_docs.headline_body(results, "workshop")
    assert body.split("\n\n", 1)[1] == ("What a reader sees first.\n\n| loops |\n|---|\n| 34% |\n\n"
                                        "Loops: legend.\n\n| P(AI) | gap closed |\n|---|---|\n"
                                        "| 0.32 | 85% |\n\nP(AI): legend.\n")
    assert "runs/workshop/results.md" in body
    assert update_docs.headline_body("Preset x.\n\n| one table |\n", "workshop") is None


def test_missing_markers_are_reported():
    with pytest.raises(ValueError, match="results markers"):
        update_docs.replace_section("# no markers\n", "x", "README.md")


def test_update_docs_copies_results_and_the_experiment_tables(tmp_path, monkeypatch):
    from types import SimpleNamespace

    runs = tmp_path / "runs"
    (runs / "experiments").mkdir(parents=True)
    (runs / "results.md").write_text("| results |\n")
    (runs / "experiments" / "decoding.md").write_text("| decoding |\n")
    (runs / "experiments" / "quant_downstream.md").write_text("| downstream |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\nmiddle\n<!-- decoding:start -->\nold\n"
                      "<!-- decoding:end -->\n<!-- timing:start -->\nold\n<!-- timing:end -->\n"
                      "<!-- quant_downstream:start -->\nold\n<!-- quant_downstream:end -->\n")
    monkeypatch.setattr("helpers.tools.update_docs.get_config", lambda preset: SimpleNamespace(runs_dir=runs))
    monkeypatch.setattr("helpers.core.config.RUNS_ROOT", tmp_path / "no-runs")
    assert "results" in update_docs.update_docs("workshop", [readme])
    text = readme.read_text()
    assert "| results |" in text and "| decoding |" in text and "old" not in text
    assert "| downstream |" in text
    assert text.index("| results |") < text.index("middle") < text.index("| decoding |")
    assert "| whole series | not measured yet |" in text


def test_time_table_has_a_column_per_measured_preset_and_always_workshop(tmp_path):
    import json

    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "series_timing.json").write_text(json.dumps({
        "machine": {"date": "2026-12-01", "cpus": 2, "platform": "Linux", "load_average_15min": 3.2},
        "00_tour.ipynb": 75.4, "01_data.ipynb": 29.0, "total": 604.0}))
    table = update_docs.timing_table(tmp_path)
    assert "| notebook | `smoke` | `workshop` |\n|---|---|---|\n" in table
    assert "| `00_tour.ipynb` | 75 s | — |\n| `01_data.ipynb` | 29 s | — |\n" in table
    assert "| whole series | 10.1 min | not measured yet |" in table
    assert ("`smoke`: measured 2026-12-01 on 2 CPU cores (15-minute load average 3.2 at the end, "
            "the series' own threads included)") in table
    assert "`workshop`: not measured yet; `PRESET=workshop make run` writes" in table
    assert "paper" not in table


@pytest.mark.parametrize("cores, note", [
    (0.02, "other processes kept 0.02 cores busy on average: the machine was otherwise idle"),
    (0.6, "other processes kept 0.60 cores busy on average, so an idle machine is faster")])
def test_time_table_says_how_busy_other_work_kept_the_machine(tmp_path, cores, note):
    import json

    (tmp_path / "workshop").mkdir()
    (tmp_path / "workshop" / "series_timing.json").write_text(json.dumps({
        "machine": {"date": "2026-12-06", "cpus": 2, "platform": "Linux", "load_average_15min": 2.2,
                    "other_work_cores": cores},
        "00_tour.ipynb": 70.0, "total": 70.0}))
    assert f"`workshop`: measured 2026-12-06 on 2 CPU cores ({note})" in update_docs.timing_table(tmp_path)


def test_update_docs_without_results_still_refreshes_the_time_table(tmp_path, monkeypatch):
    from types import SimpleNamespace

    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\nkept\n{END}\n<!-- timing:start -->\nold\n"
                      "<!-- timing:end -->\n")
    monkeypatch.setattr("helpers.tools.update_docs.get_config", lambda preset: SimpleNamespace(runs_dir=tmp_path))
    monkeypatch.setattr("helpers.core.config.RUNS_ROOT", tmp_path)
    assert update_docs.update_docs("workshop", [readme], only=["results"]) == []
    assert "old" in readme.read_text()  # the time table was not asked for
    assert update_docs.update_docs("workshop", [readme]) == ["timing"]
    text = readme.read_text()
    assert "kept" in text and "old" not in text and "not measured yet" in text


def test_quant_table_gives_each_method_its_ratios_at_its_own_point(tmp_path):
    import json

    row = lambda config, target, kl: {"config": f"{config} @ {target}", "target": target,  # noqa: E731
                                      "bpw": target, "kl": kl, "kl_lo": kl / 2, "kl_hi": kl * 2,
                                      "ppl": 20.0, "MB": 80.0}
    (tmp_path / "quant_results.json").write_text(json.dumps({"heldout_texts": 16, "comparison": [
        row("uniform", 4.5, 0.6), row("gradient (mlx-lm)", 4.5, 0.4),
        row("KL knapsack + GPTQ", 4.5, 0.2), row("rule mixed_4_6", 4.71, 0.5),
        row("KL knapsack", 4.71, 0.25)]}))
    table = update_docs.quant_table(tmp_path, "workshop")
    assert "16 held-out validation paragraphs" in table
    assert "| 4.5 | KL knapsack + GPTQ | 4.500 | 0.200 [0.100, 0.400] | 20.00 | 80.0 | 3.00 | 2.00 |" \
        in table  # 0.6 / 0.2 and the best anchor 0.4 / 0.2
    assert "| 4.71 | KL knapsack | 4.710 | 0.250 [0.125, 0.500] | 20.00 | 80.0 | — | 2.00 |" in table
    assert update_docs.quant_table(tmp_path / "none", "workshop") is None


def test_only_a_whole_series_writes_the_time_table_record():
    from helpers.tools.series import timing_file

    assert timing_file() == timing_file("00") == "series_timing.json"
    assert timing_file("04") == timing_file(only="03") == timing_file("00", "00") \
        == "series_timing.partial.jsonl"


def write_run(runs):
    import json

    runs.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"d{i}", "source": f"draft {i}", "human": f"human {i}",
             "outputs": {"base": f"base {i}", "sft": f"sft {i}", "sft+dpo": f"dpo {i}"}}
            for i in range(3)]
    (runs / "rewrites.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = {"n-gram": {k: [0.1 * i + d for i in range(3)] for k, d in
                         (("source", 0.5), ("sft", 0.3), ("sft+dpo", 0.2), ("human", 0.0))}}
    (runs / ITEM_SCORES).write_text(json.dumps(scores))
    return rows


def test_the_example_is_picked_by_its_id_and_shows_each_text_with_its_scores(tmp_path):
    import hashlib

    rows = write_run(tmp_path)
    i = min(range(3), key=lambda k: hashlib.sha1(f"d{k}".encode()).hexdigest())
    assert update_docs.example_item(rows) == i
    text = update_docs.example_section(tmp_path, "workshop")
    assert f"evaluation draft {i + 1} of 3, picked by the hash of its id" in text
    assert f"**SFT+DPO stacked**\n\n> dpo {i}" in text and f"> base {i}" not in text
    assert f"| SFT+DPO stacked | {0.1 * i + 0.2:.2f} |" in text
    assert f"| human reference | {0.1 * i:.2f} |" in text
    assert update_docs.example_section(tmp_path / "none", "workshop") is None
    assert (update_docs.score(float("nan")), update_docs.score(None), update_docs.score(0.456)) == ("—", "—", "0.46")


def test_closing_cells_read_a_finished_run_or_say_how_to_make_it(tmp_path):
    import json

    ci = lambda m: {"mean": m, "lo": m - 0.1, "hi": m + 0.1}  # noqa: E731
    results = {"detectors": {"n-gram": {"kind": "evaluation"}}, "systems": [
        {"system": s, "label": label, "p_ai": {"n-gram": ci(p)}, "slop_per_1k": ci(slop),
         "loops": ci(p / 2)}
        for s, label, p, slop in (("source", "source AI draft", 0.8, 3.0), ("sft", "SFT", 0.4, 1.0),
                                  ("human", "human reference", 0.2, 0.5))]}
    (tmp_path / "workshop").mkdir()
    (tmp_path / "workshop" / "results.json").write_text(json.dumps(results))
    assert update_docs.recorded_rows(("source", "sft"), runs_root=tmp_path) == (
        "| System | P(AI) n-gram |\n|---|---|\n| source AI draft | 0.80 [0.70, 0.90] |\n"
        "| SFT | 0.40 [0.30, 0.50] |")
    assert update_docs.recorded_rows(("human",), "slop_per_1k", runs_root=tmp_path).endswith(
        "| human reference | 0.5 [0.4, 0.6] |")
    assert update_docs.recorded_rows(("sft",), ("loops", "slop_per_1k"), runs_root=tmp_path) == (
        "| System | Loops | Slop /1K |\n|---|---|---|\n| SFT | 20% [10, 30] | 1.0 [0.9, 1.1] |")
    # a results.json from before restated clauses and unfinished endings were measured
    assert update_docs.recorded_rows(("sft",), ("restated", "unfinished"), runs_root=tmp_path) == (
        "| System | Restated clause | Ends mid-sentence |\n|---|---|---|\n| SFT | — | — |")
    assert update_docs.recorded_rows(("sft",), runs_root=tmp_path / "none").startswith(
        "no workshop results yet: `PRESET=workshop make run` writes")


def test_readme_is_a_front_door_and_every_generated_section_has_one_home():
    assert len(update_docs.README.read_text(encoding="utf-8").splitlines()) <= 250
    names = ["timing", "headline", "example", "results", "quantization", *update_docs.EXPERIMENT_TABLES]
    for name in names:
        homes = [doc.name for doc in update_docs.DOCS if update_docs.markers(name)[0] in doc.read_text()]
        assert len(homes) == 1, f"{name}: in {homes}"
