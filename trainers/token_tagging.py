"""LoRA token tagging: extract fields (slots) from text, scored by per-field F1.

Character spans become BIO tags on sub-word tokens (through the tokenizer's offset mapping); predicted
tags become character spans again, and their text is compared with the gold values per field.
`predict` loads a trained adapter and returns per-example records; `score` turns any list of them into the
metrics, so promotion can bootstrap over examples.
"""

from __future__ import annotations

import time

import torch
from peft import TaskType
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

from sweeper.datasets import TaggedExample
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


def decode_fields(text: str, offsets: list[tuple[int, int]], tags: list[str]) -> dict[str, str]:
    """Turn token tags back into {field: text}; a field predicted twice keeps its first span."""
    spans: list[list] = []
    for (start, end), tag in zip(offsets, tags):
        if start == end or tag == "O":
            continue
        prefix, name = tag.split("-", 1)
        if prefix == "I" and spans and spans[-1][0] == name:
            spans[-1][2] = end
        else:
            spans.append([name, start, end])
    fields: dict[str, str] = {}
    for name, start, end in spans:
        fields.setdefault(name, text[start:end])
    return fields


class TaggingData:
    def __init__(self, tokenizer, examples: list[TaggedExample], label_ids: dict[str, int], max_length: int):
        self.examples = examples
        enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length, return_offsets_mapping=True)
        self.offsets = [list(map(tuple, o)) for o in enc["offset_mapping"]]
        self.rows = [
            {"input_ids": ids, "attention_mask": mask, "labels": tag_tokens(ex, off, label_ids)}
            for ids, mask, ex, off in zip(enc["input_ids"], enc["attention_mask"], examples, self.offsets)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def label_space(train_examples: list[TaggedExample]) -> tuple[list[str], dict[str, int]]:
    """BIO labels of the fields in the train data: what the model's head is built with."""
    labels = bio_labels(sorted({s.field for e in train_examples for s in e.spans}))
    return labels, {label: i for i, label in enumerate(labels)}


def base_model(config: TrialConfig, labels: list[str], label_ids: dict[str, int]):
    return AutoModelForTokenClassification.from_pretrained(
        config.model_path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids
    )


def train(config: TrialConfig, reporter: Reporter) -> TrialOutcome:
    started = time.perf_counter()
    train_examples = config.data.read("train")
    holdout_examples = config.data.read("holdout")
    labels, label_ids = label_space(train_examples)
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    train_data = TaggingData(tokenizer, train_examples, label_ids, config.max_seq_length)
    holdout_data = TaggingData(tokenizer, holdout_examples, label_ids, config.max_seq_length)
    tokenize_s = time.perf_counter() - started

    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions
        pred_fields = [
            decode_fields(ex.text, off, [labels[int(t)] for t in row[: len(off)]])
            for ex, off, row in zip(holdout_examples, holdout_data.offsets, predictions)
        ]
        return field_f1([e.fields() for e in holdout_examples], pred_fields)

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


def predict(config: TrialConfig, adapter_dir: str, examples: list[TaggedExample]) -> list[dict]:
    """Per example: gold and predicted fields, summed token loss and labelled tokens (no Ray, no Trainer)."""
    labels, label_ids = label_space(config.data.read("train"))
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    data = TaggingData(tokenizer, examples, label_ids, config.max_seq_length)
    model = hf_loop.load_adapter(lambda: base_model(config, labels, label_ids), adapter_dir, config)
    collate = DataCollatorForTokenClassification(tokenizer)
    device = next(model.parameters()).device
    records = []
    for start, rows in hf_loop.batches(data.rows):
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses = hf_loop.example_losses(logits, batch["labels"])
        for i, tags, (loss, tokens) in zip(range(start, start + len(rows)), logits.argmax(-1).tolist(), losses):
            offsets = data.offsets[i]
            predicted = decode_fields(examples[i].text, offsets, [labels[t] for t in tags[: len(offsets)]])
            records.append({"gold": examples[i].fields(), "predicted": predicted, "loss": loss, "tokens": tokens})
    return records


def score(records: list[dict]) -> dict[str, float]:
    """The task's metrics over any list of `predict` records (a bootstrap resample included)."""
    return {**field_f1([r["gold"] for r in records], [r["predicted"] for r in records]),
            "eval_loss": pooled_loss(records)}
