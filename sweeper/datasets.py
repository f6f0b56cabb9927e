"""Readers for the data formats a spec may name, and data fingerprints.

Each reader turns a file into a list of typed examples and raises `DataError` naming the file, the row
and what is wrong, so a bad file is refused before any trial starts.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

DataFormat = Literal["restaurant8k", "csv", "jsonl"]
DATA_FORMATS: tuple[str, ...] = ("restaurant8k", "csv", "jsonl")


MAX_TEXT_CHARS = 100_000  # one example's text; longer rows are almost always a broken export


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Span:
    field: str
    start: int
    end: int


@dataclass(frozen=True)
class TaggedExample:
    """Text with labelled character spans (slot filling / field extraction)."""

    text: str
    spans: tuple[Span, ...] = ()

    def fields(self) -> dict[str, str]:
        return {s.field: self.text[s.start : s.end] for s in self.spans}


@dataclass(frozen=True)
class LabeledExample:
    """Text with one class label."""

    text: str
    label: str


@dataclass(frozen=True)
class PromptExample:
    """An instruction (prompt) and the response the model should produce."""

    prompt: str
    response: str
    text: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.text:
            object.__setattr__(self, "text", self.prompt)


Example = Union[TaggedExample, LabeledExample, PromptExample]


def read_examples(path: str | Path, fmt: DataFormat) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    readers = {"restaurant8k": _read_restaurant8k, "csv": _read_csv, "jsonl": _read_jsonl}
    examples = readers[fmt](path, raw)
    for i, example in enumerate(examples):
        if len(example.text) > MAX_TEXT_CHARS:
            raise DataError(f"{path}: row {i} is {len(example.text):,} characters long (limit {MAX_TEXT_CHARS:,}); "
                            "split or drop it")
    return examples


def read_splits(data) -> dict[str, list[Example]]:
    """Every split of a spec's `data:` section, read and checked before anything runs.

    Errors name the spec field first (`data.holdout: ...`), so a user knows which setting to fix.
    """
    splits = {}
    for role in ("train", "holdout", "test"):
        path = getattr(data, role)
        if path is None:
            continue
        try:
            splits[role] = read_examples(path, data.format)
        except DataError as exc:
            raise DataError(f"data.{role}: {exc}") from None
    return splits


def _read_restaurant8k(path: Path, raw: str) -> list[TaggedExample]:
    try:
        records = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records")
    return [_restaurant8k_record(path, i, rec) for i, rec in enumerate(records)]


def _restaurant8k_record(path: Path, i: int, rec: object) -> TaggedExample:
    where = f"{path}: record {i}"
    text = rec.get("userInput", {}).get("text") if isinstance(rec, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: userInput.text is missing or empty")
    spans = []
    for label in rec.get("labels", []) or []:
        slot = label.get("slot") if isinstance(label, dict) else None
        span = label.get("valueSpan", {}) if isinstance(label, dict) else {}
        start, end = span.get("startIndex", 0), span.get("endIndex")  # a missing startIndex means 0
        if not isinstance(slot, str) or type(start) is not int or type(end) is not int:
            raise DataError(f"{where}: each label needs a string slot and integer valueSpan indices")
        if not 0 <= start < end <= len(text):
            raise DataError(f"{where}: span {start}:{end} of slot {slot!r} is outside the text")
        spans.append(Span(slot, start, end))
    return TaggedExample(text, tuple(sorted(spans, key=lambda s: s.start)))


def _read_csv(path: Path, raw: str) -> list[LabeledExample]:
    reader = csv.DictReader(raw.splitlines())
    try:
        header, rows = reader.fieldnames or [], list(reader)
    except csv.Error as exc:
        raise DataError(f"{path}: not valid CSV ({exc})") from None
    text_col = "text"
    label_col = next((c for c in ("label", "category") if c in header), None)
    if text_col not in header or label_col is None:
        raise DataError(f"{path}: needs a header with a 'text' column and a 'label' (or 'category') column")
    out = []
    for i, row in enumerate(rows, start=2):
        text, label = str(row.get(text_col) or "").strip(), str(row.get(label_col) or "").strip()
        if not text or not label:
            raise DataError(f"{path}: line {i}: empty text or label")
        out.append(LabeledExample(text, label))
    return out


def _read_jsonl(path: Path, raw: str) -> list[PromptExample]:
    out = []
    for i, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {i}: not valid JSON ({exc.msg})") from None
        prompt = rec.get("instruction", rec.get("prompt")) if isinstance(rec, dict) else None
        response = rec.get("response") if isinstance(rec, dict) else None
        if not isinstance(prompt, str) or not isinstance(response, str) or not prompt.strip():
            raise DataError(f"{path}: line {i}: needs string fields 'instruction' (or 'prompt') and 'response'")
        out.append(PromptExample(prompt, response))
    return out


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a data file's bytes: the export records it so a re-run can prove it used the same data."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
