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
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

import search_spaces
from search_spaces.space import FloatParam, SearchSpace
from sweeper.datasets import file_problem
from sweeper.store import safe_url
from sweeper.yaml_safe import describe, load_yaml
from trainers import all_tasks, get_task
from trainers.base import HYPERPARAMETERS, DataFormatName, HyperParams, Task
from trainers.models import ModelNotFound, check_model

PER_FIELD_GATE = "per_field_f1"  # a gate on every field's F1 at once
UNBOUNDED_METRICS = ("eval_loss",)  # every other metric is a rate in [0, 1]
AuditCode = Literal["small-holdout", "overlap", "near-duplicate", "empty-rows", "unseen-label"]
AUDIT_CODES: tuple[str, ...] = AuditCode.__args__


class SpecError(ValueError):
    """A spec that cannot run; `errors` lists (path, message) for every problem found."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "spec"):
        self.errors = errors
        lines = "\n".join(f"  {path or '(top level)'}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: {len(errors)} problem(s)\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    format: DataFormatName
    train: str
    holdout: str
    test: str | None = None
    max_seq_length: int = Field(default=128, ge=8, le=8192)


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


class Scheduler(_Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(default=1, ge=1, description="rounds every trial gets before ASHA may stop it")
    reduction_factor: float = Field(default=2.0, gt=1)
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
    allow: list[AuditCode] = Field(default_factory=list)


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
    model: str
    data: DataSpec
    search_space: str | SearchSpace
    fixed: dict[str, Any] = Field(default_factory=dict)
    objective: Objective = Field(default_factory=Objective)
    budget: Budget
    scheduler: Scheduler = Field(default_factory=Scheduler)
    early_stopping: EarlyStopping
    resources: Resources = Field(default_factory=Resources)
    seed: int = Field(ge=0)
    generation_eval_examples: int = Field(default=32, ge=0)
    storage: Storage = Field(default_factory=Storage)
    tracking: Tracking = Field(default_factory=Tracking)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    promotion: Promotion | None = None

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
        unset = {"audit": AuditSettings().model_dump(mode="json"), "promotion": None}
        for section, default in unset.items():  # added later: left unset, older sweeps keep their fingerprint
            if data[section] == default:
                del data[section]
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
    if isinstance(raw.get("model"), str):
        try:
            check_model(raw["model"])
        except ModelNotFound as exc:
            errors.append(("model", str(exc)))
    return errors


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
    return _task_errors(spec) + _hyperparameter_errors(spec) + _value_errors(spec) + _gate_errors(spec)


def _task_errors(spec: Spec) -> list[tuple[str, str]]:
    """The data and the objective fit the task: it reads that format and reports that metric."""
    task, errors = get_task(spec.task), []
    if spec.data.format not in task.formats:
        errors.append(("data.format", f"task {task.name} reads {', '.join(task.formats)}, not {spec.data.format}"))
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
            if isinstance(data.get(role), str) and not os.path.isabs(data[role]):
                data[role] = str((base / data[role]).resolve())
    return raw


def parse_spec(raw: Any, base: Path = Path("."), source: str = "spec") -> Spec:
    if not isinstance(raw, dict):
        raise SpecError([("", "the spec must be a YAML mapping of settings")], source)
    raw = _resolve_paths(raw, base)
    errors = _file_and_model_errors(raw)
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        errors += [(_path(e["loc"]), _message(e)) for e in exc.errors() if not _other_union_branch(e, raw)]
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
SCHEMA_VERSION = 1  # of the stored form; when it changes, bump it and teach `spec_from_store` the older forms


def stored_spec(spec: Spec) -> dict:
    """The spec as recorded in the store and exports: resolved (data paths absolute), versioned, and with no
    database password (it never leaves the process)."""
    data = {"schema_version": SCHEMA_VERSION, **spec.model_dump(mode="json")}
    if data["storage"]["database_url"]:
        data["storage"]["database_url"] = safe_url(data["storage"]["database_url"])
    return data


def spec_from_store(stored: dict) -> Spec:
    """A stored spec (`stored_spec`), typed again. Its database_url is redacted: use the store's own URL."""
    data = dict(stored)
    version = data.pop("schema_version", 1)  # stored before the version was: the same form as version 1
    if version != SCHEMA_VERSION:
        raise SpecError([("schema_version", f"{version}: this sweeper reads stored specs of version "
                                            f"{SCHEMA_VERSION}; use the sweeper version that ran the sweep")],
                        "stored spec")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([(_path(e["loc"]), _message(e)) for e in exc.errors()], "stored spec") from None
