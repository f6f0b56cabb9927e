"""Token tagging: BIO tags from character spans and back, a real tiny training run, and resume."""

import math
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sweeper.datasets import Span, TaggedExample
from trainers.base import ListReporter
from trainers.token_tagging import bio_labels, decode_fields, tag_tokens, train

TEXT = "Table for 4 at 7pm"  # MiniLM: [CLS] table for 4 at 7 ##pm [SEP]
LABELS = bio_labels(["people", "time"])  # O, B-people, I-people, B-time, I-time
LABEL_IDS = {label: i for i, label in enumerate(LABELS)}


@pytest.fixture(scope="module")
def offsets(minilm_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    enc = tokenizer(TEXT, return_offsets_mapping=True)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"]) == ["[CLS]", "table", "for", "4", "at", "7", "##pm", "[SEP]"]
    return [tuple(o) for o in enc["offset_mapping"]]


def test_tag_tokens_by_hand(offsets):
    example = TaggedExample(TEXT, (Span("people", 10, 11), Span("time", 15, 18)))
    #                    [CLS] table for  4  at  7  ##pm [SEP]
    assert tag_tokens(example, offsets, LABEL_IDS) == [-100, 0, 0, 1, 0, 3, 4, -100]


def test_decode_fields_round_trip(offsets):
    example = TaggedExample(TEXT, (Span("people", 10, 11), Span("time", 15, 18)))
    tags = [LABELS[t] if t >= 0 else "O" for t in tag_tokens(example, offsets, LABEL_IDS)]
    assert decode_fields(TEXT, offsets, tags) == {"people": "4", "time": "7pm"} == example.fields()


def test_decode_fields_keeps_first_span_and_starts_a_span_on_a_stray_i(offsets):
    #       [CLS] table     for  4           at  7         ##pm      [SEP]
    tags = ["O", "B-time", "O", "B-people", "O", "I-time", "I-time", "O"]
    # "table" is the first time span; "7pm" (an I- with no B-) is a second one and is dropped
    assert decode_fields(TEXT, offsets, tags) == {"time": "Table", "people": "4"}


@pytest.fixture
def two_round_run(make_config, minilm_path, restaurant8k_small):
    config = make_config("token_tagging", minilm_path, restaurant8k_small, num_epochs=2)
    reporter = ListReporter()
    outcome = train(config, reporter)
    return config, reporter, outcome


def test_training_lowers_the_loss_and_reports_metrics(two_round_run):
    _, reporter, outcome = two_round_run
    first, last = reporter.rounds[0], reporter.rounds[-1]
    assert [r.round for r in reporter.rounds] == [1, 2]
    assert last.metrics["eval_loss"] < first.metrics["eval_loss"]
    # the holdout metrics and nothing else (not the Trainer's epoch, token count or speeds)
    assert {k for k in last.metrics if not k.startswith("f1_")} == {"eval_loss", "precision_micro", "recall_micro"}
    for key in ("f1_micro", "precision_micro", "recall_micro"):
        assert not math.isnan(last.metrics[key]), key
    for key in ("train_loss", "time_tokenize_s", "examples_seen", "epoch", "tokens_seen"):
        assert not math.isnan(last.bookkeeping[key]), key
    assert 0.0 <= last.metrics["f1_micro"] <= 1.0
    assert last.bookkeeping["examples_seen"] == 2 * 6 * 16  # 96 rows / batch 16 = 6 steps per round
    assert (outcome.stop_reason, outcome.rounds) == ("completed", 2)
    assert last.bookkeeping["stop_reason"] == "completed" and first.bookkeeping["stop_reason"] == ""


def test_resume_continues_from_the_round_1_checkpoint(two_round_run, make_config, minilm_path, restaurant8k_small, tmp_path):
    config, reporter, _ = two_round_run
    checkpoint = tmp_path / "saved-round-1"
    shutil.copytree(reporter.checkpoints[0], checkpoint)  # as the controller would keep it
    retry = config.model_copy(update={"output_dir": str(tmp_path / "retry")})
    resumed = ListReporter(checkpoint=str(checkpoint))
    outcome = train(retry, resumed)
    assert [r.round for r in resumed.rounds] == [2]
    assert resumed.rounds[0].bookkeeping["examples_seen"] == reporter.rounds[1].bookkeeping["examples_seen"]
    # same data order, optimizer and adapter state: round 2 lands where the uninterrupted run did
    assert resumed.rounds[0].metrics["eval_loss"] == pytest.approx(reporter.rounds[1].metrics["eval_loss"], rel=1e-3)
    assert outcome.stop_reason == "completed"


# -- long documents and extraction rows --------------------------------------------------------------------
RECEIPT = "".join(f"Item {i} widget 3.50\n" for i in range(60)) + "ACME\nSTORES\nTOTAL: 99.10\nDATE: 2024-03-05"


def test_a_long_multiline_text_is_read_in_windows_and_decoded_whole(minilm_path):
    from sweeper.datasets import ExtractionExample
    from sweeper.locate import as_tagged
    from trainers.token_tagging import TaggingData, crosses_lines, decode_spans, label_space

    example = ExtractionExample(RECEIPT, (("total", "99.10"), ("date", "2024-03-05"), ("vendor", "ACME STORES")))
    labels, label_ids = label_space([example])
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    assert crosses_lines([as_tagged(example)])  # "ACME STORES" is found as "ACME\nSTORES"
    data = TaggingData(tokenizer, [as_tagged(example)], label_ids, max_length=32, cross_lines=True)
    assert len(data) > 10 and set(data.example_of) == {0}  # ~300 tokens: many windows of one example
    last = data.rows[-1]["labels"]
    assert label_ids["B-total"] in last and label_ids["B-date"] in last  # the end of the document is trained on
    # the gold tags of every window, decoded and merged, give the values back (overlaps counted once)
    gold_tags = [[labels[t] if t >= 0 else "O" for t in row["labels"]] for row in data.rows]
    assert data.fields(gold_tags) == [{"total": "99.10", "date": "2024-03-05", "vendor": "ACME\nSTORES"}]
    # where no train value runs across a line break, no decoded one does: "TOTAL:" tagged I- after a value on the
    # line before starts a span of its own
    start = RECEIPT.index("STORES")
    offsets, tags = [(start, start + 6), (start + 7, start + 12)], ["B-vendor", "I-vendor"]
    assert decode_spans(RECEIPT, offsets, tags) == [("vendor", start, start + 6), ("vendor", start + 7, start + 12)]
    assert decode_spans(RECEIPT, offsets, tags, cross_lines=True) == [("vendor", start, start + 12)]


def test_extraction_rows_train_the_tagger_with_no_conversion(make_config, minilm_path, tmp_path):
    bookings = Path(__file__).resolve().parents[2] / "examples" / "data" / "bookings"
    files = {}
    for split, rows in (("train", 96), ("holdout", 24)):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join((bookings / f"{split}.jsonl").read_text().splitlines(True)[:rows]))
    data = {"format": "extraction", "train": str(files["train"]), "holdout": str(files["holdout"])}
    reporter = ListReporter()
    train(make_config("token_tagging", minilm_path, data, num_epochs=1), reporter)
    metrics = reporter.rounds[-1].metrics
    assert {"f1_micro", "f1_party_size", "f1_time"} <= set(metrics)  # the data's own field names
    assert metrics["f1_micro"] > 0  # values found as spans were learned from a single epoch


def test_where_windows_overlap_a_token_takes_the_tag_of_the_window_it_is_most_central_in():
    from trainers.token_tagging import TaggingData

    text = "Shipper: ACME Corp"  # tokens: Shipper(0-7) :(7-8) ACME(9-13) Corp(14-18)
    tokens = [(0, 7), (7, 8), (9, 13), (14, 18)]
    data = TaggingData.__new__(TaggingData)
    data.examples, data.cross_lines = [TaggedExample(text)], False
    data.example_of = [0, 0]
    # window 1 sees everything but ends at "ACME" (no right context); window 2 has "ACME" in its middle
    data.offsets = [[(0, 0), *tokens[:3], (0, 0)], [(0, 0), *tokens[1:], (18, 18), (0, 0)]]
    edge_guess = ["O", "O", "O", "B-consignee", "O"]  # ACME at the window's edge: the wrong field
    central = ["O", "O", "B-shipper", "I-shipper", "O", "O"]
    assert data.fields([edge_guess, central]) == [{"shipper": "ACME Corp"}]
