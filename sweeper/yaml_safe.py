"""The one YAML loader for what users write (specs, search spaces): plain data, bounded, unambiguous.

PyYAML's `safe_load` expands aliases (a 1 KB document of nested aliases becomes ~1 GB of objects),
recurses once per nesting level (`[` x 30000 is a RecursionError) and lets a repeated key silently
replace the earlier one. This loader refuses aliases and deep nesting while composing, before any object
is built, and a repeated key before its mapping is built.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_CHARS = 200_000  # a spec is a few KB; the service accepts spec_yaml up to the same size
MAX_DEPTH = 32  # a spec nests about 6 levels deep (search_space.params.x.when.y: [...])
MERGE_TAG = "tag:yaml.org,2002:merge"


class RefusedYAML(yaml.MarkedYAMLError):
    """Valid YAML that a spec may not use: anchors and aliases, repeated keys, too large or too deep."""


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if getattr(event, "anchor", None):  # an alias event carries the anchor it refers to
            raise RefusedYAML(problem="anchors and aliases (&name, *name) are not allowed; write each value out",
                              problem_mark=event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise RefusedYAML(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
                continue  # a non-scalar key is refused by the base class; merged keys may be overridden
            key = self.construct_object(key_node)
            if key in seen:
                raise RefusedYAML(problem=f"duplicate key {key!r}: a repeated key would silently replace the "
                                          "earlier value; keep one", problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse one YAML document of plain data; raises yaml.YAMLError (RefusedYAML for what is refused)."""
    if len(text) > MAX_CHARS:
        raise RefusedYAML(problem=f"{len(text):,} characters is over the limit of {MAX_CHARS:,}")
    return yaml.load(text, Loader=_StrictLoader)  # safe: a SafeLoader subclass


def describe(exc: yaml.YAMLError) -> str:
    """`not valid YAML at line 3, column 5: ...` (or `refused ...` for valid YAML a spec may not use)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    kind = "refused YAML" if isinstance(exc, RefusedYAML) else "not valid YAML"
    return f"{kind}{where}: {getattr(exc, 'problem', None) or exc}"
