"""Loading a trial's base model as the spec's `model:` block says: dtype, 4-bit quantization, gradient
checkpointing, and the modules LoRA adapts.

Every trainer loads its base model through `load_base` (training, and prediction for promotion), so the settings
apply the same way to every task. A setting this machine cannot run is refused naming the spec field it came
from, rather than failing somewhere inside transformers, peft or bitsandbytes.
"""

from __future__ import annotations

import importlib.util

import torch

from trainers.base import ModelSettings, TrialConfig

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(setting: str, cuda_available: bool, bf16_supported: bool) -> str:
    """The dtype a trial trains in: `auto` is bf16 where the CUDA device supports it, fp16 on other CUDA devices
    (with a loss scaler), fp32 on CPU, where half precision brings no speed. An explicit setting the device
    cannot run is refused."""
    if setting == "auto":
        if not cuda_available:
            return "float32"
        return "bfloat16" if bf16_supported else "float16"
    if setting == "float16" and not cuda_available:
        raise ValueError("model.dtype: float16 trains with a loss scaler that needs a CUDA GPU, and this worker has "
                         "none; use auto (float32 on CPU), float32 or bfloat16")
    if setting == "bfloat16" and cuda_available and not bf16_supported:
        raise ValueError("model.dtype: this GPU does not support bfloat16; use auto (float16 here) or float16")
    return setting


def machine_dtype(setting: str) -> str:
    """`resolve_dtype` on this machine."""
    cuda = torch.cuda.is_available()
    return resolve_dtype(setting, cuda, cuda and torch.cuda.is_bf16_supported())


def check_quantization(setting: str, cuda_available: bool, bitsandbytes_installed: bool) -> None:
    """Refuse 4-bit where it cannot run: bitsandbytes' NF4 kernels need CUDA."""
    if setting == "none":
        return
    if not cuda_available:
        raise ValueError("model.quantization: 4bit (NF4 QLoRA through bitsandbytes) needs a CUDA GPU and this worker "
                         "has none; give trials resources.gpus, or set quantization: none")
    if not bitsandbytes_installed:
        raise ValueError("model.quantization: 4bit needs the bitsandbytes package on the workers (pip install "
                         "'sweeper[gpu]'), or set quantization: none")


def load_base(auto_cls, config: TrialConfig, **kwargs) -> torch.nn.Module:
    """`auto_cls.from_pretrained(config.model_path, **kwargs)` in the trial's dtype, quantized to 4 bits and with
    gradient checkpointing when its model settings say so."""
    settings = config.model
    dtype = DTYPES[machine_dtype(settings.dtype)]
    check_quantization(settings.quantization, torch.cuda.is_available(), _bitsandbytes_installed())
    if settings.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # weights are quantized as they land on the GPU
    # Always explicit: transformers 5 otherwise loads in the checkpoint's own dtype, which varies by model.
    model = auto_cls.from_pretrained(config.model_path, dtype=dtype, **kwargs)
    # Non-reentrant checkpointing needs no input that requires grad, which frozen LoRA bases lack.
    checkpointing = {"use_reentrant": False}
    if settings.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        # Freezes the base, upcasts the layers it keeps in 16 bits (norms, head) to fp32 for stable training.
        model = prepare_model_for_kbit_training(model, settings.gradient_checkpointing, checkpointing)
    elif settings.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    return model


def _bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check_target_modules(model: torch.nn.Module, settings: ModelSettings) -> None:
    """Refuse, naming model.target_modules, LoRA targets PEFT would not find in this model (it would say only
    'Target modules not found' or 'Please specify target_modules')."""
    model_type = getattr(model.config, "model_type", "?")
    if settings.target_modules == "auto":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        if model_type not in PEFT_DEFAULTS:
            raise ValueError(f"model.target_modules: PEFT has no default for model_type {model_type!r}; list the "
                             f"modules to adapt, e.g. some of its linear layers: {', '.join(linear_layers(model))}")
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in settings.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"model.target_modules: {', '.join(missing)}: no such module in this {model_type} model; "
                         f"its linear layers are {', '.join(linear_layers(model))}")


def linear_layers(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers: what a target list names (bitsandbytes' 4-bit
    layers are nn.Linear too)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})
