"""The per-item results file: append, reload, repair of an interrupted write."""

from __future__ import annotations

import json

import pytest

from evaluation.store import ResultStore, ResultsFileError


def test_append_and_load_last_record_wins(tmp_path):
    st = ResultStore(tmp_path / "r" / "b.jsonl")
    assert st.load() == {}
    st.append([{"id": "1", "correct": False, "error": "boom"}, {"id": "2", "correct": True}])
    st.append([{"id": "1", "correct": True}])
    done = st.load()
    assert done == {"1": {"id": "1", "correct": True}, "2": {"id": "2", "correct": True}}


def test_torn_tail_is_cut_and_complete_tail_gets_its_newline(tmp_path):
    f = tmp_path / "b.jsonl"
    good = json.dumps({"id": "a", "x": 1}) + "\n"
    f.write_text(good + '{"id": "b", "x"')
    assert set(ResultStore(f).load()) == {"a"}
    assert f.read_text() == good  # the torn record is gone, nothing else touched
    f.write_text(good + json.dumps({"id": "c"}))  # complete, only the newline missing
    assert set(ResultStore(f).load()) == {"a", "c"}
    assert f.read_text() == good + json.dumps({"id": "c"}) + "\n"
    ResultStore(f).append([{"id": "d"}])
    assert set(ResultStore(f).load()) == {"a", "c", "d"}


def test_bad_line_in_the_middle_is_an_error(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"id": "a"}\n[1, 2]\n{"id": "b"}\n')
    with pytest.raises(ResultsFileError, match=r"b.jsonl:2: corrupt record \(not a record with an id\)"):
        ResultStore(f).load()
