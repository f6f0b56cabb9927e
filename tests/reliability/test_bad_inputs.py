"""The bad-input catalogue: each malformed spec or data file is refused with a message naming the field,
a non-zero exit, and nothing written (no store, no Ray experiment). Plus fuzzing of the spec parser."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sweeper.cli import app
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
