"""What a LoRA worker records with each round: the settings it really ran with (after any out-of-memory halving)
and what they cost; and the modules LoRA adapts, `auto` being PEFT's default for the architecture."""

from __future__ import annotations

import pytest
import torch
from peft import TaskType
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from trainers import hf_loop, sequence_classification
from trainers.base import MEASURED, RAN_WITH, ListReporter


def test_each_round_records_what_ran_and_what_it_cost(make_config, minilm_path, banking77_subset):
    config = make_config("sequence_classification", minilm_path, banking77_subset, num_epochs=1, batch_size=16,
                         max_micro_batch=4, model={"gradient_checkpointing": True})
    reporter = ListReporter()
    sequence_classification.train(config, reporter)
    (record,) = reporter.rounds
    ran = record.bookkeeping
    assert set(RAN_WITH + MEASURED) <= set(ran)
    assert (ran["device"], ran["dtype"], ran["quantization"], ran["gradient_checkpointing"]) == (
        "cpu", "float32", "none", True)
    assert (ran["micro_batch"], ran["gradient_accumulation"]) == (4, 4)  # the effective batch of 16, capped at 4
    arguments = ran["training_arguments"]
    assert (arguments["per_device_train_batch_size"], arguments["gradient_accumulation_steps"]) == (4, 4)
    assert (arguments["bf16"], arguments["fp16"], arguments["activation_checkpointing"]) == (False, False, True)
    assert arguments["output_dir"] == "<output_dir>"  # the worker's temporary folder means nothing elsewhere
    assert ran["lora_config"] == {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0, "target_modules": ["query", "value"]}
    assert ran["peak_memory_kind"] == "max_rss" and ran["peak_memory_mb"] > 100  # torch and MiniLM at least
    assert ran["tokens_per_s"] > 0 and ran["tokens_seen"] > 0


def test_an_out_of_memory_error_halves_the_micro_batch_and_the_record_says_so(make_config, minilm_path,
                                                                                banking77_subset, monkeypatch):
    """A model that runs out of memory above 4 rows a step (a real torch.OutOfMemoryError, raised by a forward
    hook: this machine has no GPU to exhaust): 16 -> 8 -> 4, the effective batch kept."""
    original = sequence_classification.base_model

    def small_memory(*args, **kwargs):
        model = original(*args, **kwargs)

        def refuse_big_batches(module, args, kwargs):
            if module.training and kwargs["input_ids"].shape[0] > 4:
                raise torch.OutOfMemoryError("CUDA out of memory (a test's model that holds 4 rows a step)")

        model.register_forward_pre_hook(refuse_big_batches, with_kwargs=True)
        return model

    monkeypatch.setattr(sequence_classification, "base_model", small_memory)
    config = make_config("sequence_classification", minilm_path, banking77_subset, num_epochs=1, batch_size=16)
    reporter = ListReporter()
    sequence_classification.train(config, reporter)
    (record,) = reporter.rounds
    ran = record.bookkeeping
    assert (ran["micro_batch"], ran["gradient_accumulation"]) == (4, 4)
    assert ran["training_arguments"]["per_device_train_batch_size"] == 4
    assert ran["examples_seen"] == 80  # every row of the epoch, at the sampled effective batch


def lora_for(config, auto_cls, task_type: TaskType, **kwargs):
    prepared = hf_loop.Prepared(model_factory=lambda: hf_loop.load_base(auto_cls, config, **kwargs),
                                train_dataset=None, eval_dataset=None, collator=None, compute_metrics=None,
                                lora_task_type=task_type)
    return hf_loop.lora_model(prepared, config)


@pytest.mark.parametrize("model, auto_cls, task_type, model_type", [
    ("minilm", AutoModelForSequenceClassification, TaskType.SEQ_CLS, "bert"),
    ("smollm2", AutoModelForCausalLM, TaskType.CAUSAL_LM, "llama"),
])
def test_auto_target_modules_are_peft_defaults_for_the_architecture(make_config, restaurant8k_small, request, model,
                                                                    auto_cls, task_type, model_type):
    path = request.getfixturevalue(f"{model}_path")
    config = make_config("causal_lm_sft", path, restaurant8k_small)
    assert config.model.target_modules == "auto" and hf_loop.lora_kwargs(config)["target_modules"] is None
    peft_model = lora_for(config, auto_cls, task_type)
    assert peft_model.config.model_type == model_type
    assert hf_loop.lora_record(peft_model, config)["target_modules"] == sorted(PEFT_DEFAULTS[model_type])


def test_listed_target_modules_are_used_and_unknown_ones_refused_naming_the_field(make_config, minilm_path,
                                                                                  restaurant8k_small):
    listed = make_config("token_tagging", minilm_path, restaurant8k_small, model={"target_modules": ["query", "key"]})
    peft_model = lora_for(listed, AutoModelForSequenceClassification, TaskType.SEQ_CLS, num_labels=3)
    assert hf_loop.lora_record(peft_model, listed)["target_modules"] == ["key", "query"]
    assert all(p.dtype == torch.float32 for p in peft_model.parameters() if p.requires_grad)

    wrong = make_config("token_tagging", minilm_path, restaurant8k_small, model={"target_modules": ["q_proj"]})
    with pytest.raises(ValueError, match=r"model.target_modules: q_proj: no such module in this bert model; its "
                                         r"linear layers are .*query.*value"):
        lora_for(wrong, AutoModelForSequenceClassification, TaskType.SEQ_CLS, num_labels=3)
