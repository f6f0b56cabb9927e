"""Causal LM SFT with SmolLM2: loss only on the response, padding, generation scores, and a tiny real run."""


import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from sweeper.datasets import PromptExample, Span, TaggedExample
from trainers.base import ListReporter
from trainers.causal_lm_sft import (
    IGNORE,
    SftData,
    as_prompt,
    encode,
    exact_match,
    extraction_metrics,
    generation_metrics,
    pad_collator,
    parse_fields,
    prompt_ids,
    train,
)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def test_prompt_tokens_are_masked_and_response_tokens_are_not(tokenizer):
    example = PromptExample("Say hello.", "Hello there!")
    row = encode(tokenizer, example, max_length=256)
    n_prompt = len(prompt_ids(tokenizer, example.prompt))
    assert tokenizer.decode(row["input_ids"][:n_prompt]).endswith("<|im_start|>assistant\n")  # chat template used
    assert row["labels"][:n_prompt] == [IGNORE] * n_prompt
    response = row["labels"][n_prompt:]
    assert IGNORE not in response and response == row["input_ids"][n_prompt:]
    assert response[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response, skip_special_tokens=True) == "Hello there!"


def test_truncation_keeps_ids_and_labels_aligned(tokenizer):
    example = PromptExample("Say hello.", "Hello there, how are you doing today?")
    n_prompt = len(prompt_ids(tokenizer, example.prompt))
    row = encode(tokenizer, example, max_length=n_prompt + 2)
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) == n_prompt + 2
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    with pytest.raises(ValueError, match="no response token"):
        SftData(tokenizer, [example], n_prompt, "holdout.jsonl")


def test_collator_pads_right_with_ignored_labels():
    collate = pad_collator(pad_id=2)
    batch = collate([
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [8]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_tagged_example_becomes_instruction_and_sorted_compact_json():
    text = "Table for 4 at 7pm"
    prompt = as_prompt(TaggedExample(text, (Span("time", 15, 18), Span("people", 10, 11))))
    assert prompt.prompt.endswith("from the message as JSON.\nMessage: Table for 4 at 7pm")
    assert prompt.response == '{"people":"4","time":"7pm"}'


def test_parse_and_score_generated_json():
    assert parse_fields(' {"people": 4} ') == {"people": "4"}
    assert parse_fields('{"people": "4"') is None and parse_fields("[1, 2]") is None
    gold = [{"people": "4", "time": "7pm"}, {"date": "today"}]
    answers = ['{"people":"4","time":"8pm"}', "not json"]
    scores = extraction_metrics(gold, answers)
    # tp=1 (people), fp=1 (time 8pm), fn=2 (time 7pm, date) -> F1 = 2/5; 1 of 2 answers is JSON
    assert scores["f1_micro"] == pytest.approx(2 / 5)
    assert scores["json_valid_rate"] == pytest.approx(1 / 2)
    assert exact_match(["a  b", "c"], [" a b\n", "d"]) == {"exact_match": 1 / 2}


def test_generation_hook_restores_train_mode_and_scores_jsonl(tokenizer, smollm2_path):
    holdout = [PromptExample("Reply with the single word: yes", "yes")]
    assert generation_metrics(tokenizer, holdout, 0) is None  # generation_eval_examples=0 skips decoding
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    model.train()
    scores = generation_metrics(tokenizer, holdout, 1)(model)
    assert model.training
    assert set(scores) == {"exact_match"} and scores["exact_match"] in (0.0, 1.0)
    assert all(p.grad is None for p in model.parameters())  # decoding ran without autograd


@pytest.mark.slow  # SmolLM2 training (~25 s on 2 cores): CI runs it, the fast tier does not
def test_short_run_lowers_eval_loss_and_scores_generated_json(make_config, smollm2_path, restaurant8k_tiny):
    config = make_config(
        "causal_lm_sft", smollm2_path, restaurant8k_tiny,
        batch_size=8, num_epochs=1, evals_per_epoch=2, learning_rate=1e-3, max_seq_length=96,
        generation_eval_examples=4,
    )  # 32 rows / batch 8 = 4 steps: 2 rounds of 2 steps (SmolLM2 takes ~2-3 s a step on 2 cores)
    reporter = ListReporter()
    outcome = train(config, reporter)
    metrics = [r.metrics for r in reporter.rounds]
    assert [r.round for r in reporter.rounds] == [1, 2]
    assert metrics[-1]["eval_loss"] < metrics[0]["eval_loss"]
    for m in metrics:
        assert 0.0 <= m["f1_micro"] <= 1.0
        assert m["json_valid_rate"] * 4 in (0, 1, 2, 3, 4)  # 4 decoded rows
    assert max(m["json_valid_rate"] for m in metrics) > 0  # decoding and parsing work end to end
    assert outcome.stop_reason == "completed" and outcome.best_round == 2
