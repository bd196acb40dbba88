"""The cache mechanism: content keys, atomic writes, damaged files as misses."""
import numpy as np

from helpers.core.cache import (
    content_key,
    digest,
    load_arrays,
    load_json,
    read_entries,
    save_arrays,
    save_json,
)


def test_same_parts_same_key_whatever_their_order():
    a = content_key("scan", 1, model="m", bits=4, ids=["x", "y"])
    assert a == content_key("scan", 1, bits=4, ids=("x", "y"), model="m")
    assert a.startswith("scan-v1-")
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})


def test_any_changed_part_kind_or_version_changes_the_key():
    base = dict(model="m", bits=4, ids=["x", "y"])
    key = content_key("scan", 1, **base)
    changed = [content_key("scan", 2, **base), content_key("anchors", 1, **base),
               content_key("scan", 1, **{**base, "bits": 3}),
               content_key("scan", 1, **{**base, "ids": ["y", "x"]}),
               content_key("scan", 1, **base, extra=None)]
    assert len({key, *changed}) == 6


def test_json_round_trip_keeps_or_replaces_entries(tmp_path):
    path = tmp_path / "c.json"
    assert load_json(path, "k1") is None
    save_json(path, "k1", {"a": [1.5, 2]})
    save_json(path, "k2", [3])
    assert load_json(path, "k1") == {"a": [1.5, 2]} and load_json(path, "k2") == [3]
    save_json(path, "k3", "only", keep=False)
    assert read_entries(path) == {"k3": "only"}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left


def test_damaged_or_foreign_files_are_misses(tmp_path):
    path = tmp_path / "c.json"
    save_json(path, "k", [1, 2, 3])
    path.write_text(path.read_text()[:-8])  # cut short, as by a crash of another writer
    assert load_json(path, "k") is None
    path.write_text('{"k": [1, 2, 3]}')  # an older cache's own format
    assert load_json(path, "k") is None
    save_json(path, "k", 1)  # and it is simply rewritten
    assert load_json(path, "k") == 1


def test_arrays_round_trip_exactly_and_check_the_key(tmp_path):
    path = tmp_path / "a.safetensors"
    arrays = {"x": np.array([0.1, 1e-300, -2.0]), "y": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_arrays(path, "k", arrays)
    back = load_arrays(path, "k")
    assert back.keys() == arrays.keys()
    for name in arrays:
        assert back[name].dtype == arrays[name].dtype
        np.testing.assert_array_equal(back[name], arrays[name])
    assert load_arrays(path, "other") is None
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
    path.write_bytes(path.read_bytes()[:20])
    assert load_arrays(path, "k") is None
    assert load_arrays(tmp_path / "missing.safetensors", "k") is None


def test_parts_may_be_called_kind_or_version():
    assert content_key("a", 1, kind="b", version=2) != content_key("a", 1, kind="b", version=3)
