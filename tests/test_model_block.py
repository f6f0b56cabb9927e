"""The spec's `model:` block: its defaults, the forms older specs wrote, the refusals at validate time, the stored
spec of version 1, the dtype and quantization each device gets, and the worker's own refusals (CUDA paths skipped
without a GPU)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import yaml
from helpers import EXAMPLES, small_spec, synthetic_spec

from sweeper.spec import SCHEMA_VERSION, SpecError, load_spec, parse_spec, spec_from_store, stored_spec
from sweeper.trial_config import trial_config
from trainers.base_model import check_quantization, load_base, machine_dtype, resolve_dtype

QUICKSTART = yaml.safe_load((EXAMPLES / "restaurant8k-minilm.yaml").read_text())
CUDA = torch.cuda.is_available()
NEEDS_CUDA = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the loading paths of bf16/fp16 and 4-bit")


def quickstart(**changes) -> dict:
    """The quickstart spec in the form before the model block (`model: minilm-l6`, `data.max_seq_length`)."""
    raw = copy.deepcopy(QUICKSTART)
    raw["model"], raw["data"]["max_seq_length"] = "minilm-l6", 48
    raw.update(changes)
    return raw


def with_model(**block) -> dict:
    raw = quickstart(model={"path": "minilm-l6", **block})
    del raw["data"]["max_seq_length"]
    return raw


def errors_of(raw: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, EXAMPLES)
    return dict(info.value.errors)


# -- the dtype and the quantization each device gets -----------------------------------------------------------
@pytest.mark.parametrize("setting, cuda, bf16", list(itertools.product(
    ["auto", "bfloat16", "float16", "float32"], [False, True], [False, True])))
def test_resolve_dtype_for_every_device(setting, cuda, bf16):
    expected = {
        "auto": "float32" if not cuda else "bfloat16" if bf16 else "float16",
        "bfloat16": None if cuda and not bf16 else "bfloat16",  # a GPU without bf16 refuses it
        "float16": "float16" if cuda else None,  # the fp16 loss scaler needs CUDA
        "float32": "float32",
    }[setting]
    if expected is None:
        with pytest.raises(ValueError, match=f"model.dtype: {'float16' if setting == 'float16' else 'this GPU'}"):
            resolve_dtype(setting, cuda, bf16)
    else:
        assert resolve_dtype(setting, cuda, bf16) == expected


@pytest.mark.parametrize("cuda, installed", list(itertools.product([False, True], [False, True])))
def test_4bit_needs_cuda_and_bitsandbytes(cuda, installed):
    check_quantization("none", cuda, installed)  # never refused
    if cuda and installed:
        check_quantization("4bit", cuda, installed)
        return
    with pytest.raises(ValueError, match="model.quantization: 4bit") as info:
        check_quantization("4bit", cuda, installed)
    assert ("CUDA GPU" if not cuda else "bitsandbytes") in str(info.value)


def test_this_machine_gets_what_resolve_dtype_says():
    bf16 = CUDA and torch.cuda.is_bf16_supported()
    assert machine_dtype("auto") == resolve_dtype("auto", CUDA, bf16)


# -- the block in a spec ----------------------------------------------------------------------------------------
def test_a_plain_model_name_is_the_block_with_its_defaults():
    old, new = parse_spec(quickstart(), EXAMPLES), parse_spec(with_model(max_seq_length=48), EXAMPLES)
    assert old.model == new.model
    assert old.model.model_dump() == {"dtype": "auto", "quantization": "none", "gradient_checkpointing": False,
                                      "target_modules": "auto", "path": "minilm-l6", "max_seq_length": 48}
    assert "max_seq_length" not in old.data.model_dump()  # moved into the block
    assert old.fingerprint() == new.fingerprint()  # one spec, however written
    assert parse_spec(with_model(), EXAMPLES).model.max_seq_length == 128


def test_settings_reach_the_trial_config():
    spec = parse_spec(with_model(dtype="bfloat16", gradient_checkpointing=True, target_modules=["query", "key"],
                                 max_seq_length=40), EXAMPLES)
    params = {"learning_rate": 1e-3, "batch_size": 16, "num_epochs": 1, "lr_scheduler_type": "linear",
              "warmup_ratio": 0.0, "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
    config = trial_config(spec, params, "/models/minilm", "/out")
    assert config.model.model_dump() == {"dtype": "bfloat16", "quantization": "none", "gradient_checkpointing": True,
                                         "target_modules": ["query", "key"]}
    assert (config.model_path, config.max_seq_length) == ("/models/minilm", 40)


@pytest.mark.parametrize("block, path, fragment", [
    ({"dtype": "fp8"}, "model.dtype", "'auto', 'bfloat16', 'float16' or 'float32'"),
    ({"quantization": "8bit"}, "model.quantization", "'none' or '4bit'"),
    ({"target_modules": "all"}, "model.target_modules", "write `auto`"),
    ({"target_modules": []}, "model.target_modules", "write `auto`"),
    ({"gradient_checkpointing": "sometimes"}, "model.gradient_checkpointing", "boolean"),
    ({"max_seq_length": 4}, "model.max_seq_length", "greater than or equal to 8"),
    ({"lora_targets": ["q"]}, "model.lora_targets", "unknown key"),
    ({"path": "/nonexistent/model"}, "model.path", "neither a named model"),
])
def test_each_bad_model_setting_is_reported_with_its_path(block, path, fragment):
    errors = errors_of(with_model(**block))
    assert path in errors, errors
    assert fragment in errors[path]


def test_a_block_without_a_path_is_refused():
    raw = with_model()
    del raw["model"]["path"]
    assert "required" in errors_of(raw)["model.path"]


def test_the_old_place_of_max_seq_length_is_moved_and_its_errors_say_where_it_was_written():
    assert "greater than or equal to 8" in errors_of(quickstart(data={**quickstart()["data"], "max_seq_length": 4}))[
        "data.max_seq_length"]
    both = with_model(max_seq_length=4)
    both["data"]["max_seq_length"] = 32
    errors = errors_of(both)
    assert "moved to model.max_seq_length" in errors["data.max_seq_length"]
    assert "greater than or equal to 8" in errors["model.max_seq_length"]  # where it was written


@pytest.mark.parametrize("block, gpus, path, fragment", [
    ({"quantization": "4bit"}, 0, "model.quantization", "needs a CUDA GPU"),
    ({"dtype": "float16"}, 0, "model.dtype", "needs a CUDA GPU"),
])
def test_settings_the_trials_cannot_run_are_refused_at_validate(block, gpus, path, fragment):
    raw = with_model(**block)
    raw["resources"] = {"gpus": gpus}
    errors = errors_of(raw)
    assert fragment in errors[path] and "resources.gpus" in errors[path]
    raw["resources"] = {"gpus": 0.25}  # a fraction of a GPU is a GPU
    assert parse_spec(raw, EXAMPLES).model.model_dump(include=set(block)) == block


def test_model_settings_on_a_task_without_a_model_are_refused(tmp_path):
    raw = yaml.safe_load(synthetic_spec(tmp_path).read_text())
    raw["model"] = {"path": raw["model"], "quantization": "4bit", "target_modules": ["q_proj"]}
    raw["resources"] = {"gpus": 1}
    with pytest.raises(SpecError) as info:
        parse_spec(raw, tmp_path)
    errors = dict(info.value.errors)
    assert {"model.quantization", "model.target_modules"} == set(errors)
    assert "task synthetic trains no model" in errors["model.quantization"]


# -- the stored spec ---------------------------------------------------------------------------------------------
def test_a_stored_spec_of_version_1_is_read_in_the_new_form(tmp_path):
    spec = load_spec(small_spec(tmp_path))
    stored = stored_spec(spec)
    assert SCHEMA_VERSION == 2 and stored["model"]["path"] == "minilm-l6"
    v1 = copy.deepcopy(stored)  # as sweeper stored it before the model block
    v1["schema_version"], v1["model"] = 1, "minilm-l6"
    v1["data"]["max_seq_length"] = stored["model"]["max_seq_length"]
    again = spec_from_store(v1)
    assert again.model == spec.model and again.fingerprint() == spec.fingerprint()
    v1["model"] = {"path": "minilm-l6", "max_seq_length": 64}
    with pytest.raises(SpecError, match="data.max_seq_length: moved to model.max_seq_length"):
        spec_from_store(v1)


# -- the worker's own refusals and CUDA loading --------------------------------------------------------------------
@pytest.fixture
def tiny_llama(tmp_path) -> str:
    """A 2-layer Llama (SmolLM2's architecture) with random weights, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny-llama")
    return str(tmp_path / "tiny-llama")


def llama_config(path: str, **model):
    from trainers.base import TrialConfig

    return TrialConfig.model_validate(dict(
        task="causal_lm_sft", model_path=path, model=model, seed=0, output_dir="/tmp/unused", max_seq_length=16,
        evals_per_epoch=1, patience=1, min_delta=0.0,
        data={"format": "jsonl", "train": "/unused.jsonl", "holdout": "/unused.jsonl"},
        hparams=dict(learning_rate=1e-3, batch_size=2, num_epochs=1, lr_scheduler_type="constant", warmup_ratio=0.0,
                     weight_decay=0.0, lora_r=4, lora_alpha=8, lora_dropout=0.0)))


@pytest.mark.skipif(CUDA, reason="checks the refusals of a worker without CUDA")
def test_a_worker_without_cuda_refuses_4bit_and_float16_naming_the_field(tiny_llama):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="model.quantization: 4bit .* needs a CUDA GPU"):
        load_base(AutoModelForCausalLM, llama_config(tiny_llama, quantization="4bit"))
    with pytest.raises(ValueError, match="model.dtype: float16"):
        load_base(AutoModelForCausalLM, llama_config(tiny_llama, dtype="float16"))
    model = load_base(AutoModelForCausalLM, llama_config(tiny_llama, dtype="bfloat16", gradient_checkpointing=True))
    assert model.dtype == torch.bfloat16 and model.is_activation_checkpointing  # both run on a CPU too


@NEEDS_CUDA
def test_cuda_loads_in_the_resolved_dtype(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = load_base(AutoModelForCausalLM, llama_config(tiny_llama))
    assert model.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


@NEEDS_CUDA
def test_4bit_loads_nf4_weights_on_the_gpu(tiny_llama):
    pytest.importorskip("bitsandbytes", reason="4-bit needs bitsandbytes (pip install 'sweeper[gpu]')")
    from transformers import AutoModelForCausalLM

    model = load_base(AutoModelForCausalLM, llama_config(tiny_llama, quantization="4bit"))
    assert getattr(model, "is_loaded_in_4bit", False)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert weight.__class__.__name__ == "Params4bit" and weight.device.type == "cuda"
    assert not any(p.requires_grad for p in model.parameters())  # frozen for QLoRA
