"""LoRA supervised fine-tuning of a decoder (causal LM): learn to write the response to a prompt.

Rows with fields (`extraction`, `restaurant8k`) become a request for those fields, answered by one JSON object
that names every field of the train data's schema (null where the text does not give it); the request is
`data.prompt_template` or a default naming the fields. `jsonl` rows carry their own prompt and response. The
conversation is rendered through the model's chat template when it has one, and the loss is on the answer's
tokens only (the prompt, the template around it and padding are labelled -100), so the model is not trained to
reproduce its instructions. Each round also greedy-decodes a few holdout prompts: rows with fields are scored by
per-field F1 of the generated JSON (and the rate of answers that are a JSON object), free text by exact match.
`predict` decodes every given example with a trained adapter (greedy) and keeps its answer's loss;
`score` turns any list of those records into the metrics, so promotion can bootstrap over examples.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch
from peft import TaskType
from transformers import AutoModelForCausalLM, AutoTokenizer

from sweeper.datasets import FIELDS_EXAMPLES, PromptExample, field_schema
from trainers import hf_loop
from trainers.base import Reporter, TrialConfig, TrialOutcome
from trainers.metrics import field_f1, pooled_loss

IGNORE = hf_loop.IGNORE
Pair = tuple[list[int], list[int]]  # a row's (prompt tokens, answer tokens)
DEFAULT_PROMPT = ("Extract these fields from the text: {fields}. Answer with one JSON object with exactly these keys; "
                  "use null for a field the text does not give.\n\nText:\n{text}")
GENERATION_BATCH = 16  # bounds memory of the decoding cache


def has_fields(examples: list) -> bool:
    return bool(examples) and isinstance(examples[0], FIELDS_EXAMPLES)


def as_prompt(example, schema: list[str], template: str | None) -> PromptExample:
    """A row with fields becomes a request for the schema's fields, answered by compact JSON in schema order."""
    if isinstance(example, PromptExample):
        return example
    given = example.fields()
    answer = json.dumps({name: given.get(name) for name in schema}, ensure_ascii=False, separators=(",", ":"))
    request = (template or DEFAULT_PROMPT).replace("{fields}", ", ".join(schema)).replace("{text}", example.text)
    return PromptExample(request, answer, example.text)


def conversation(tokenizer, example: PromptExample) -> Pair:
    """(prompt tokens, answer tokens): what the model reads, and what it must write up to its end of turn.

    With a chat template the answer is the assistant turn as the template renders it (its end-of-turn marker
    included, so the model learns to stop); the prompt is everything before it (system turn, user turn, the
    assistant header)."""
    if tokenizer.chat_template:
        asked = [{"role": "user", "content": example.prompt}]
        prompt = tokenizer.apply_chat_template(asked, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(asked + [{"role": "assistant", "content": example.response}],
                                             tokenize=False)
        if full.startswith(prompt):
            ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
            return ids(prompt), ids(full[len(prompt):])
    prompt_ids = tokenizer(example.prompt + "\n")["input_ids"]
    return prompt_ids, tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def as_row(prompt: list[int], answer: list[int], max_length: int) -> dict[str, list[int]]:
    input_ids = (prompt + answer)[:max_length]
    labels = ([IGNORE] * len(prompt) + answer)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def misfit(pairs: list[Pair], max_length: int, rows: list[str], where: str) -> str | None:
    """Why some (prompt, answer) rows cannot be trained on in `max_length` tokens, or None: a cut answer teaches the
    model to stop mid-JSON, and no answer at all makes the loss NaN."""
    needed = [len(prompt) + len(answer) for prompt, answer in pairs]
    too_long = [i for i, n in enumerate(needed) if n > max_length]
    if not too_long:
        return None
    return (f"{where}: {len(too_long)} row(s) (first: {rows[too_long[0]]}) do not fit in max_seq_length={max_length} "
            f"tokens with their answer (the longest needs {max(needed)}); raise model.max_seq_length or shorten "
            "those texts")


class SftData:
    """Encoded rows; a row whose answer does not fit in `max_length` tokens is refused, not trained on cut."""

    def __init__(self, pairs: list[Pair], max_length: int, path: str):
        problem = misfit(pairs, max_length, [f"row {i + 1}" for i in range(len(pairs))], path)
        if problem:
            raise ValueError(problem)
        self.rows = [as_row(prompt, answer, max_length) for prompt, answer in pairs]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def answer_budget(pairs: list[Pair], setting: int | None) -> int:
    """Tokens a generated answer may take: the spec's `max_new_tokens`, else the longest train answer + a quarter."""
    if setting:
        return setting
    longest = max(len(answer) for _, answer in pairs)
    return longest + max(8, longest // 4)


def pad_collator(pad_id: int):
    """Right-pads input_ids / attention_mask / labels of a batch to its longest row."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
        return {
            key: torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows]) for key, value in fill.items()
        }

    return collate


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy answers to already-tokenized prompts, left-padded so every row continues from its own end."""
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(prompts), GENERATION_BATCH):
        chunk = prompts[start : start + GENERATION_BATCH]
        width = max(map(len, chunk))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return answers


def parse_fields(text: str) -> dict | None:
    """The first JSON object in a generated answer as {field: value}, nulls left out; None when there is none."""
    start = text.find("{")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else (None, 0)
    except json.JSONDecodeError:
        return None
    return {str(k): v for k, v in value.items() if v is not None} if isinstance(value, dict) else None


def extraction_metrics(gold: list[dict], answers: list[str]) -> dict[str, float]:
    parsed = [parse_fields(a) for a in answers]
    scores = field_f1(gold, [p or {} for p in parsed])
    return {**scores, "json_valid_rate": sum(p is not None for p in parsed) / len(parsed)}


def exact_match(gold: list[str], answers: list[str]) -> dict[str, float]:
    same = [" ".join(g.split()) == " ".join(a.split()) for g, a in zip(gold, answers, strict=True)]
    return {"exact_match": sum(same) / len(same)}


@dataclass
class Asking:
    """How a trial's rows become prompts: the train data's field schema, the template and the answer budget."""

    schema: list[str]
    template: str | None = None
    max_new_tokens: int = 64

    @classmethod
    def for_trial(cls, config: TrialConfig, tokenizer, train_examples: list) -> tuple[Asking, list[Pair]]:
        """The trial's way of asking, and the train rows encoded with it (the answer budget is read from them)."""
        asking = cls(field_schema(train_examples) if has_fields(train_examples) else [], config.data.prompt_template)
        train = asking.encode(tokenizer, train_examples)
        asking.max_new_tokens = answer_budget(train, config.max_new_tokens)
        return asking, train

    def prompts(self, examples: list) -> list[PromptExample]:
        return [as_prompt(e, self.schema, self.template) for e in examples]

    def encode(self, tokenizer, examples: list) -> list[Pair]:
        return [conversation(tokenizer, p) for p in self.prompts(examples)]


def gold(example):
    return example.fields() if isinstance(example, FIELDS_EXAMPLES) else example.response


def scores(examples: list, answers: list[str]) -> dict[str, float]:
    gold_answers = [gold(e) for e in examples]
    return extraction_metrics(gold_answers, answers) if has_fields(examples) else exact_match(gold_answers, answers)


def generation_metrics(tokenizer, asking: Asking, holdout: list, count: int):
    """The loop's per-round hook: decode the first `count` holdout rows and score them."""
    rows = holdout[:count]
    if not rows:
        return None
    prompts = [conversation(tokenizer, p)[0] for p in asking.prompts(rows)]

    def score(model) -> dict[str, float]:
        model.eval()  # no dropout while decoding; the Trainer expects train mode back
        try:
            with torch.no_grad():
                answers = generate(model, tokenizer, prompts, asking.max_new_tokens)
        finally:
            model.train()
        return scores(rows, answers)

    return score


def data_problems(model_path: str, max_seq_length: int, prompt_template: str | None, splits: dict) -> list[str]:
    """Splits ({role: DataFile}) with rows that would not fit: the data audit asks before any trial starts."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    asking = Asking(field_schema(splits["train"].examples) if has_fields(splits["train"].examples) else [],
                    prompt_template)
    problems = [misfit(asking.encode(tokenizer, data.examples), max_seq_length, data.rows, f"data.{role}")
                for role, data in splits.items()]
    return [p for p in problems if p]


def load_tokenizer(config: TrialConfig):
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out, so any id will do
    return tokenizer


def train(config: TrialConfig, reporter: Reporter) -> TrialOutcome:
    started = time.perf_counter()
    train_examples = config.data.read("train")
    holdout_examples = config.data.read("holdout")
    tokenizer = load_tokenizer(config)
    asking, train_pairs = Asking.for_trial(config, tokenizer, train_examples)
    train_data = SftData(train_pairs, config.max_seq_length, config.data.train)
    holdout_data = SftData(asking.encode(tokenizer, holdout_examples), config.max_seq_length, config.data.holdout)
    tokenize_s = time.perf_counter() - started

    prepared = hf_loop.Prepared(
        model_factory=lambda: hf_loop.load_base(AutoModelForCausalLM, config),
        train_dataset=train_data,
        eval_dataset=holdout_data,
        collator=pad_collator(tokenizer.pad_token_id),
        compute_metrics=None,  # eval_loss comes from the Trainer; generation scores from extra_metrics
        lora_task_type=TaskType.CAUSAL_LM,
        extra_metrics=generation_metrics(tokenizer, asking, holdout_examples, config.generation_eval_examples),
        timings={"time_tokenize_s": round(tokenize_s, 4)},
    )
    return hf_loop.run(config, reporter, prepared)


def predict(config: TrialConfig, adapter_dir: str, examples: list) -> list[dict]:
    """Per example: the gold answer, the greedy answer, and the summed loss of the gold answer's tokens."""
    tokenizer = load_tokenizer(config)
    asking, _ = Asking.for_trial(config, tokenizer, config.data.read("train"))
    pairs = asking.encode(tokenizer, examples)
    rows = [as_row(prompt, answer, config.max_seq_length) for prompt, answer in pairs]
    model = hf_loop.load_adapter(lambda: hf_loop.load_base(AutoModelForCausalLM, config), adapter_dir, config)
    collate = pad_collator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    losses = []
    for _, chunk in hf_loop.batches(rows):
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses += hf_loop.example_losses(logits, batch["labels"], shift=True)
    with torch.no_grad():
        answers = generate(model, tokenizer, [prompt for prompt, _ in pairs], asking.max_new_tokens)
    return [{"gold": gold(e), "answer": answer, "loss": loss, "tokens": tokens}
            for e, answer, (loss, tokens) in zip(examples, answers, losses)]


def score(records: list[dict]) -> dict[str, float]:
    """The task's metrics over any list of `predict` records (a bootstrap resample included)."""
    golds, answers = [r["gold"] for r in records], [r["answer"] for r in records]
    metrics = extraction_metrics(golds, answers) if isinstance(golds[0], dict) else exact_match(golds, answers)
    return {**metrics, "eval_loss": pooled_loss(records)}
