"""Does TRL's SFTTrainer encode extraction rows as trainers/causal_lm_sft.py does? (Why sweeper keeps its own.)

TRL is not a dependency of sweeper; install it beside the project to run this:

    .venv/bin/pip install --target /tmp/trl trl datasets dill multiprocess xxhash --no-deps
    PYTHONPATH=/tmp/trl:. HF_HUB_OFFLINE=1 .venv/bin/python bench/trl_equivalence.py --rows 64

It feeds the same rows (examples/data/bookings, SmolLM2's chat template) to TRL's prompt-completion path with
`completion_only_loss=True` and to sweeper's `conversation`, and compares token ids and loss labels row by row;
then gives TRL one row whose answer does not fit in `max_length` and reports what it did with it.
"""

from __future__ import annotations

import argparse
import json
from datetime import date

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from sweeper.datasets import PromptExample, field_schema, read_examples
from trainers.causal_lm_sft import IGNORE, as_prompt, conversation
from trainers.models import resolve_model


def trl_rows(model, tokenizer, prompts: list[PromptExample], max_length: int):
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}],
                               "completion": [{"role": "assistant", "content": p.response}]} for p in prompts])
    args = SFTConfig(output_dir="/tmp/trl-equivalence", completion_only_loss=True, max_length=max_length,
                     report_to="none", use_cpu=True)
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=192)
    args = parser.parse_args()
    path = resolve_model("smollm2-135m")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    examples = read_examples("examples/data/bookings/train.jsonl", "extraction")[: args.rows]
    prompts = [as_prompt(e, field_schema(examples), None) for e in examples]
    encoded = trl_rows(model, tokenizer, prompts, args.max_length)
    same_ids = same_labels = 0
    for prompt, row in zip(prompts, encoded):
        ours_prompt, ours_answer = conversation(tokenizer, prompt)
        same_ids += row["input_ids"] == ours_prompt + ours_answer
        same_labels += row["labels"] == [IGNORE] * len(ours_prompt) + ours_answer
    too_long = PromptExample("word " * 400 + prompts[0].prompt, prompts[0].response)
    kept = len(trl_rows(model, tokenizer, [too_long] + prompts[:3], args.max_length))
    print(json.dumps({"date": str(date.today()), "rows": len(prompts), "same_input_ids": same_ids,
                      "same_loss_labels": same_labels, "rows_given_with_one_too_long": 4, "rows_trl_kept": kept}))


if __name__ == "__main__":
    main()
