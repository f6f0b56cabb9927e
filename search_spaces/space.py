"""A search space as data: typed parameter definitions, optionally conditional, sampled through Optuna.

A conditional parameter (`when:`) is sampled only when every named parameter took one of the listed
values; otherwise it takes its `otherwise` value, so a trial always receives a complete config.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: dict[str, list[Any]] | None = None
    otherwise: Any = None

    @model_validator(mode="after")
    def _otherwise_with_when(self):
        if self.when and self.otherwise is None:
            raise ValueError("a conditional parameter (when:) needs an `otherwise:` value")
        return self

    def values(self) -> list[tuple[str, Any]]:
        """(key, value) for every value that bounds what a trial can receive: its range's ends or its choices,
        and `otherwise` when conditional. Trial constraints are intervals, so checking these checks them all."""
        return self._ends() + ([("otherwise", self.otherwise)] if self.when else [])

    def _ends(self) -> list[tuple[str, Any]]:  # float and int ranges; a categorical has its choices instead
        return [("low", self.low), ("high", self.high)]


class FloatParam(_Param):
    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self):
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Union[int, float, str, bool]] = Field(min_length=1)

    def _ends(self) -> list[tuple[str, Any]]:
        return [(f"choices.{i}", choice) for i, choice in enumerate(self.choices)]


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "inline"
    description: str = ""
    params: dict[str, Param] = Field(min_length=1)

    @model_validator(mode="after")
    def _conditions_refer_to_earlier_params(self):
        seen: list[str] = []
        for name, param in self.params.items():
            for other in (param.when or {}):
                if other not in seen:
                    raise ValueError(f"{name}.when refers to {other!r}, which must be defined before {name!r}")
            seen.append(name)
        return self

    def upper_bound(self, name: str) -> Any:
        """The largest value a parameter can take (used to size ASHA's max rounds)."""
        param = self.params[name]
        values = param.choices if isinstance(param, CategoricalParam) else [param.high]
        return max(values + ([param.otherwise] if param.when else []))

    def sample(self, trial) -> dict[str, Any]:
        """Define-by-run sampling with an Optuna trial; returns the values not sampled (conditions unmet)."""
        chosen: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for name, param in self.params.items():
            if param.when and any(chosen.get(k, constants.get(k)) not in v for k, v in param.when.items()):
                constants[name] = param.otherwise
            elif isinstance(param, FloatParam):
                chosen[name] = trial.suggest_float(name, param.low, param.high, log=param.log)
            elif isinstance(param, IntParam):
                chosen[name] = trial.suggest_int(name, param.low, param.high, log=param.log)
            else:
                chosen[name] = trial.suggest_categorical(name, param.choices)
        return constants
