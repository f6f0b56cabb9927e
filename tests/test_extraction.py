"""The extraction format (`{"text", "fields"}`, any schema): reading, locating values as spans, the metrics by
hand, and the spec rules around it. The trainers on it are in tests/training; the sweeps in tests/sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES

from sweeper.datasets import DataError, ExtractionExample, Span, TaggedExample, field_schema, read_file
from sweeper.locate import NOT_IN_TEXT, OVERLAPS, as_tagged, locate
from sweeper.spec import SpecError, load_spec
from sweeper.values import same_value
from trainers.metrics import field_f1


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# -- reading ------------------------------------------------------------------------------------------
def test_rows_of_any_schema_are_read_with_their_json_types_and_nulls(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", [
        {"text": "Invoice 17 from ACME, total $1,250.00", "fields": {"vendor": "ACME", "total": 1250.0, "po": None}},
        {"text": "  ", "fields": {"vendor": None}},
        {"text": "Receipt\nCafe Blue\n2 items", "fields": {"vendor": "Cafe Blue", "items": ["tea", "cake"]}},
    ])
    data = read_file(path, "extraction")
    assert data.rows == ["line 1", "line 3"] and data.empty_rows == ["line 2: empty text"]
    first, second = data.examples
    assert first.fields() == {"vendor": "ACME", "total": 1250.0}  # the null is no value...
    assert first.field_names() == {"vendor", "total", "po"}  # ...but its field is part of the schema
    assert second.fields()["items"] == ["tea", "cake"]
    assert field_schema(data.examples) == ["items", "po", "total", "vendor"]


@pytest.mark.parametrize("row, problem", [
    ({"fields": {"a": "x"}}, 'needs a string "text" and an object "fields"'),
    ({"text": "x", "fields": ["a"]}, 'needs a string "text" and an object "fields"'),
    ({"text": "x", "fields": {"total amount": "1"}}, "field name 'total amount' cannot name a metric"),
    ({"text": "x", "fields": {"": "1"}}, "field name '' cannot name a metric"),
    ('{"text": "x", "fields": {', "not valid JSON"),
])
def test_a_malformed_row_is_refused_naming_the_line(tmp_path, row, problem):
    path = write_rows(tmp_path / "rows.jsonl", [{"text": "fine", "fields": {"a": None}}, row])
    with pytest.raises(DataError, match="rows.jsonl: line 2: ") as caught:
        read_file(path, "extraction")
    assert problem in str(caught.value)


# -- values as spans ------------------------------------------------------------------------------------
def test_values_are_found_exactly_then_ignoring_case_and_spacing():
    text = "SHIPPER: Acme  Corp\nConsignee: BETA LTD\nWeight 12 kg, ref 12"
    tagged, unlocated = locate(ExtractionExample(text, (
        ("shipper", "Acme Corp"), ("consignee", "Beta Ltd"), ("weight", 12.0), ("ref", "12"), ("po", None))))
    spans = {s.field: text[s.start : s.end] for s in tagged.spans}
    assert spans == {"shipper": "Acme  Corp", "consignee": "BETA LTD", "weight": "12", "ref": "12"}
    # the two "12"s: weight takes the first, ref the next free one
    assert [s.start for s in tagged.spans if s.field in ("weight", "ref")] == [text.index("12"), text.rindex("12")]
    assert unlocated == []


def test_numbers_and_dates_are_found_as_the_text_writes_them():
    text = "Gross weight: 3,584.00 kg\nDate of dispatch: 12/02/2025\nShipped 5 March 2024, 7:30 pm"
    tagged, unlocated = locate(ExtractionExample(text, (
        ("weight_kg", 3584.0), ("dispatched", "2025-02-12"), ("shipped", "2024-03-05"), ("at", "19:30"))))
    assert {s.field: text[s.start : s.end] for s in tagged.spans} == {
        "weight_kg": "3,584.00", "dispatched": "12/02/2025", "shipped": "5 March 2024", "at": "7:30 pm"}
    assert unlocated == []


def test_values_that_cannot_be_placed_say_why():
    example = ExtractionExample("Table for four at 7pm", (
        ("time", "7pm"), ("when", "7pm"), ("people", 4), ("tags", ["a"]), ("ok", True)))
    tagged, unlocated = locate(example)
    assert [(s.field, s.start, s.end) for s in tagged.spans] == [("time", 18, 21)]
    assert unlocated == [("when", "7pm", OVERLAPS), ("people", 4, NOT_IN_TEXT), ("tags", ["a"], NOT_IN_TEXT),
                         ("ok", True, NOT_IN_TEXT)]
    restaurant = TaggedExample("x", (Span("a", 0, 1),))
    assert as_tagged(restaurant) is restaurant  # spans given: nothing to locate


def test_a_field_given_twice_keeps_its_first_value_as_the_tagger_keeps_its_first_span():
    from trainers.token_tagging import decode_fields

    text = "at 7pm, no, 8pm"
    gold = TaggedExample(text, (Span("time", 3, 6), Span("time", 12, 15)))
    assert gold.fields() == {"time": "7pm"}  # before: the last span won on the gold side, the first when decoding
    assert decode_fields(text, [(3, 6), (12, 15)], ["B-time", "B-time"]) == gold.fields()


# -- metrics by hand -------------------------------------------------------------------------------------
@pytest.mark.parametrize("gold, predicted", [
    ("1,250.00", 1250), ("$12.50", "12.5"), (4, "4"), ("2024-03-05", "March 5, 2024"), ("7pm", "19:00"),
    ("  Acme   Corp. ", "acme corp"), ({"b": 1, "a": 2}, {"a": 2, "b": 1}),
    ("2024-02-12", "12/02/2024"), ("2024-12-02", "12/02/2024"),  # an ambiguous date equals either reading
])
def test_values_that_name_the_same_thing_compare_equal(gold, predicted):
    assert same_value(gold, predicted) and same_value(predicted, gold)


@pytest.mark.parametrize("gold, predicted", [
    ("12.5 kg", "12.5"), ("-5", "5"), ("March 5", "March 5, 2024"), ("four", 4), ("may", "june"), (True, "yes"),
    ("2024-02-13", "12/02/2024"), (None, None), ("", ""),
])
def test_values_that_differ_do_not(gold, predicted):
    assert not same_value(gold, predicted)


def test_per_field_f1_counts_misses_and_spurious_values_by_hand():
    gold = [{"vendor": "ACME", "total": 1250.0, "date": "2024-03-05"},
            {"vendor": "Cafe Blue", "total": None, "date": None},
            {"vendor": None, "total": 9, "date": "2024-01-02"}]
    predicted = [{"vendor": "acme", "total": "1,250.00", "date": "5 March 2024"},  # 3 right, written differently
                 {"vendor": "Cafe", "total": 3, "date": None},  # vendor wrong (fp + fn), total spurious (fp)
                 {"date": "2024-01-02"}]  # total missed (fn), vendor null on both sides (nothing)
    scores = field_f1(gold, predicted)
    # vendor: tp 1, fp 1, fn 1 -> 2/4; total: tp 1, fp 1, fn 1 -> 2/4; date: tp 2 -> 1
    assert scores["f1_vendor"] == pytest.approx(0.5) and scores["f1_total"] == pytest.approx(0.5)
    assert scores["f1_date"] == 1.0
    # micro: tp 4, fp 2, fn 2
    assert scores["precision_micro"] == pytest.approx(4 / 6) and scores["recall_micro"] == pytest.approx(4 / 6)
    assert scores["f1_micro"] == pytest.approx(8 / 12)


def test_a_field_null_everywhere_and_never_predicted_has_no_score():
    assert "f1_po" not in field_f1([{"po": None, "a": "x"}], [{"a": "x"}])


# -- the spec ---------------------------------------------------------------------------------------------
def spec_file(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load((EXAMPLES / "bookings-minilm.yaml").read_text())
    spec["data"] = {**spec["data"], **{r: str(EXAMPLES / spec["data"][r]) for r in ("train", "holdout", "test")}}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            spec[section] = {**spec[section], name: value}
        else:
            spec[section] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def problems(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return caught.value.errors


def test_the_shipped_extraction_specs_validate():
    for name in ("bookings-minilm.yaml", "bookings-smollm2.yaml"):
        assert load_spec(EXAMPLES / name).data.format == "extraction"


def test_a_prompt_template_needs_the_text_and_a_causal_lm(tmp_path):
    assert problems(spec_file(tmp_path, task="causal_lm_sft", model="smollm2-135m",
                              data__prompt_template="Extract {fields}")) == [
        ("data.prompt_template", "the template must contain {text}, where the row's text goes (and may contain "
                                 "{fields}, the field names)")]
    errors = problems(spec_file(tmp_path, data__prompt_template="Fields of: {text}"))  # token_tagging
    assert [path for path, _ in errors] == ["data.prompt_template"] and "needs task causal_lm_sft" in errors[0][1]


def test_a_task_and_a_format_that_do_not_fit_are_one_error_at_validate(tmp_path):
    banking = {r: str(EXAMPLES / "data" / "banking77" / f"{r}.csv") for r in ("train", "holdout", "test")}
    errors = problems(spec_file(tmp_path, data={"format": "csv", **banking}))
    assert errors == [("data.format", "task token_tagging reads restaurant8k, extraction, not csv")]


def test_rows_a_causal_lm_cannot_fit_are_refused_by_the_audit_before_any_trial(tmp_path):
    from sweeper.audit import audit

    rows = [json.loads(line) for line in (EXAMPLES / "data" / "bookings" / "train.jsonl").read_text().splitlines()]
    rows[6]["text"] = "Hello, " * 80 + rows[6]["text"]  # one long document
    train = write_rows(tmp_path / "train.jsonl", rows)
    spec = spec_file(tmp_path, task="causal_lm_sft", model={"path": "smollm2-135m", "max_seq_length": 192},
                     data__train=str(train))
    with pytest.raises(DataError) as caught:
        audit(load_spec(spec))
    message = str(caught.value)
    assert message.startswith("data.train: 1 row(s) (first: line 7) do not fit in max_seq_length=192 tokens")
    assert "raise model.max_seq_length" in message
    spec = spec_file(tmp_path, task="causal_lm_sft", model={"path": "smollm2-135m", "max_seq_length": 512},
                     data__train=str(train))
    assert audit(load_spec(spec)).passed


def test_a_causal_lm_task_on_an_encoder_is_one_error_at_validate(tmp_path):
    errors = problems(spec_file(tmp_path, task="causal_lm_sft", model={"path": "minilm-l6", "max_seq_length": 192}))
    assert [path for path, _ in errors] == ["model.path"]
    assert "minilm-l6 is an encoder (BertModel); task causal_lm_sft fine-tunes a causal LM" in errors[0][1]
    folder = tmp_path / "my-llm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    assert load_spec(spec_file(tmp_path, task="causal_lm_sft", model={"path": str(folder)})).model.path == str(folder)
