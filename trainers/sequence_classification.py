"""LoRA sequence classification: one label per text (intents, document types), scored by accuracy and macro F1.

The label set is the sorted labels of the train file. A holdout label train lacks is refused by the data
audit before any sweep; when the user allows it (`--allow unseen-label`), it gets an output the model never
learns, so its rows count as misses instead of failing every trial. `predict` + `score` re-evaluate a
trained adapter per example (promotion bootstraps over them).
"""

from __future__ import annotations

import time

import torch
from peft import TaskType
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from sweeper.datasets import LabeledExample
from trainers import hf_loop
from trainers.base import Reporter, TrialConfig, TrialOutcome
from trainers.metrics import classification_metrics, pooled_loss


def label_set(train: list[LabeledExample], holdout: list[LabeledExample]) -> list[str]:
    """Train labels (sorted), then any holdout label train lacks (allowed by the audit; never learned)."""
    labels = sorted({e.label for e in train})
    return labels + sorted({e.label for e in holdout} - set(labels))


class ClassificationData:
    def __init__(self, tokenizer, examples: list[LabeledExample], label_ids: dict[str, int], max_length: int):
        enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
        self.rows = [
            {"input_ids": ids, "attention_mask": mask, "labels": label_ids.get(ex.label, hf_loop.IGNORE)}
            for ids, mask, ex in zip(enc["input_ids"], enc["attention_mask"], examples)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def base_model(config: TrialConfig, labels: list[str]):
    return hf_loop.load_base(
        AutoModelForSequenceClassification, config, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


def train(config: TrialConfig, reporter: Reporter) -> TrialOutcome:
    started = time.perf_counter()
    train_examples = config.data.read("train")
    holdout_examples = config.data.read("holdout")
    labels = label_set(train_examples, holdout_examples)
    label_ids = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    train_data = ClassificationData(tokenizer, train_examples, label_ids, config.max_seq_length)
    holdout_data = ClassificationData(tokenizer, holdout_examples, label_ids, config.max_seq_length)
    tokenize_s = time.perf_counter() - started

    def compute_metrics(eval_pred):
        gold = [int(x) for x in eval_pred.label_ids]
        predicted = [int(x) for x in eval_pred.predictions]
        return classification_metrics(gold, predicted)

    prepared = hf_loop.Prepared(
        model_factory=lambda: base_model(config, labels),
        train_dataset=train_data,
        eval_dataset=holdout_data,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        preprocess_logits=lambda logits, _labels: torch.argmax(logits, dim=-1),
        lora_task_type=TaskType.SEQ_CLS,
        timings={"time_tokenize_s": round(tokenize_s, 4)},
    )
    return hf_loop.run(config, reporter, prepared)


def predict(config: TrialConfig, adapter_dir: str, examples: list[LabeledExample]) -> list[dict]:
    """Per example: gold and predicted label, loss (a label the model has no output for carries none)."""
    labels = label_set(config.data.read("train"), config.data.read("holdout"))
    label_ids = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    data = ClassificationData(tokenizer, examples, label_ids, config.max_seq_length)
    model = hf_loop.load_adapter(lambda: base_model(config, labels), adapter_dir, config)
    collate = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    records = []
    for start, rows in hf_loop.batches(data.rows):
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses = hf_loop.example_losses(logits, batch["labels"])
        for i, predicted, (loss, tokens) in zip(range(start, start + len(rows)), logits.argmax(-1).tolist(), losses):
            records.append({"gold": examples[i].label, "predicted": labels[predicted], "loss": loss, "tokens": tokens})
    return records


def score(records: list[dict]) -> dict[str, float]:
    """The task's metrics over any list of `predict` records (a bootstrap resample included)."""
    return {**classification_metrics([r["gold"] for r in records], [r["predicted"] for r in records]),
            "eval_loss": pooled_loss(records)}
