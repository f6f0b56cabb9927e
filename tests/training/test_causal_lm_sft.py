"""Causal LM SFT with SmolLM2: loss only on the response, padding, generation scores, and a tiny real run."""


import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from sweeper.datasets import ExtractionExample, PromptExample, Span, TaggedExample
from trainers.base import ListReporter
from trainers.causal_lm_sft import (
    IGNORE,
    Asking,
    SftData,
    answer_budget,
    as_prompt,
    as_row,
    conversation,
    exact_match,
    extraction_metrics,
    generation_metrics,
    pad_collator,
    parse_fields,
    train,
)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def test_chat_template_prompt_is_masked_and_only_the_answer_turn_is_learned(tokenizer):
    example = PromptExample("Say hello.", "Hello there!")
    row = as_row(*conversation(tokenizer, example), max_length=256)
    prompt, answer = conversation(tokenizer, example)
    n_prompt = len(prompt)
    shown = tokenizer.decode(row["input_ids"][:n_prompt])
    assert shown.startswith("<|im_start|>system") and shown.endswith("<|im_start|>user\nSay hello.<|im_end|>\n"
                                                                      "<|im_start|>assistant\n")  # the whole template
    assert row["labels"][:n_prompt] == [IGNORE] * n_prompt  # system turn, user turn and assistant header: no loss
    learned = row["labels"][n_prompt:]
    assert IGNORE not in learned and learned == row["input_ids"][n_prompt:] == answer
    assert tokenizer.eos_token_id in learned  # the end-of-turn marker: the model learns to stop
    assert tokenizer.decode(learned, skip_special_tokens=True).strip() == "Hello there!"


def test_a_row_whose_answer_does_not_fit_is_refused_not_cut(tokenizer):
    example = PromptExample("Say hello.", "Hello there, how are you doing today?")
    prompt, answer = conversation(tokenizer, example)
    row = as_row(prompt, answer, max_length=len(prompt) + 2)  # predict's rows may be cut: aligned
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) == len(prompt) + 2
    assert row["labels"][len(prompt):] == row["input_ids"][len(prompt):]
    with pytest.raises(ValueError, match=f"1 row\\(s\\) \\(first: row 1\\) do not fit in max_seq_length="
                                         f"{len(prompt) + 2} .*\\(the longest needs {len(prompt) + len(answer)}\\)"):
        SftData([(prompt, answer)], len(prompt) + 2, "holdout.jsonl")


def test_collator_pads_right_with_ignored_labels():
    collate = pad_collator(pad_id=2)
    batch = collate([
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [8]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_rows_with_fields_ask_for_every_schema_field_and_answer_in_json_with_nulls():
    schema = ["date", "people", "time"]
    tagged = as_prompt(TaggedExample("Table for 4 at 7pm", (Span("time", 15, 18), Span("people", 10, 11))), schema, None)
    assert "date, people, time" in tagged.prompt and tagged.prompt.endswith("Text:\nTable for 4 at 7pm")
    assert tagged.response == '{"date":null,"people":"4","time":"7pm"}'
    row = ExtractionExample("Ship 12.5 kg to Zoë", (("weight_kg", 12.5), ("consignee", "Zoë"), ("ref", None)))
    asked = as_prompt(row, ["consignee", "ref", "weight_kg"], "Fields {fields} of:\n{text}")
    assert asked.prompt == "Fields consignee, ref, weight_kg of:\nShip 12.5 kg to Zoë"
    assert asked.response == '{"consignee":"Zoë","ref":null,"weight_kg":12.5}'  # JSON types kept, no escapes


def test_answer_budget_is_the_longest_train_answer_and_a_margin_unless_set(tokenizer):
    rows = [PromptExample("q", "short"), PromptExample("q", "a much longer answer " * 8)]
    pairs = [conversation(tokenizer, row) for row in rows]
    longest = len(pairs[1][1])
    assert answer_budget(pairs, None) == longest + max(8, longest // 4)
    assert answer_budget(pairs, 7) == 7


def test_parse_and_score_generated_json():
    assert parse_fields(' {"people": 4} ') == {"people": 4}
    assert parse_fields('```json\n{"people": "4", "date": null}\n```') == {"people": "4"}  # first object, no nulls
    assert parse_fields('{"people": "4"') is None and parse_fields("[1, 2]") is None
    gold = [{"people": "4", "time": "7pm"}, {"date": "today"}]
    answers = ['{"people":4,"time":"8pm"}', "not json"]
    scores = extraction_metrics(gold, answers)
    # tp=1 (people, 4 = "4"), fp=1 (time 8pm), fn=2 (time 7pm, date) -> F1 = 2/5; 1 of 2 answers is JSON
    assert scores["f1_micro"] == pytest.approx(2 / 5)
    assert scores["json_valid_rate"] == pytest.approx(1 / 2)
    assert exact_match(["a  b", "c"], [" a b\n", "d"]) == {"exact_match": 1 / 2}


def test_generation_hook_restores_train_mode_and_scores_jsonl(tokenizer, smollm2_path):
    holdout = [PromptExample("Reply with the single word: yes", "yes")]
    asking = Asking([], max_new_tokens=4)
    assert generation_metrics(tokenizer, asking, holdout, 0) is None  # generation_eval_examples=0 skips decoding
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    model.train()
    scores = generation_metrics(tokenizer, asking, holdout, 1)(model)
    assert model.training
    assert set(scores) == {"exact_match"} and scores["exact_match"] in (0.0, 1.0)
    assert all(p.grad is None for p in model.parameters())  # decoding ran without autograd


@pytest.mark.slow  # SmolLM2 training (~25 s on 2 cores): CI runs it, the fast tier does not
def test_short_run_lowers_eval_loss_and_scores_generated_json(make_config, smollm2_path, restaurant8k_tiny):
    config = make_config(
        "causal_lm_sft", smollm2_path, restaurant8k_tiny,
        batch_size=8, num_epochs=1, evals_per_epoch=2, learning_rate=1e-3, max_seq_length=160,
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
