import pytest

from helpers import report


def test_section_replaced_between_markers_only():
    readme = f"# Title\n\n{report.START}\nold table\n{report.END}\n\n## Tests\n"
    section = report.readme_section("| a | b |\n|---|---|\n| 1 | 2 |\n", "workshop", {"total": 3000})
    new = report.replace_section(readme, section)
    assert new.startswith("# Title\n\n") and new.endswith("\n\n## Tests\n")
    assert "old table" not in new and "| 1 | 2 |" in new
    assert "PRESET=workshop make run" in new and "50 min" in new
    assert report.replace_section(new, section) == new


def test_missing_markers_are_reported():
    with pytest.raises(ValueError, match="results markers"):
        report.replace_section("# no markers\n", "x", "README.md")


def test_update_readme_copies_results_and_the_decoding_experiment(tmp_path, monkeypatch):
    from types import SimpleNamespace

    runs = tmp_path / "runs"
    (runs / "experiments").mkdir(parents=True)
    (runs / "results.md").write_text("| results |\n")
    (runs / "experiments" / "decoding.md").write_text("| decoding |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.START}\n{report.END}\nmiddle\n<!-- decoding:start -->\nold\n"
                      "<!-- decoding:end -->\n")
    monkeypatch.setattr(report, "get_config", lambda preset: SimpleNamespace(runs_dir=runs))
    assert report.update_readme("workshop", readme)
    text = readme.read_text()
    assert "| results |" in text and "| decoding |" in text and "old" not in text
    assert text.index("| results |") < text.index("middle") < text.index("| decoding |")
