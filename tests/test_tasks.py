"""The task registry and the data formats: one definition per task, read by the spec, the CLI and the README;
reading it loads no trainer (no torch)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml
from helpers import EXAMPLES, ROOT
from typer.testing import CliRunner

import trainers
from sweeper.cli import app
from sweeper.datasets import FORMATS
from sweeper.spec import SpecError, parse_spec
from trainers import TaskDefinition, all_tasks, get_task, register_task

QUICKSTART = yaml.safe_load((EXAMPLES / "restaurant8k-minilm.yaml").read_text())
BANKING = yaml.safe_load((EXAMPLES / "banking77-minilm.yaml").read_text())


@pytest.fixture
def registry(monkeypatch):
    """The task registry, restored after the test: tasks registered here do not leak into others."""
    monkeypatch.setattr(trainers, "_TASKS", dict(trainers._TASKS))


def errors_of(raw: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(copy.deepcopy(raw), EXAMPLES)
    return dict(info.value.errors)


def test_a_task_name_is_registered_once(registry):
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskDefinition("token_tagging", "trainers.synthetic", ("csv",), ("eval_loss",)))


def test_a_task_must_read_known_formats(registry):
    with pytest.raises(ValueError, match="unknown data formats \\['parquet'\\]"):
        register_task(TaskDefinition("tabular", "trainers.synthetic", ("parquet",), ("eval_loss",)))


def test_a_registered_task_is_all_the_spec_needs(registry):
    """Adding a task is its module and one registration: the spec then accepts its name, formats and metrics."""
    register_task(TaskDefinition("toy", "trainers.synthetic", formats=("csv",), metrics=("eval_loss", "toy_score")))
    spec = parse_spec({**copy.deepcopy(BANKING), "task": "toy", "objective": {"metric": "toy_score"},
                       "promotion": {"gates": ["toy_score >= 0.5"]}}, EXAMPLES)
    assert spec.task == "toy" and get_task("toy").load().train
    errors = errors_of({**BANKING, "task": "toy", "objective": {"metric": "accuracy"}})
    assert errors == {"objective.metric": "'accuracy' is not reported by task toy; choose one of eval_loss, toy_score"}


def test_a_task_given_data_of_a_format_it_does_not_read_is_refused_naming_the_formats_it_reads():
    errors = errors_of({**BANKING, "task": "token_tagging", "objective": {"metric": "f1_micro"}})
    assert errors == {"data.format": "task token_tagging reads restaurant8k, extraction, not csv"}


def test_unknown_task_and_format_name_the_registered_ones():
    errors = errors_of({**QUICKSTART, "task": "regression", "data": {**QUICKSTART["data"], "format": "parquet"}})
    assert errors["task"] == ("unknown task 'regression'; use one of causal_lm_sft, sequence_classification, "
                              "synthetic, token_tagging")
    assert errors["data.format"] == "unknown data format 'parquet'; use one of restaurant8k, csv, jsonl, extraction"


def test_reading_the_registry_and_validating_a_spec_load_no_trainer():
    code = ("import sys; from sweeper.spec import load_spec; from trainers import all_tasks; "
            f"load_spec({str(EXAMPLES / 'restaurant8k-minilm.yaml')!r}); all_tasks(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trainers.token_tagging') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stderr


def test_sweeper_tasks_lists_every_task_and_format():
    result = CliRunner().invoke(app, ["tasks"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for task in all_tasks():
        row = next(line for line in result.output.splitlines() if f" {task.name} " in line)
        assert ", ".join(task.formats) in row and ", ".join(task.metric_names()) in row
    for name, fmt in FORMATS.items():
        assert fmt.holds in result.output and name in result.output


def _table(section: str, header: str) -> list[list[str]]:
    """The rows of the README table whose header line starts with `header`, in `section`; cells unquoted."""
    lines = (ROOT / "README.md").read_text().split(section, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2  # past the header and |---|
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return [[cell.strip().replace("`", "") for cell in row.strip("|").split("|")] for row in lines[start:end]]


def test_the_readme_tables_are_the_registries():
    section = "### Tasks and data formats"
    assert _table(section, "| task |") == [[t.name, ", ".join(t.formats), ", ".join(t.metric_names())]
                                           for t in all_tasks()]
    assert _table(section, "| `data.format` |") == [[name, fmt.holds] for name, fmt in FORMATS.items()]
    spec_example = (ROOT / "README.md").read_text()
    assert re.search(r"^task: token_tagging .*sweeper tasks", spec_example, re.M)
