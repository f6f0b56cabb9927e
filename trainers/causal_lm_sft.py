"""LoRA supervised fine-tuning of a decoder (causal LM): learn to write the response to a prompt.

The loss is on the response tokens only (prompt and padding are labelled -100), so the model is not
trained to reproduce its instructions. Each round also greedy-decodes a few holdout prompts: field
extraction (restaurant8k) is scored by per-field F1 of the generated JSON, free text (jsonl) by exact match.
`predict` decodes every given example with a trained adapter (greedy) and keeps its response loss;
`score` turns any list of those records into the metrics, so promotion can bootstrap over examples.
"""

from __future__ import annotations

import json
import time

import torch
from peft import TaskType
from transformers import AutoModelForCausalLM, AutoTokenizer

from sweeper.datasets import PromptExample, TaggedExample
from trainers import hf_loop
from trainers.base import Reporter, TrialConfig, TrialOutcome
from trainers.metrics import field_f1, pooled_loss

IGNORE = hf_loop.IGNORE
EXTRACT_PROMPT = (
    "Extract the booking fields (date, time, people, first_name, last_name) from the message as JSON.\nMessage: {text}"
)
MAX_NEW_TOKENS = 48
GENERATION_BATCH = 16  # bounds memory of the decoding cache


def as_prompt(example: TaggedExample | PromptExample) -> PromptExample:
    """A tagged example becomes an extraction instruction answered by compact, key-sorted JSON."""
    if isinstance(example, PromptExample):
        return example
    response = json.dumps(example.fields(), sort_keys=True, separators=(",", ":"))
    return PromptExample(EXTRACT_PROMPT.format(text=example.text), response)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The tokens the model sees before it answers: the chat template's user turn when the model has one."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template already holds the specials
    return tokenizer(prompt + "\n")["input_ids"]


def encode(tokenizer, example: PromptExample, max_length: int) -> dict[str, list[int]]:
    prompt = prompt_ids(tokenizer, example.prompt)
    response = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt + response)[:max_length]
    labels = ([IGNORE] * len(prompt) + response)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


class SftData:
    def __init__(self, tokenizer, examples: list[PromptExample], max_length: int, path: str):
        self.rows = [encode(tokenizer, e, max_length) for e in examples]
        cut = [i for i, row in enumerate(self.rows) if all(label == IGNORE for label in row["labels"])]
        if cut:  # such a row has no loss at all; a batch of them would make the loss NaN
            raise ValueError(
                f"{path}: max_seq_length={max_length} leaves no response token in {len(cut)} row(s) "
                f"(first: row {cut[0]}); raise max_seq_length or shorten the prompts"
            )

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def pad_collator(pad_id: int):
    """Right-pads input_ids / attention_mask / labels of a batch to its longest row."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
        return {
            key: torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows]) for key, value in fill.items()
        }

    return collate


def generate(model, tokenizer, prompts: list[list[int]]) -> list[str]:
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
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return answers


def parse_fields(text: str) -> dict[str, str] | None:
    """The generated JSON object as {field: text}, or None when it is not a JSON object."""
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def extraction_metrics(gold: list[dict[str, str]], answers: list[str]) -> dict[str, float]:
    parsed = [parse_fields(a) for a in answers]
    scores = field_f1(gold, [p or {} for p in parsed])
    return {**scores, "json_valid_rate": sum(p is not None for p in parsed) / len(parsed)}


def exact_match(gold: list[str], answers: list[str]) -> dict[str, float]:
    same = [" ".join(g.split()) == " ".join(a.split()) for g, a in zip(gold, answers, strict=True)]
    return {"exact_match": sum(same) / len(same)}


def generation_metrics(tokenizer, holdout: list, count: int):
    """The loop's per-round hook: decode the first `count` holdout rows and score them."""
    rows = holdout[:count]
    if not rows:
        return None
    prompts = [prompt_ids(tokenizer, as_prompt(e).prompt) for e in rows]

    def score(model) -> dict[str, float]:
        model.eval()  # no dropout while decoding; the Trainer expects train mode back
        try:
            with torch.no_grad():
                answers = generate(model, tokenizer, prompts)
        finally:
            model.train()
        if isinstance(rows[0], TaggedExample):
            return extraction_metrics([e.fields() for e in rows], answers)
        return exact_match([e.response for e in rows], answers)

    return score


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
    train_data = SftData(tokenizer, [as_prompt(e) for e in train_examples], config.max_seq_length, config.data.train)
    holdout_data = SftData(
        tokenizer, [as_prompt(e) for e in holdout_examples], config.max_seq_length, config.data.holdout
    )
    tokenize_s = time.perf_counter() - started

    prepared = hf_loop.Prepared(
        model_factory=lambda: AutoModelForCausalLM.from_pretrained(config.model_path),
        train_dataset=train_data,
        eval_dataset=holdout_data,
        collator=pad_collator(tokenizer.pad_token_id),
        compute_metrics=None,  # eval_loss comes from the Trainer; generation scores from extra_metrics
        lora_task_type=TaskType.CAUSAL_LM,
        extra_metrics=generation_metrics(tokenizer, holdout_examples, config.generation_eval_examples),
        timings={"time_tokenize_s": round(tokenize_s, 4)},
    )
    return hf_loop.run(config, reporter, prepared)


def predict(config: TrialConfig, adapter_dir: str, examples: list) -> list[dict]:
    """Per example: the gold answer, the greedy answer, and the summed loss of the gold response tokens."""
    tokenizer = load_tokenizer(config)
    prompts = [as_prompt(e) for e in examples]
    rows = [encode(tokenizer, p, config.max_seq_length) for p in prompts]
    model = hf_loop.load_adapter(lambda: AutoModelForCausalLM.from_pretrained(config.model_path), adapter_dir, config)
    collate = pad_collator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    losses = []
    for _, chunk in hf_loop.batches(rows):
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses += hf_loop.example_losses(logits, batch["labels"], shift=True)
    with torch.no_grad():
        answers = generate(model, tokenizer, [prompt_ids(tokenizer, p.prompt) for p in prompts])
    return [{"gold": e.fields() if isinstance(e, TaggedExample) else e.response, "answer": answer,
             "loss": loss, "tokens": tokens} for e, answer, (loss, tokens) in zip(examples, answers, losses)]


def score(records: list[dict]) -> dict[str, float]:
    """The task's metrics over any list of `predict` records (a bootstrap resample included)."""
    gold, answers = [r["gold"] for r in records], [r["answer"] for r in records]
    metrics = extraction_metrics(gold, answers) if isinstance(gold[0], dict) else exact_match(gold, answers)
    return {**metrics, "eval_loss": pooled_loss(records)}
