"""LoRA sequence classification: one label per text (intents, document types), scored by accuracy and macro F1.

The label set is the sorted labels of the train file; a holdout label the model never saw cannot be
predicted, so it is refused before training instead of silently lowering every score.
"""

from __future__ import annotations

import time

import torch
from peft import TaskType
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from sweeper.datasets import LabeledExample, read_examples
from trainers import hf_loop
from trainers.base import Reporter, TrialConfig, TrialOutcome
from trainers.metrics import classification_metrics


def label_set(train: list[LabeledExample], holdout: list[LabeledExample], holdout_path: str) -> list[str]:
    labels = sorted({e.label for e in train})
    unseen = sorted({e.label for e in holdout} - set(labels))
    if unseen:
        raise ValueError(f"{holdout_path}: holdout label(s) not in the train data: {', '.join(map(repr, unseen))}")
    return labels


class ClassificationData:
    def __init__(self, tokenizer, examples: list[LabeledExample], label_ids: dict[str, int], max_length: int):
        enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
        self.rows = [
            {"input_ids": ids, "attention_mask": mask, "labels": label_ids[ex.label]}
            for ids, mask, ex in zip(enc["input_ids"], enc["attention_mask"], examples)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def train(config: TrialConfig, reporter: Reporter) -> TrialOutcome:
    started = time.perf_counter()
    train_examples = read_examples(config.data.train, config.data.format)
    holdout_examples = read_examples(config.data.holdout, config.data.format)
    labels = label_set(train_examples, holdout_examples, config.data.holdout)
    label_ids = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    train_data = ClassificationData(tokenizer, train_examples, label_ids, config.max_seq_length)
    holdout_data = ClassificationData(tokenizer, holdout_examples, label_ids, config.max_seq_length)
    tokenize_s = time.perf_counter() - started

    def compute_metrics(eval_pred):
        gold = [int(x) for x in eval_pred.label_ids]
        predicted = [int(x) for x in eval_pred.predictions]
        return classification_metrics(gold, predicted, len(labels))

    prepared = hf_loop.Prepared(
        model_factory=lambda: AutoModelForSequenceClassification.from_pretrained(
            config.model_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id=label_ids,
        ),
        train_dataset=train_data,
        eval_dataset=holdout_data,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        preprocess_logits=lambda logits, _labels: torch.argmax(logits, dim=-1),
        lora_task_type=TaskType.SEQ_CLS,
        timings={"time_tokenize_s": round(tokenize_s, 4)},
    )
    return hf_loop.run(config, reporter, prepared)
