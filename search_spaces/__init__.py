"""Named search spaces, kept as data (one YAML file each) and loaded through a registry.

`register_search_space` refuses a second space of the same name, so a space cannot silently shadow
another. The YAML files beside this module register themselves on import.
"""

from __future__ import annotations

from pathlib import Path

from search_spaces.space import SearchSpace
from sweeper.yaml_safe import load_yaml

_SPACES: dict[str, SearchSpace] = {}


def register_search_space(space: SearchSpace) -> None:
    if space.name in _SPACES:
        raise ValueError(f"search space {space.name!r} is already registered")
    _SPACES[space.name] = space


def get_search_space(name: str) -> SearchSpace:
    if name not in _SPACES:
        raise KeyError(f"unknown search space {name!r}; registered: {', '.join(sorted(_SPACES))}")
    return _SPACES[name]


def registered_search_spaces() -> list[str]:
    return sorted(_SPACES)


for _file in sorted(Path(__file__).parent.glob("*.yaml")):
    register_search_space(SearchSpace.model_validate(load_yaml(_file.read_text(encoding="utf-8"))))
