"""The bad-input catalogue: each malformed spec or data file is refused with a message naming the field,
a non-zero exit, and nothing written (no store, no Ray experiment). Plus fuzzing of the spec parser and of
the data readers."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.datasets import DataError, read_file
from sweeper.spec import SpecError, parse_spec

CATALOGUE_DIR = Path(__file__).parent / "bad_inputs"
CATALOGUE = yaml.safe_load((CATALOGUE_DIR / "catalogue.yaml").read_text())


def test_the_catalogue_is_large_and_every_entry_has_its_file():
    assert len(CATALOGUE) >= 30
    assert len({entry["file"] for entry in CATALOGUE}) == len(CATALOGUE)
    assert all((CATALOGUE_DIR / entry["file"]).is_file() for entry in CATALOGUE)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    target = tmp_path / "bad_inputs"
    shutil.copytree(CATALOGUE_DIR, target)
    monkeypatch.chdir(target)
    monkeypatch.delenv("SWEEPER_DATABASE_URL", raising=False)
    return target


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e["file"] for e in CATALOGUE])
def test_bad_input_is_refused_before_anything_is_written(entry, workdir):
    result = CliRunner().invoke(app, ["run", entry["file"]])
    output = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    if entry["field"]:
        assert f"{entry['field']}:" in output, output
    assert entry["message"] in output, output
    assert not (workdir / "state").exists(), "something was written for a refused input"
    assert not (workdir / ".sweeper").exists()


QUICKSTART = yaml.safe_load((EXAMPLES / "restaurant8k-minilm.yaml").read_text())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))


PATHS = list(_paths(QUICKSTART))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=json_values)
def test_any_mutated_spec_parses_or_gives_a_spec_error(path, value):
    raw = copy.deepcopy(QUICKSTART)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        parse_spec(raw, EXAMPLES)
    except SpecError as exc:
        assert exc.errors and all(isinstance(p, str) and msg for p, msg in exc.errors)


@settings(max_examples=200, deadline=None)
@given(raw=json_values)
def test_any_document_parses_or_gives_a_spec_error(raw):
    with pytest.raises(SpecError):
        parse_spec(raw, EXAMPLES)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_file_gives_a_spec_error_not_a_crash(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def test_a_directory_given_as_the_spec_is_refused(tmp_path):
    for command in ("validate", "audit", "run"):
        result = CliRunner().invoke(app, [command, str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "spec file is a directory" in " ".join(result.output.split())


# -- the data readers: any row shape is read or refused as a DataError, never a crash --------------------
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def shaped(**fields):
    """A mapping of these keys, each value its own strategy or anything at all; or anything instead."""
    return st.fixed_dictionaries({k: v | anything for k, v in fields.items()}) | anything


# Rows shaped like the real ones with any value anywhere, so fuzzing gets past each reader's first check.
span = shaped(startIndex=st.integers(-2, 8), endIndex=st.integers(-2, 8))
label = shaped(slot=st.text(max_size=6), valueSpan=span)
record = shaped(userInput=shaped(text=st.text(max_size=12)), labels=st.lists(label, max_size=3))
prompt_row = shaped(instruction=st.text(max_size=8), prompt=st.text(max_size=8), response=st.text(max_size=8))
CSV_TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list(',"\n\r\0\ufeff\u2028')), max_size=80)
CSV_HEADER = st.sampled_from(["text,label", "text,category", "\ufefftext,label", "label,text,extra", "text", ""])
FILES = {
    "restaurant8k": st.lists(record, max_size=4).map(json.dumps) | anything.map(json.dumps),
    "jsonl": st.lists(prompt_row.map(json.dumps) | st.text(max_size=20), max_size=4).map("\n".join),
    "csv": st.tuples(CSV_HEADER, CSV_TEXT).map("\n".join),
}


@pytest.mark.parametrize("fmt", list(FILES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_row_is_read_or_refused_as_a_data_error(tmp_path_factory, fmt, data):
    content = data.draw(FILES[fmt] | st.binary(max_size=40), label="content")
    path = tmp_path_factory.getbasetemp() / f"fuzz.{fmt}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    try:
        read = read_file(path, fmt)
    except DataError as exc:
        assert str(exc).startswith(f"{path}: "), exc  # names the file (and the row, where there is one)
        return
    assert len(read.rows) == len(read.examples) and all(e.text.strip() for e in read.examples)
