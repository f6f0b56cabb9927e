"""Find extraction values in their text as character spans, so a tagger trains on `{"text", "fields"}` rows.

A value is looked for as written first, then with any run of whitespace matching any other and case ignored
(OCR line breaks, "Smith" for "SMITH"), then as any number, date or time in the text that is the same value by
the rule the metrics score with (sweeper.values: gold 1250.0 is found as "1,250.00", gold "2024-03-05" as
"5 March 2024"). The first occurrence that overlaps no span already placed wins. A value that cannot be found (a
number written as words, a list), or only inside another field's value (a tagger gives each token one field), is
returned as unlocated: the data audit reports those, field by field, and the tagger trains on the spans it has.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

from sweeper.datasets import ExtractionExample, Span, TaggedExample
from sweeper.values import IN_TEXT, canonical, same_value


def value_texts(value: Any) -> list[str]:
    """How a value may appear in text: a string as is, a number as JSON writes it (12.0 also as 12)."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return []
    texts = [json.dumps(value)]
    if isinstance(value, float) and value.is_integer():
        texts.append(str(int(value)))
    return texts


def _occurrences(text: str, needle: str) -> Iterator[tuple[int, int]]:
    start = text.find(needle)
    while start != -1:
        yield start, start + len(needle)
        start = text.find(needle, start + 1)
    loose = re.compile(r"\s+".join(map(re.escape, needle.split())), re.IGNORECASE)
    for match in loose.finditer(text):
        yield match.start(), match.end()


def _same_values(text: str, value: Any) -> Iterator[tuple[int, int]]:
    """Numbers, dates and times written in the text that are the same value as `value`."""
    if canonical(value) is None or canonical(value)[0] not in ("number", "moment"):
        return
    for match in IN_TEXT.finditer(text):
        written = match.group().strip()
        if same_value(value, written):
            start = match.start() + match.group().index(written)
            yield start, start + len(written)


def _candidates(text: str, value: Any) -> Iterator[tuple[int, int]]:
    for needle in value_texts(value):
        yield from _occurrences(text, needle)
    yield from _same_values(text, value)


NOT_IN_TEXT = "not in the text"
OVERLAPS = "only where another field's value is"


def _place(text: str, value: Any, taken: list[Span]) -> tuple[int, int] | str:
    """The first free occurrence of the value, or why there is none."""
    found = False
    for start, end in _candidates(text, value):
        if all(end <= s.start or start >= s.end for s in taken):
            return start, end
        found = True
    return OVERLAPS if found else NOT_IN_TEXT


def locate(example: ExtractionExample) -> tuple[TaggedExample, list[tuple[str, Any, str]]]:
    """The example as tagged spans, and (field, value, why) for each value that could not be placed."""
    spans: list[Span] = []
    unlocated = []
    for name, value in example.fields().items():
        where = _place(example.text, value, spans)
        if isinstance(where, str):
            unlocated.append((name, value, where))
        else:
            spans.append(Span(name, *where))
    return TaggedExample(example.text, tuple(sorted(spans, key=lambda s: s.start))), unlocated


def as_tagged(example: TaggedExample | ExtractionExample) -> TaggedExample:
    """What a tagger trains on: spans as given, or located from the values."""
    return example if isinstance(example, TaggedExample) else locate(example)[0]
