"""The sweep spec: one YAML file, validated into typed settings before anything runs.

Unknown keys are refused, and every problem is reported at once with its path (`data.train: ...`), so a
user fixes a spec in one pass. Relative data paths are relative to the spec file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

import search_spaces
from search_spaces.space import CategoricalParam, FloatParam, IntParam, SearchSpace
from sweeper.datasets import FORMATS, file_problem
from sweeper.store import safe_url
from sweeper.yaml_safe import describe, load_yaml
from trainers import all_tasks, get_task
from trainers.base import HYPERPARAMETERS, DataFormatName, HyperParams, ModelSettings, Task
from trainers.models import ModelNotFound, architectures, check_model, generates_text

PER_FIELD_GATE = "per_field_f1"  # a gate on every field's F1 at once
UNBOUNDED_METRICS = ("eval_loss",)  # every other metric is a rate in [0, 1]
AUDIT_CODES = ("small-holdout", "overlap", "near-duplicate", "empty-rows", "unseen-label")
PAIRWISE_CODES = ("overlap", "near-duplicate")  # found between two splits: an allowance may name the pair
SPLITS = ("train", "holdout", "test")


def check_allowance(value: str) -> str:
    """An audit code to let through (`near-duplicate`), or a pairwise one for one pair of splits only
    (`near-duplicate:train-test`, written in either order); ValueError naming what is wrong otherwise."""
    code, _, pair = value.partition(":")
    if code not in AUDIT_CODES:
        raise ValueError(f"{value!r} is not an audit code; use one of {', '.join(AUDIT_CODES)} ({' and '.join(PAIRWISE_CODES)} "
                         "may name two splits: near-duplicate:train-test)")
    if not pair:
        return code
    if code not in PAIRWISE_CODES:
        raise ValueError(f"{code} is not found between two splits: write it without ':{pair}'")
    splits = pair.split("-")
    if len(splits) != 2 or splits[0] == splits[1] or not set(splits) <= set(SPLITS):
        raise ValueError(f"{value!r}: name two different splits of {', '.join(SPLITS)}, e.g. {code}:train-test")
    return f"{code}:{'-'.join(sorted(splits, key=SPLITS.index))}"


AllowCode = Annotated[str, AfterValidator(check_allowance)]


class SpecError(ValueError):
    """A spec that cannot run; `errors` lists (path, message) for every problem found."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "spec"):
        self.errors = errors
        lines = "\n".join(f"  {path or '(top level)'}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: {len(errors)} problem(s)\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(ModelSettings):
    """The `model:` block: the base model and how it is loaded and trained (dtype, quantization, gradient
    checkpointing, LoRA targets: trainers.base.ModelSettings). `model: NAME` alone is `model: {path: NAME}`."""

    path: str = Field(description="a bundled model name (trainers/models.py) or a local Hugging Face model folder")
    max_seq_length: int = Field(default=128, ge=8, le=8192, description="tokens per example; longer ones are cut")

    def settings(self) -> ModelSettings:
        """What a trial's config carries of the block (the path travels resolved, the length on its own)."""
        return ModelSettings.model_validate(self.model_dump(include=set(ModelSettings.model_fields)))


class DataSpec(_Strict):
    format: DataFormatName
    train: str
    holdout: str
    test: str | None = None
    prompt_template: str | None = Field(default=None, description="causal_lm_sft on rows with fields: the request, "
                                        "with {text} (the row's text) and optionally {fields} (the field names)")

    @field_validator("prompt_template")
    @classmethod
    def _has_text(cls, value):
        if value is not None and "{text}" not in value:
            raise ValueError("the template must contain {text}, where the row's text goes (and may contain {fields}, "
                             "the field names)")
        return value


class Objective(_Strict):
    metric: str = "eval_loss"
    direction: Literal["minimize", "maximize"] | None = None

    @property
    def mode(self) -> str:
        """Ray Tune's word for the direction; losses are minimised unless the spec says otherwise."""
        direction = self.direction or ("minimize" if self.metric.endswith("loss") else "maximize")
        return "min" if direction == "minimize" else "max"


class Budget(_Strict):
    trials: int = Field(ge=1, le=10_000)
    max_concurrent: int = Field(default=1, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    max_failures: int = Field(default=2, ge=0, description="retries of a failed trial, from its last checkpoint")
    max_compute: float | None = Field(default=None, gt=0, description="stop starting trials once the compute spent "
                                      "and committed by running trials reaches this, in `compute_unit`s")
    compute_unit: Literal["epochs", "tokens"] = Field(default="epochs", description="of max_compute: trial-epochs "
                                                      "(every trial's epochs, summed) or training input tokens")


GROWABLE_BUDGET = ("trials", "max_compute", "time_budget_s")  # a finished sweep may be given more of these


class SearchSettings(_Strict):
    """The `search:` block: how the sweep picks its trials (defaults: what bench/replay.py chose)."""

    sampler: Literal["tpe", "gp", "random", "grid"] = Field(default="tpe", description="tpe: Optuna's TPE; gp: its "
                                                            "Gaussian process (small budgets); random; grid")
    startup_trials: int | None = Field(default=None, ge=0, description="random trials before TPE or GP model the "
                                       "results; unset: a third of budget.trials, at least 2 and at most 10")
    seed: int | None = Field(default=None, ge=0, description="the sampler's seed; unset: the spec's `seed`")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="known configurations tried first, "
                                          "in order (e.g. last quarter's winner); parameters left out are sampled")


class Scheduler(_Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(default=1, ge=1, description="rounds (or training steps, with rung_unit: steps) every "
                                                           "trial gets before ASHA may stop it")
    rung_unit: Literal["rounds", "steps"] = Field(default="rounds", description="what ASHA's rungs count: evaluation "
                                                  "rounds, or optimizer steps (a slow task's first rung stays cheap)")
    rung_metric: Literal["holdout_loss", "objective"] = Field(
        default="holdout_loss", description="what ASHA ranks trials by at a rung: the best holdout loss so far (it "
                                            "ranks early, while F1 is still near 0; bench/RESULTS.md, issue 13), or "
                                            "the best objective so far")
    reduction_factor: float = Field(default=4.0, gt=1, description="ASHA keeps the best 1/reduction_factor of the "
                                    "trials at each rung (4: Ray's and Optuna's default; it won on holdout-loss rungs "
                                    "over 2, bench/RESULTS.md, issue 13)")
    evals_per_epoch: int = Field(default=1, ge=1, le=100)


class EarlyStopping(_Strict):
    patience: int = Field(ge=1, description="rounds without holdout-loss improvement before a trial stops")
    min_delta: float = Field(default=0.0, ge=0)


class Resources(_Strict):
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0, description="whole or fractional GPUs per trial")
    torch_threads: int | None = Field(default=None, ge=1)
    max_micro_batch: int | None = Field(default=None, ge=1)


class Storage(_Strict):
    root: str = Field(default=".sweeper", description="local folder for the SQLite store, exports and W&B runs")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SWEEPER_DATABASE_URL overrides")
    tune_path: str | None = Field(default=None, description="Ray Tune storage: a shared path, s3:// or gs://")


class Tracking(_Strict):
    mode: Literal["offline", "online", "none"] = "offline"
    project: str = "sweeper"


class AuditSettings(_Strict):
    """The data audit run before every sweep (sweeper.audit); `allow` lets a refusal through, recorded."""

    min_holdout_fraction: float = Field(default=0.10, ge=0, lt=1, description="holdout rows / train rows")
    near_duplicate_threshold: float = Field(default=0.92, gt=0, le=1,
                                            description="character 3-gram Jaccard of normalised texts")
    allow: list[AllowCode] = Field(default_factory=list)


GATE_PATTERN = re.compile(r"^\s*(\w+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*(for every field)?\s*$")


class Gate(_Strict):
    """A promotion threshold: `metric op threshold`, judged on a confidence bound, never the point value."""

    metric: str
    op: Literal[">=", "<="]
    threshold: float

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value):
        """`f1_micro >= 0.9` or `per_field_f1 >= 0.95 for every field`, as the README writes gates."""
        if not isinstance(value, str):
            return value
        match = GATE_PATTERN.match(value)
        if not match:
            raise ValueError(f"cannot read gate {value!r}; write `metric >= threshold` (or <=), "
                             "or a mapping {metric, op, threshold}")
        if match[4] and match[1] != PER_FIELD_GATE:
            raise ValueError(f"`for every field` goes with {PER_FIELD_GATE}, not {match[1]}")
        return {"metric": match[1], "op": match[2], "threshold": float(match[3])}

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


class Promotion(_Strict):
    """Gates fixed before the sweep; `sweeper promote` checks them on the untouched test split."""

    gates: list[Gate] = Field(min_length=1)
    confidence: float = Field(default=0.95, gt=0, lt=1, description="level of the bootstrap interval")
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000)
    seeds: int = Field(default=0, ge=0, le=20, description="re-train the winner with this many more seeds; "
                                                           "each gate must then hold for the mean too")
    candidates: int = Field(default=3, ge=1, le=50, description="trials checked, best first, to name a runner-up")
    on_run: bool = Field(default=False, description="promote at the end of `sweeper run`")


class Spec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = ""
    task: Task
    model: ModelSpec
    data: DataSpec
    search_space: str | SearchSpace
    fixed: dict[str, Any] = Field(default_factory=dict)
    objective: Objective = Field(default_factory=Objective)
    budget: Budget
    search: SearchSettings = Field(default_factory=SearchSettings)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    early_stopping: EarlyStopping
    resources: Resources = Field(default_factory=Resources)
    seed: int = Field(ge=0)
    generation_eval_examples: int = Field(default=32, ge=0)
    max_new_tokens: int | None = Field(default=None, ge=1, le=8192,
                                       description="causal LM answers; unset: the longest train answer and a margin")
    storage: Storage = Field(default_factory=Storage)
    tracking: Tracking = Field(default_factory=Tracking)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    promotion: Promotion | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _model_path(cls, value):
        return {"path": value} if isinstance(value, str) else value  # the form before the block

    @field_validator("search_space")
    @classmethod
    def _known_space(cls, value):
        if isinstance(value, str) and value not in search_spaces.registered_search_spaces():
            known = ", ".join(search_spaces.registered_search_spaces())
            raise ValueError(f"unknown search space {value!r}; use one of {known} or write the space inline")
        return value

    def space(self) -> SearchSpace:
        return search_spaces.get_search_space(self.search_space) if isinstance(self.search_space, str) else self.search_space

    def max_rounds(self) -> int:
        """Rounds of the longest possible trial: ASHA's max_t."""
        epochs = self.fixed.get("num_epochs") or self.space().upper_bound("num_epochs")
        return int(epochs) * self.scheduler.evals_per_epoch

    def database_url(self) -> str:
        return os.environ.get("SWEEPER_DATABASE_URL") or self.storage.database_url or \
            f"sqlite:///{Path(self.storage.root).resolve() / 'sweeper.db'}"

    def fingerprint(self) -> str:
        """Hash of the resolved spec: a sweep name is bound to one spec, so a resume cannot change it.

        Gates are part of it: they are fixed before the sweep and cannot be moved after seeing results.
        """
        data = self.model_dump(mode="json")
        unset = {"audit": AuditSettings().model_dump(mode="json"), "promotion": None, "max_new_tokens": None}
        for section, default in unset.items():  # added later: left unset, older sweeps keep their fingerprint
            if data[section] == default:
                del data[section]
        for key, legacy in (("rung_unit", "rounds"), ("rung_metric", "objective")):
            if data["scheduler"].get(key) == legacy:  # added later: the value they ran with keeps older fingerprints
                del data["scheduler"][key]
        if data["data"]["prompt_template"] is None:
            del data["data"]["prompt_template"]
        if data["search"] == SearchSettings().model_dump(mode="json"):
            del data["search"]
        for key in ("max_compute", "compute_unit"):
            if data["budget"][key] == Budget.model_fields[key].default:
                del data["budget"][key]
        model = data.pop("model")
        if {k: v for k, v in model.items() if k not in ("path", "max_seq_length")} == ModelSettings().model_dump():
            # Default settings: as the spec was written before the block, so its sweeps resume.
            data["model"], data["data"]["max_seq_length"] = model["path"], model["max_seq_length"]
        else:
            data["model"] = model
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _file_and_model_errors(raw: dict) -> list[tuple[str, str]]:
    """Checks that need only the raw mapping, so they are reported alongside type errors."""
    errors = []
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for role in ("train", "holdout", "test"):
        path = data.get(role)
        problem = file_problem(path) if isinstance(path, str) else None
        if problem:
            errors.append((f"data.{role}", f"{problem}: {path}"))
    model = raw.get("model")
    path, where = (model.get("path"), "model.path") if isinstance(model, dict) else (model, "model")
    if isinstance(path, str):
        try:
            check_model(path)
        except ModelNotFound as exc:
            errors.append((where, str(exc)))
    return errors


MOVED = {"model.max_seq_length": "data.max_seq_length"}  # new place -> where specs before the model block had it


def _move_legacy_keys(raw: dict) -> tuple[dict, list[tuple[str, str]]]:
    """A spec written before the `model:` block, brought to its form: `data.max_seq_length` moves into the block.
    Returns the moved spec and the problems of the move (the length set in both places)."""
    data, model = raw.get("data"), raw.get("model")
    if not (isinstance(data, dict) and "max_seq_length" in data):
        return raw, []
    data = dict(data)
    length = data.pop("max_seq_length")
    if isinstance(model, dict) and "max_seq_length" in model:
        return {**raw, "data": data}, [("data.max_seq_length", "moved to model.max_seq_length, which this spec sets "
                                                               "too: remove it here")]
    if isinstance(model, (str, dict)):
        model = {"path": model} if isinstance(model, str) else model
        return {**raw, "data": data, "model": {**model, "max_seq_length": length}}, []
    return {**raw, "data": data}, []  # no model to move it into: that is the error to report


def _as_written(path: str, moved: bool) -> str:
    """An error's path where the spec wrote the setting."""
    return MOVED.get(path, path) if moved else path


def _hyperparameter_errors(spec: Spec) -> list[tuple[str, str]]:
    """No untuned defaults: every hyperparameter is searched or fixed, never both, none unknown."""
    searched, errors = spec.space().params, []
    for name in HYPERPARAMETERS:
        if name in searched and name in spec.fixed:
            errors.append((f"fixed.{name}", "both searched and fixed; remove it from one of them"))
        elif name not in searched and name not in spec.fixed:
            errors.append((f"fixed.{name}", "neither searched nor fixed: no untuned defaults, add it to `fixed:` "
                           "or to the search space"))
    for where, names in (("search_space.params", searched), ("fixed", spec.fixed)):
        errors += [(f"{where}.{k}", f"unknown hyperparameter; known: {', '.join(HYPERPARAMETERS)}")
                   for k in names if k not in HYPERPARAMETERS]
    return errors


def _semantic_errors(spec: Spec) -> list[tuple[str, str]]:
    return (_task_errors(spec) + _model_errors(spec) + _hyperparameter_errors(spec) + _value_errors(spec)
            + _gate_errors(spec) + _enqueue_errors(spec))


def _enqueue_errors(spec: Spec) -> list[tuple[str, str]]:
    """Each known configuration names searched parameters only, with values the search space can produce."""
    params, errors = spec.space().params, []
    if len(spec.search.enqueue) > spec.budget.trials:
        errors.append(("search.enqueue", f"{len(spec.search.enqueue)} configurations, but budget.trials is "
                       f"{spec.budget.trials}: raise the budget or enqueue fewer"))
    for i, config in enumerate(spec.search.enqueue):
        for name, value in config.items():
            where = f"search.enqueue[{i}].{name}"
            if name not in params:
                fixed = " (it is fixed: remove it here)" if name in spec.fixed else ""
                errors.append((where, f"not a searched parameter{fixed}; searched: {', '.join(params)}"))
            elif problem := outside(params[name], value):
                errors.append((where, problem))
    return errors


def outside(param, value: Any) -> str | None:
    """Why `value` is not one the parameter can take in the search space, or None."""
    if isinstance(param, CategoricalParam):
        same = any(c == value and isinstance(c, bool) == isinstance(value, bool) for c in param.choices)
        return None if same else f"{value!r} is not one of the choices {param.choices}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if isinstance(param, IntParam) and value != int(value):
        return f"{value!r} is not a whole number"
    if not param.low <= value <= param.high:
        return f"{value!r} is outside the range [{param.low:g}, {param.high:g}]"
    return None


def budget_extension_errors(old: Spec, new: Spec, trials_started: int, compute_spent: float) -> list[tuple[str, str]]:
    """Why `new` cannot continue the sweep recorded with `old`: only the budget may change (trials, max_compute,
    time_budget_s), and never below what the sweep has spent; [] when it may continue."""
    update = {"budget": old.budget.model_copy(update={k: getattr(new.budget, k) for k in GROWABLE_BUDGET})}
    if new.storage.database_url and safe_url(new.storage.database_url) == old.storage.database_url:
        update["storage"] = new.storage  # the stored spec has the URL without its password
    kept = old.model_copy(update=update)
    if kept.fingerprint() != new.fingerprint():
        message = ("differs from the sweep's recorded spec; only budget.trials, budget.max_compute and "
                   "budget.time_budget_s may change when a sweep continues: give a spec with other changes another "
                   "`name:`")
        return [(path, message) for path in _changed(kept.model_dump(mode="json"), new.model_dump(mode="json"))
                ] or [("", message)]
    errors = []
    if new.budget.trials < trials_started:
        errors.append(("budget.trials", f"{new.budget.trials} is below the {trials_started} trials the sweep has "
                       f"already started: give at least {trials_started}"))
    if new.budget.max_compute is not None and new.budget.max_compute < compute_spent:
        errors.append(("budget.max_compute", f"{new.budget.max_compute:g} is below the {compute_spent:g} "
                       f"{new.budget.compute_unit} the sweep has already spent"))
    return errors


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted paths whose values differ between two dumped specs."""
    paths = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            paths += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            paths.append(f"{prefix}{key}")
    return paths


def _model_errors(spec: Spec) -> list[tuple[str, str]]:
    """Model settings this sweep cannot run, refused here rather than in every trial. What needs the model itself
    (target modules it lacks, a model_type PEFT has no default for) or the worker's machine (CUDA, bitsandbytes)
    is checked in the worker (trainers/base_model.py), naming the same fields."""
    model, task, errors = spec.model, get_task(spec.task), []
    if not task.lora:
        defaults = ModelSettings().model_dump()
        return [(f"model.{k}", f"task {task.name} trains no model, so this has no effect; remove it")
                for k, v in model.settings().model_dump().items() if v != defaults[k]]
    if task.prompted and generates_text(model.path) is False:
        errors.append(("model.path", f"{model.path} is an encoder ({', '.join(architectures(model.path))}); task "
                       f"{task.name} fine-tunes a causal LM, whose config.json names a *ForCausalLM architecture "
                       "(smollm2-135m, or a local Llama, Qwen, Mistral, ... folder)"))
    if spec.resources.gpus == 0 and model.quantization == "4bit":
        errors.append(("model.quantization", "4bit (NF4 QLoRA through bitsandbytes) needs a CUDA GPU and the trials "
                       "get none (resources.gpus: 0): give them resources.gpus, or set quantization: none"))
    if spec.resources.gpus == 0 and model.dtype == "float16":
        errors.append(("model.dtype", "float16 trains with a loss scaler that needs a CUDA GPU and the trials get "
                       "none (resources.gpus: 0): give them resources.gpus, or use auto, float32 or bfloat16"))
    return errors


def _task_errors(spec: Spec) -> list[tuple[str, str]]:
    """The data and the objective fit the task: it reads that format and reports that metric."""
    task, errors = get_task(spec.task), []
    if spec.data.format not in task.formats:
        errors.append(("data.format", f"task {task.name} reads {', '.join(task.formats)}, not {spec.data.format}"))
    elif spec.data.prompt_template and not (task.prompted and FORMATS[spec.data.format].fields):
        errors.append(("data.prompt_template", "a prompt template asks a language model for fields: it needs task "
                       "causal_lm_sft and a format with fields (extraction, restaurant8k); remove it"))
    if not task.reports(spec.objective.metric):
        errors.append(("objective.metric", f"{spec.objective.metric!r} is not reported by task {task.name}; "
                       f"choose one of {', '.join(task.metric_names())}"))
    return errors


# One validator per trial hyperparameter, built from HyperParams itself: what a trial accepts is defined there.
_ACCEPTS = {name: TypeAdapter(Annotated[info.annotation, info]) for name, info in HyperParams.model_fields.items()}


def _refusal(name: str, value: Any) -> str | None:
    """Why a trial would refuse `value` for hyperparameter `name`, or None if it accepts it."""
    try:
        _ACCEPTS[name].validate_python(value)
    except ValidationError as exc:
        return exc.errors()[0]["msg"]
    return None


def _value_errors(spec: Spec) -> list[tuple[str, str]]:
    """Fixed values and every value a search can hand a trial (range ends, choices, `otherwise`), checked
    here so a bad one is refused by `validate` instead of failing each trial inside Ray."""
    errors = [(f"fixed.{name}", msg) for name, value in spec.fixed.items()
              if name in _ACCEPTS and (msg := _refusal(name, value))]
    for name, param in spec.space().params.items():
        if name not in _ACCEPTS:
            continue  # reported as an unknown hyperparameter
        where = f"search_space.params.{name}"
        if isinstance(param, FloatParam) and HyperParams.model_fields[name].annotation is int:
            errors.append((f"{where}.type", f"{name} takes whole numbers: use type int or categorical"))
        errors += [(f"{where}.{key}", f"a trial refuses {value!r}: {msg}")
                   for key, value in param.values() if (msg := _refusal(name, value))]
    return errors


def _gate_errors(spec: Spec) -> list[tuple[str, str]]:
    """Each gate names a metric the task reports, with a threshold the metric can reach."""
    if spec.promotion is None:
        return []
    errors, task = [], get_task(spec.task)
    for i, gate in enumerate(spec.promotion.gates):
        where = f"promotion.gates.{i}"
        if gate.metric == PER_FIELD_GATE and not task.per_field:
            with_fields = ", ".join(t.name for t in all_tasks() if t.per_field)
            errors.append((f"{where}.metric", f"{PER_FIELD_GATE} needs a task with fields ({with_fields}); "
                           f"task {task.name} reports {', '.join(task.metric_names())}"))
        elif gate.metric != PER_FIELD_GATE and not task.reports(gate.metric):
            choices = ", ".join(task.metric_names()) + (f", {PER_FIELD_GATE} (every field)" if task.per_field else "")
            errors.append((f"{where}.metric", f"{gate.metric!r} is not reported by task {task.name}; "
                           f"choose one of {choices}"))
        elif gate.metric not in UNBOUNDED_METRICS and not 0 <= gate.threshold <= 1:
            errors.append((f"{where}.threshold", f"{gate.metric} lies between 0 and 1; a threshold of "
                           f"{gate.threshold:g} can never be met"))
    return errors


def _resolve_paths(raw: dict, base: Path) -> dict:
    data = raw.get("data")
    if isinstance(data, dict):
        for role in ("train", "holdout", "test"):
            value = data.get(role)
            if isinstance(value, str) and "\0" not in value and not os.path.isabs(value):  # a NUL: reported later
                data[role] = str((base / value).resolve())
    return raw


def parse_spec(raw: Any, base: Path = Path("."), source: str = "spec") -> Spec:
    if not isinstance(raw, dict):
        raise SpecError([("", "the spec must be a YAML mapping of settings")], source)
    raw = _resolve_paths(raw, base)
    errors = _file_and_model_errors(raw)
    moved, problems = _move_legacy_keys(raw)
    errors += problems
    try:
        spec = Spec.model_validate(moved)
    except ValidationError as exc:
        was_moved = moved is not raw and not problems
        errors += [(_as_written(_path(e["loc"]), was_moved), _message(e)) for e in exc.errors()
                   if not _other_union_branch(e, raw)]
        raise SpecError(errors, source) from None
    errors += _semantic_errors(spec)
    if errors:
        raise SpecError(errors, source)
    return spec


UNION_TAGS = {"str", "float", "int", "categorical"}  # pydantic's names for union branches in an error path


def _path(loc: tuple) -> str:
    """`search_space.params.lr` rather than pydantic's `search_space.function-after[...].params.lr.float`."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p in UNION_TAGS)))


def _other_union_branch(error: dict, raw: dict) -> bool:
    """An inline search space is a mapping: its failure to be a space *name* is noise."""
    return error["loc"][:2] == ("search_space", "str") and isinstance(raw.get("search_space"), dict)


def _message(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see the spec reference in the README)"
    if error["type"] == "missing":
        return "required: add this setting"
    return re.sub(r"^Value error, ", "", error["msg"])


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise SpecError([("", f"spec {problem}: {path}")], str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError([("", "the spec is not UTF-8 text")], str(path)) from None
    except OSError as exc:
        raise SpecError([("", f"cannot read the spec: {exc.strerror}")], str(path)) from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError([("", describe(exc))], str(path)) from None
    return parse_spec(raw, path.resolve().parent, str(path))


# -- the spec as stored with a sweep: written once, read back typed by export, promotion, the CLI and the service --
SCHEMA_VERSION = 2  # of the stored form; when it changes, bump it and teach `spec_from_store` the older forms
# 1: `model` a path or name, `data.max_seq_length`; 2: the `model:` block holds both.


def stored_spec(spec: Spec) -> dict:
    """The spec as recorded in the store and exports: resolved (data paths absolute), versioned, and with no
    database password (it never leaves the process)."""
    data = {"schema_version": SCHEMA_VERSION, **spec.model_dump(mode="json")}
    if data["storage"]["database_url"]:
        data["storage"]["database_url"] = safe_url(data["storage"]["database_url"])
    return data


# Defaults that changed, (section, key): the default before. A sweep recorded before the change goes on with the
# value it ran with (its fingerprint and its search stay as they were) unless the spec that resumes it sets the key.
EARLIER_DEFAULTS = {("scheduler", "rung_metric"): "objective", ("scheduler", "reduction_factor"): 2.0}


def keeping_recorded_defaults(spec: Spec, recorded: dict | None) -> Spec:
    """`spec` resuming the sweep recorded with `recorded` (its stored spec; None: a new sweep), with the recorded
    values of the changed defaults that `spec` leaves unset."""
    if not recorded:
        return spec
    try:
        old = spec_from_store(recorded)
    except SpecError:
        return spec  # a stored spec this version cannot read: the fingerprint check refuses the resume
    for section, key in EARLIER_DEFAULTS:
        block = getattr(spec, section)
        if key not in block.model_fields_set:
            block = block.model_copy(update={key: getattr(getattr(old, section), key)})
            spec = spec.model_copy(update={section: block})
    return spec


def spec_from_store(stored: dict) -> Spec:
    """A stored spec (`stored_spec`), typed again. Its database_url is redacted: use the store's own URL."""
    data = dict(stored)
    for (section, key), earlier in EARLIER_DEFAULTS.items():  # recorded before the key existed: the default then
        if isinstance(data.get(section), dict) and key not in data[section]:
            data[section] = {**data[section], key: earlier}
    version = data.pop("schema_version", 1)  # stored before the version was: the same form as version 1
    if version not in (1, SCHEMA_VERSION):
        raise SpecError([("schema_version", f"{version}: this sweeper reads stored specs of versions 1 to "
                                            f"{SCHEMA_VERSION}; use the sweeper version that ran the sweep")],
                        "stored spec")
    if version == 1:
        data, problems = _move_legacy_keys(data)
        if problems:
            raise SpecError(problems, "stored spec")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([(_path(e["loc"]), _message(e)) for e in exc.errors()], "stored spec") from None
