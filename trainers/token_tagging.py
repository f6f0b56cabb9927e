"""LoRA token tagging: extract fields (slots) from text, scored by per-field F1.

Character spans become BIO tags on sub-word tokens (through the tokenizer's offset mapping); predicted
tags become character spans again, and their text is compared with the gold values per field. Extraction rows
(`{"text", "fields"}`) are tagged where their values are found in the text (sweeper.locate); they are scored
against the values themselves. A text longer than `max_seq_length` tokens is read in overlapping windows, so
a field near the end of a long document is seen in training and found in prediction.
`predict` loads a trained adapter and returns per-example records; `score` turns any list of them into the
metrics, so promotion can bootstrap over examples.
"""

from __future__ import annotations

import time

import torch
from peft import TaskType
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

from sweeper.datasets import FieldsExample, TaggedExample, field_schema
from sweeper.locate import as_tagged
from trainers import hf_loop
from trainers.base import Reporter, TrialConfig, TrialOutcome
from trainers.metrics import field_f1, pooled_loss

IGNORE = hf_loop.IGNORE


def bio_labels(fields: list[str]) -> list[str]:
    return ["O"] + [f"{prefix}-{name}" for name in fields for prefix in ("B", "I")]


def tag_tokens(example: TaggedExample, offsets: list[tuple[int, int]], label_ids: dict[str, int]) -> list[int]:
    """One label per token: B- on the first token inside a span, I- on the rest, O outside, -100 on specials."""
    tags, previous_span = [], None
    for start, end in offsets:
        if start == end:
            tags.append(IGNORE)
            continue
        span = next((s for s in example.spans if s.start <= start < s.end), None)
        if span is None:
            tags.append(label_ids["O"])
        else:
            prefix = "I" if span is previous_span else "B"
            tags.append(label_ids.get(f"{prefix}-{span.field}", label_ids["O"]))
        previous_span = span
    return tags


def crosses_lines(examples: list[TaggedExample]) -> bool:
    """Whether any train value runs across a line break (a two-line address): only then may a decoded one."""
    return any("\n" in e.text[s.start : s.end] for e in examples for s in e.spans)


def decode_spans(text: str, offsets: list[tuple[int, int]], tags: list[str],
                 cross_lines: bool = False) -> list[tuple[str, int, int]]:
    """Token tags back to (field, start, end) character spans. An I- tag continues the span before it if it is the
    same field, and, unless `cross_lines`, on the same line: a total does not run into the next line's text."""
    spans: list[list] = []
    for (start, end), tag in zip(offsets, tags):
        if start == end or tag == "O":
            continue
        prefix, name = tag.split("-", 1)
        if prefix == "I" and spans and spans[-1][0] == name and (cross_lines or "\n" not in text[spans[-1][2] : start]):
            spans[-1][2] = end
        else:
            spans.append([name, start, end])
    return [tuple(span) for span in spans]


def first_of_each_field(text: str, spans) -> dict[str, str]:
    """{field: text} keeping each field's first span in the text (the rule gold rows follow too). Overlapping spans
    of one field (the same value seen in two windows, one cut at its edge) are one span."""
    merged: list[list] = []
    for name, start, end in sorted(spans, key=lambda span: (span[1], -span[2])):
        same = next((m for m in merged if m[0] == name and start < m[2]), None)
        if same:
            same[2] = max(same[2], end)
        else:
            merged.append([name, start, end])
    fields: dict[str, str] = {}
    for name, start, end in merged:
        fields.setdefault(name, text[start:end])
    return fields


def decode_fields(text: str, offsets: list[tuple[int, int]], tags: list[str],
                  cross_lines: bool = False) -> dict[str, str]:
    return first_of_each_field(text, decode_spans(text, offsets, tags, cross_lines))


class TaggingData:
    """Token rows of tagged examples: one per window of `max_length` tokens (a quarter overlapping the one
    before); `example_of[row]` is the example a row comes from."""

    def __init__(self, tokenizer, examples: list[TaggedExample], label_ids: dict[str, int], max_length: int,
                 cross_lines: bool = False):
        self.examples, self.cross_lines = examples, cross_lines
        enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length, stride=max_length // 4,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
        self.example_of = list(enc["overflow_to_sample_mapping"])
        self.offsets = [list(map(tuple, o)) for o in enc["offset_mapping"]]
        self.rows = [
            {"input_ids": ids, "attention_mask": mask, "labels": tag_tokens(examples[i], off, label_ids)}
            for ids, mask, i, off in zip(enc["input_ids"], enc["attention_mask"], self.example_of, self.offsets)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def fields(self, row_tags: list[list[str]]) -> list[dict[str, str]]:
        """Each example's predicted fields from its rows' tags: where windows overlap, a token takes the tag of the
        window it is most central in (the most context on both sides), then spans are decoded over the whole text
        and each field keeps its first."""
        best: list[dict] = [{} for _ in self.examples]  # per example: (start, end) -> (context, tag)
        for i, tags in enumerate(row_tags):
            real = [j for j, (start, end) in enumerate(self.offsets[i]) if start != end]
            for j, tag in zip(real, (tags[j] for j in real)):
                context = min(j - real[0], real[-1] - j)
                token = best[self.example_of[i]]
                if context >= token.get(self.offsets[i][j], (-1, ""))[0]:
                    token[self.offsets[i][j]] = (context, tag)
        fields = []
        for example, token in zip(self.examples, best):
            offsets = sorted(token)
            spans = decode_spans(example.text, offsets, [token[o][1] for o in offsets], self.cross_lines)
            fields.append(first_of_each_field(example.text, spans))
        return fields


def label_space(train_examples: list[FieldsExample]) -> tuple[list[str], dict[str, int]]:
    """BIO labels of the fields of the train data: what the model's head is built with."""
    labels = bio_labels(field_schema(train_examples))
    return labels, {label: i for i, label in enumerate(labels)}


def base_model(config: TrialConfig, labels: list[str], label_ids: dict[str, int]):
    return hf_loop.load_base(
        AutoModelForTokenClassification, config, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id=label_ids,
    )


def train(config: TrialConfig, reporter: Reporter) -> TrialOutcome:
    started = time.perf_counter()
    train_examples = config.data.read("train")
    holdout_examples = config.data.read("holdout")
    labels, label_ids = label_space(train_examples)
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    tagged = [as_tagged(e) for e in train_examples]
    cross = crosses_lines(tagged)
    train_data = TaggingData(tokenizer, tagged, label_ids, config.max_seq_length, cross)
    holdout_data = TaggingData(tokenizer, [as_tagged(e) for e in holdout_examples], label_ids, config.max_seq_length,
                               cross)
    tokenize_s = time.perf_counter() - started

    def compute_metrics(eval_pred):
        rows = zip(eval_pred.predictions, holdout_data.offsets)  # predictions are padded with -100: cut first
        predicted = holdout_data.fields([[labels[int(t)] for t in row[: len(off)]] for row, off in rows])
        return field_f1([e.fields() for e in holdout_examples], predicted)

    prepared = hf_loop.Prepared(
        model_factory=lambda: base_model(config, labels, label_ids),
        train_dataset=train_data,
        eval_dataset=holdout_data,
        collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=compute_metrics,
        preprocess_logits=lambda logits, _labels: torch.argmax(logits, dim=-1),
        lora_task_type=TaskType.TOKEN_CLS,
        timings={"time_tokenize_s": round(tokenize_s, 4)},
    )
    return hf_loop.run(config, reporter, prepared)


def predict(config: TrialConfig, adapter_dir: str, examples: list[FieldsExample]) -> list[dict]:
    """Per example: gold and predicted fields, summed token loss and labelled tokens (no Ray, no Trainer)."""
    train_examples = config.data.read("train")
    labels, label_ids = label_space(train_examples)
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    cross = crosses_lines([as_tagged(e) for e in train_examples])
    data = TaggingData(tokenizer, [as_tagged(e) for e in examples], label_ids, config.max_seq_length, cross)
    model = hf_loop.load_adapter(lambda: base_model(config, labels, label_ids), adapter_dir, config)
    collate = DataCollatorForTokenClassification(tokenizer)
    device = next(model.parameters()).device
    row_tags, losses = [], [[0.0, 0] for _ in examples]
    for start, rows in hf_loop.batches(data.rows):
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        row_tags += [[labels[t] for t in tags] for tags in logits.argmax(-1).tolist()]
        for i, (loss, tokens) in enumerate(hf_loop.example_losses(logits, batch["labels"]), start=start):
            losses[data.example_of[i]][0] += loss
            losses[data.example_of[i]][1] += tokens
    return [{"gold": example.fields(), "predicted": predicted, "loss": loss, "tokens": tokens}
            for example, predicted, (loss, tokens) in zip(examples, data.fields(row_tags), losses)]


def score(records: list[dict]) -> dict[str, float]:
    """The task's metrics over any list of `predict` records (a bootstrap resample included)."""
    return {**field_f1([r["gold"] for r in records], [r["predicted"] for r in records]),
            "eval_loss": pooled_loss(records)}
