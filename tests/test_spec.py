"""The spec: every problem reported at once, with its path; the rules a sweep must follow."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES

from sweeper.spec import (
    SpecError,
    budget_extension_errors,
    keeping_recorded_defaults,
    load_spec,
    parse_spec,
    spec_from_store,
    stored_spec,
)

QUICKSTART = yaml.safe_load((EXAMPLES / "restaurant8k-minilm.yaml").read_text())


def errors_of(raw: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, EXAMPLES)
    return dict(info.value.errors)


def mutated(**changes) -> dict:
    raw = copy.deepcopy(QUICKSTART)
    for dotted, value in changes.items():
        node, *path = raw, *dotted.split("__")
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return raw


def test_examples_are_valid():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name == path.stem
        assert Path(spec.data.train).is_absolute() and Path(spec.data.train).is_file()


@pytest.mark.parametrize(
    "changes, path, fragment",
    [
        ({"budget__trials": 0}, "budget.trials", "greater than or equal to 1"),
        ({"budget__max_concurrent": "two"}, "budget.max_concurrent", "integer"),
        ({"scheduler__type": "hyperband"}, "scheduler.type", "'asha' or 'none'"),
        ({"scheduler__reduction_factor": 1}, "scheduler.reduction_factor", "greater than 1"),
        ({"early_stopping__patience": 0}, "early_stopping.patience", "greater than or equal to 1"),
        ({"task": "regression"}, "task", "token_tagging"),
        ({"name": "Has Spaces"}, "name", "pattern"),
        ({"data__train": "missing.json"}, "data.train", "file not found"),
        ({"data__format": "parquet"}, "data.format", "restaurant8k"),
        ({"data__format": "csv"}, "data.format", "task token_tagging reads restaurant8k, extraction, not csv"),
        ({"model": "/nonexistent/model"}, "model", "neither a named model"),
        ({"search_space": "nope"}, "search_space", "unknown search space 'nope'"),
        ({"objective__metric": "accuracy"}, "objective.metric", "not reported by task token_tagging"),
        ({"resources__gpus": -1}, "resources.gpus", "greater than or equal to 0"),
        ({"tracking__mode": "cloud"}, "tracking.mode", "offline"),
        ({"fixed": {"lora_r": 8}}, "fixed.lora_r", "both searched and fixed"),
        ({"fixed": {"momentum": 0.9}}, "fixed.momentum", "unknown hyperparameter"),
        ({"typo_key": 1}, "typo_key", "unknown key"),
        ({"data__holdout_file": "x.json"}, "data.holdout_file", "unknown key"),
    ],
)
def test_each_bad_field_is_reported_with_its_path(changes, path, fragment):
    errors = errors_of(mutated(**changes))
    assert path in errors, errors
    assert fragment in errors[path]


def test_all_problems_are_reported_at_once():
    errors = errors_of(mutated(budget__trials=0, data__train="missing.json", typo=1, model="/nope"))
    assert {"budget.trials", "data.train", "typo", "model"} <= set(errors)


def test_missing_required_settings_are_named():
    raw = {k: v for k, v in QUICKSTART.items() if k not in ("budget", "seed", "early_stopping")}
    errors = errors_of(raw)
    assert {"budget", "seed", "early_stopping"} <= set(errors)
    assert all("required" in errors[k] for k in ("budget", "seed", "early_stopping"))


def test_no_untuned_defaults():
    inline = {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    errors = errors_of(mutated(search_space=inline))
    for name in ("batch_size", "num_epochs", "lr_scheduler_type", "warmup_ratio", "weight_decay", "lora_r",
                 "lora_alpha", "lora_dropout"):
        assert "neither searched nor fixed" in errors[f"fixed.{name}"]
    fixed = dict(batch_size=16, num_epochs=2, lr_scheduler_type="linear", warmup_ratio=0.0, weight_decay=0.0,
                 lora_r=8, lora_alpha=16, lora_dropout=0.0)
    spec = parse_spec(mutated(search_space=inline, fixed=fixed), EXAMPLES)
    assert spec.max_rounds() == 2


def test_fixed_values_are_validated():
    inline = {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}}
    fixed = dict(batch_size=0, num_epochs=2, lr_scheduler_type="sawtooth", warmup_ratio=0.0, weight_decay=0.0,
                 lora_r=8, lora_alpha=16, lora_dropout=0.0)
    errors = errors_of(mutated(search_space=inline, fixed=fixed))
    assert "greater than or equal to 1" in errors["fixed.batch_size"]
    assert "fixed.lr_scheduler_type" in errors


def test_inverted_search_bounds_are_refused():
    space = {"params": {"learning_rate": {"type": "float", "low": 1e-2, "high": 1e-4}}}
    errors = errors_of(mutated(search_space=space))
    assert any("must be below high" in msg for path, msg in errors.items() if path.startswith("search_space"))


def test_objective_direction_defaults_by_metric():
    assert parse_spec(mutated(objective={"metric": "eval_loss"}), EXAMPLES).objective.mode == "min"
    assert parse_spec(mutated(objective={"metric": "f1_people"}), EXAMPLES).objective.mode == "max"


def test_relative_data_paths_resolve_against_the_spec_file(tmp_path):
    spec = load_spec(EXAMPLES / "restaurant8k-minilm.yaml")
    assert spec.data.holdout == str((EXAMPLES / "data/restaurant8k/holdout.json").resolve())


def test_unreadable_specs_give_one_clear_error(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(bad_yaml)
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(not_utf8)
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "absent.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(listing)


# -- hostile and malformed input (issue 16) ----------------------------------------------------------
FIXED = dict(batch_size=16, num_epochs=2, lr_scheduler_type="linear", warmup_ratio=0.0, weight_decay=0.0,
             lora_r=8, lora_alpha=16, lora_dropout=0.0)
LEARNING_RATE = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}


def searching(**params) -> dict:
    """The quickstart with an inline space searching these parameters (and learning_rate); the rest fixed."""
    return mutated(search_space={"params": {"learning_rate": LEARNING_RATE, **params}},
                   fixed={k: v for k, v in FIXED.items() if k not in params})


def spec_file(tmp_path: Path, raw: dict, **replace: str) -> Path:
    """`raw` as a spec file with absolute data paths; each `replace` key in the text becomes its value."""
    raw["data"] = {**raw["data"], **{r: str(EXAMPLES / raw["data"][r]) for r in ("train", "holdout", "test")}}
    text = yaml.safe_dump(raw, sort_keys=False)
    for placeholder, value in replace.items():
        text = text.replace(placeholder, value)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def alias_bomb(levels: int) -> str:
    """A YAML flow list whose aliases expand ten-fold per level: 10**levels items from ~50 bytes a level."""
    anchors = ["&l0 [" + ", ".join(["lol"] * 10) + "]"]
    anchors += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(anchors) + "]"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    conditional = {"type": "float", "low": 0.0, "high": 0.1, "when": {"lr_scheduler_type": ["linear"]},
                   "otherwise": "BOMB"}
    raw = searching(lr_scheduler_type={"type": "categorical", "choices": ["linear", "constant"]},
                    warmup_ratio=conditional)
    bomb = alias_bomb(9)  # a billion items once expanded
    assert len(bomb) < 600
    path = spec_file(tmp_path, raw, BOMB=bomb)
    with pytest.raises(SpecError, match=r"refused YAML at line \d+, column \d+: anchors and aliases"):
        load_spec(path)


@pytest.mark.parametrize("text, fragment", [
    ("[" * 30_000, "nested more than 32 levels deep"),  # was a RecursionError
    ("a: &x 1\nb: 2\n", "anchors and aliases"),
    ("x" * 300_000, "over the limit of 200,000"),
])
def test_hostile_yaml_is_one_clear_error(tmp_path, text, fragment):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=fragment):
        load_spec(path)


def test_a_key_given_twice_is_refused_naming_the_key(tmp_path):
    path = spec_file(tmp_path, mutated(), **{"seed: 7": "seed: 7\nbudget: {trials: 100}"})
    with pytest.raises(SpecError, match=r"line \d+, column 1: duplicate key 'budget'"):
        load_spec(path)


@pytest.mark.parametrize("params, path, fragment", [
    ({"learning_rate": {"type": "float", "low": -0.1, "high": 0.1}}, "learning_rate.low", "greater than 0"),
    ({"lora_r": {"type": "int", "low": 0, "high": 0}}, "lora_r.low", "greater than or equal to 1"),
    ({"lr_scheduler_type": {"type": "categorical", "choices": ["linear", "constant"]},
      "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1, "when": {"lr_scheduler_type": ["linear"]},
                       "otherwise": 5.0}}, "warmup_ratio.otherwise", "less than 1"),
    ({"num_epochs": {"type": "categorical", "choices": [1, "two"]}}, "num_epochs.choices.1", "valid integer"),
    ({"lora_dropout": {"type": "float", "low": 0.0, "high": 1.0}}, "lora_dropout.high", "less than 1"),
    ({"lr_scheduler_type": {"type": "categorical", "choices": ["linear", "sawtooth"]}},
     "lr_scheduler_type.choices.1", "'linear'"),
    ({"lora_r": {"type": "float", "low": 4, "high": 32}}, "lora_r.type", "whole numbers"),
])
def test_search_values_a_trial_would_refuse_are_refused_by_validate(params, path, fragment):
    errors = errors_of(searching(**params))
    assert f"search_space.params.{path}" in errors, errors
    assert fragment in errors[f"search_space.params.{path}"]


def test_a_directory_is_neither_a_spec_nor_a_data_file(tmp_path):
    with pytest.raises(SpecError, match="spec file is a directory"):
        load_spec(tmp_path)  # was an IsADirectoryError
    assert errors_of(mutated(data__train=str(tmp_path)))["data.train"] == f"file is a directory: {tmp_path}"


def test_fingerprint_binds_the_spec():
    a = parse_spec(mutated(), EXAMPLES)
    assert a.fingerprint() == parse_spec(mutated(), EXAMPLES).fingerprint()
    assert a.fingerprint() != parse_spec(mutated(seed=8), EXAMPLES).fingerprint()


def test_database_url_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv("SWEEPER_DATABASE_URL", "postgresql+psycopg://u:pw@db/sweeps")
    assert parse_spec(mutated(), EXAMPLES).database_url() == "postgresql+psycopg://u:pw@db/sweeps"


# -- audit and promotion sections ---------------------------------------------------------------------
BANKING = yaml.safe_load((EXAMPLES / "banking77-minilm.yaml").read_text())


def test_gates_read_as_text_or_as_mappings():
    spec = parse_spec(mutated(promotion={"gates": [
        "eval_loss <= 0.8", "f1_micro >= 0.9", "per_field_f1 >= 0.95 for every field",
        {"metric": "f1_time", "op": ">=", "threshold": 0.7}]}), EXAMPLES)
    assert [(g.metric, g.op, g.threshold) for g in spec.promotion.gates] == [
        ("eval_loss", "<=", 0.8), ("f1_micro", ">=", 0.9), ("per_field_f1", ">=", 0.95), ("f1_time", ">=", 0.7)]
    assert (spec.promotion.confidence, spec.promotion.bootstrap_samples, spec.promotion.seeds,
            spec.promotion.on_run) == (0.95, 1000, 0, False)
    assert spec.audit.min_holdout_fraction == 0.10 and spec.audit.allow == []


@pytest.mark.parametrize(
    "raw, task_spec, path, fragment",
    [
        ({"gates": ["accuracy >= 0.9"]}, QUICKSTART, "promotion.gates.0.metric", "not reported by task token_tagging"),
        ({"gates": ["f1_micro >= 0.9", "per_field_f1 >= 0.9"]}, BANKING, "promotion.gates.1.metric",
         "per_field_f1 needs a task with fields"),
        ({"gates": ["f1_time >= 0.9"]}, BANKING, "promotion.gates.0.metric",
         "not reported by task sequence_classification"),
        ({"gates": ["f1_micro >= 90"]}, QUICKSTART, "promotion.gates.0.threshold", "can never be met"),
        ({"gates": ["f1_micro about 0.9"]}, QUICKSTART, "promotion.gates.0", "write `metric >= threshold`"),
        ({"gates": ["f1_micro >= 0.9 for every field"]}, QUICKSTART, "promotion.gates.0", "goes with per_field_f1"),
        ({"gates": [{"metric": "f1_micro", "op": ">", "threshold": 0.9}]}, QUICKSTART, "promotion.gates.0.op", "'>='"),
        ({"gates": []}, QUICKSTART, "promotion.gates", "at least 1"),
        ({"gates": ["f1_micro >= 0.9"], "confidence": 1.5}, QUICKSTART, "promotion.confidence", "less than 1"),
        ({"gates": ["f1_micro >= 0.9"], "seed": 3}, QUICKSTART, "promotion.seed", "unknown key"),
    ],
)
def test_each_bad_gate_is_reported_with_its_path(raw, task_spec, path, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec({**copy.deepcopy(task_spec), "promotion": raw}, EXAMPLES)
    errors = dict(info.value.errors)
    assert path in errors, errors
    assert fragment in errors[path]


def test_unknown_audit_codes_are_refused_with_the_known_ones():
    errors = errors_of(mutated(audit={"allow": ["overlap", "leakage"], "min_holdout_fraction": 2}))
    assert "'leakage' is not an audit code; use one of small-holdout, overlap, near-duplicate" in errors["audit.allow.1"]
    assert "less than 1" in errors["audit.min_holdout_fraction"]


def test_gates_are_part_of_the_fingerprint_and_unset_sections_change_nothing():
    plain = parse_spec(mutated(scheduler__rung_metric="objective"), EXAMPLES)  # the rung sweeps then ran with
    legacy = {k: v for k, v in plain.model_dump(mode="json").items()
              if k not in ("audit", "promotion", "max_new_tokens", "search")}  # sections added later, left unset
    legacy["budget"] = {k: v for k, v in legacy["budget"].items() if k not in ("max_compute", "compute_unit")}
    legacy["scheduler"] = {k: v for k, v in legacy["scheduler"].items() if k not in ("rung_unit", "rung_metric")}
    legacy["data"] = {k: v for k, v in legacy["data"].items() if k != "prompt_template"}
    # A model block of default settings is fingerprinted as specs before the block wrote it.
    legacy["model"], legacy["data"]["max_seq_length"] = plain.model.path, plain.model.max_seq_length
    assert plain.fingerprint() == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    gated = parse_spec(mutated(promotion={"gates": ["f1_micro >= 0.9"]}), EXAMPLES)
    moved = parse_spec(mutated(promotion={"gates": ["f1_micro >= 0.8"]}), EXAMPLES)
    assert len({plain.fingerprint(), gated.fingerprint(), moved.fingerprint()}) == 3


def test_a_sweep_recorded_under_the_earlier_rung_default_goes_on_with_it_unless_the_spec_says_otherwise():
    new = parse_spec(mutated(), EXAMPLES)
    assert new.scheduler.rung_metric == "holdout_loss"  # the default since issue 13's fourth pass
    earlier = new.model_copy(update={"scheduler": new.scheduler.model_copy(update={"rung_metric": "objective"})})
    recorded = stored_spec(earlier)
    before_the_key = copy.deepcopy(recorded)
    del before_the_key["scheduler"]["rung_metric"]  # recorded before the key existed
    for record in (recorded, before_the_key):
        assert spec_from_store(record).scheduler.rung_metric == "objective"
        kept = keeping_recorded_defaults(new, record)
        assert kept.scheduler.rung_metric == "objective" and kept.fingerprint() == earlier.fingerprint()
        assert budget_extension_errors(spec_from_store(record), kept, 0, 0.0) == []
    said = parse_spec(mutated(scheduler__rung_metric="holdout_loss"), EXAMPLES)
    assert keeping_recorded_defaults(said, recorded).scheduler.rung_metric == "holdout_loss"
    [(path, _)] = budget_extension_errors(spec_from_store(recorded), said, 0, 0.0)  # a change: refused on resume
    assert path == "scheduler.rung_metric"
    assert keeping_recorded_defaults(new, None) is new  # a new sweep takes today's default
    assert keeping_recorded_defaults(new, stored_spec(new)).scheduler.rung_metric == "holdout_loss"
    unreadable = {**recorded, "schema_version": 99}
    assert keeping_recorded_defaults(new, unreadable) is new  # the fingerprint check refuses that resume


def test_a_sweep_recorded_under_the_earlier_reduction_factor_goes_on_with_it_unless_the_spec_says_otherwise():
    new = parse_spec(mutated(), EXAMPLES)  # the quickstart leaves the factor to the default
    assert new.scheduler.reduction_factor == 4  # the default since issue 13's ninth pass
    earlier = new.model_copy(update={"scheduler": new.scheduler.model_copy(update={"reduction_factor": 2.0})})
    recorded = stored_spec(earlier)  # a stored spec always names its factor
    kept = keeping_recorded_defaults(new, recorded)
    assert kept.scheduler.reduction_factor == 2 and kept.fingerprint() == earlier.fingerprint()
    assert budget_extension_errors(spec_from_store(recorded), kept, 0, 0.0) == []
    said = keeping_recorded_defaults(parse_spec(mutated(scheduler__reduction_factor=4), EXAMPLES), recorded)
    [(path, _)] = budget_extension_errors(spec_from_store(recorded), said, 0, 0.0)  # a change: refused on resume
    assert path == "scheduler.reduction_factor"
    assert keeping_recorded_defaults(new, stored_spec(new)).scheduler.reduction_factor == 4


def test_the_search_block_and_max_compute_left_at_their_defaults_keep_the_fingerprint():
    plain = parse_spec(mutated(), EXAMPLES)
    spelled = mutated(search={"sampler": "tpe", "enqueue": []}, budget={**QUICKSTART["budget"], "compute_unit": "epochs"})
    assert parse_spec(spelled, EXAMPLES).fingerprint() == plain.fingerprint()
    for search in ({"sampler": "random"}, {"startup_trials": 5}, {"seed": 3}, {"enqueue": [{"batch_size": 16}]}):
        assert parse_spec(mutated(search=search), EXAMPLES).fingerprint() != plain.fingerprint(), search
    capped = mutated(budget={**QUICKSTART["budget"], "max_compute": 20})
    assert parse_spec(capped, EXAMPLES).fingerprint() != plain.fingerprint()


def test_enqueued_configurations_are_checked_against_the_search_space():
    errors = errors_of(mutated(search={"sampler": "annealing", "startup_trials": -1},
                               budget={"trials": 2, "max_compute": 0}))
    assert "'tpe', 'gp', 'random' or 'grid'" in errors["search.sampler"], errors
    assert "greater than or equal to 0" in errors["search.startup_trials"]
    assert "greater than 0" in errors["budget.max_compute"]
    errors = errors_of(mutated(search={"enqueue": [
        {"learning_rate": 1e-3, "batch_size": 16},
        {"learning_rate": 0.5, "batch_size": 24, "num_epochs": 2.5, "lr_scheduler_type": True},
        {"lora_rank": 8, "warmup_ratio": "high"}]}, budget={"trials": 2}))
    assert "3 configurations, but budget.trials is 2" in errors["search.enqueue"], errors
    assert "0.5 is outside the range [0.0001, 0.02]" in errors["search.enqueue[1].learning_rate"]
    assert "24 is not one of the choices [16, 32]" in errors["search.enqueue[1].batch_size"]
    assert "2.5 is not a whole number" in errors["search.enqueue[1].num_epochs"]
    assert "True is not one of the choices" in errors["search.enqueue[1].lr_scheduler_type"]
    assert "not a searched parameter; searched: learning_rate" in errors["search.enqueue[2].lora_rank"]
    assert "'high' is not a number" in errors["search.enqueue[2].warmup_ratio"]
    assert not any(k.startswith("search.enqueue[0]") for k in errors)


def test_a_sweep_may_continue_with_a_larger_budget_and_nothing_else_changed():
    old = parse_spec(mutated(), EXAMPLES)
    more = parse_spec(mutated(budget={**QUICKSTART["budget"], "trials": 20, "max_compute": 50,
                                      "time_budget_s": 3600}), EXAMPLES)
    assert more.fingerprint() != old.fingerprint()
    assert budget_extension_errors(old, more, trials_started=8, compute_spent=24.0) == []
    fewer = parse_spec(mutated(budget={**QUICKSTART["budget"], "trials": 5, "max_compute": 10}), EXAMPLES)
    errors = dict(budget_extension_errors(old, fewer, trials_started=8, compute_spent=24.0))
    assert "5 is below the 8 trials the sweep has already started" in errors["budget.trials"]
    assert "10 is below the 24 epochs the sweep has already spent" in errors["budget.max_compute"]
    other = parse_spec(mutated(budget={**QUICKSTART["budget"], "trials": 20}, seed=8), EXAMPLES)
    (path, message), = budget_extension_errors(old, other, 8, 24.0)
    assert path == "seed" and "only budget.trials, budget.max_compute and budget.time_budget_s may change" in message
    wider = parse_spec(mutated(budget={**QUICKSTART["budget"], "max_concurrent": 4}), EXAMPLES)
    assert [path for path, _ in budget_extension_errors(old, wider, 8, 24.0)] == ["budget.max_concurrent"]
