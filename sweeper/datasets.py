"""Readers for the data formats a spec may name, and data fingerprints.

Each reader turns a file into a list of typed examples and raises `DataError` naming the file, the row
and what is wrong, so a bad file is refused before any trial starts. Empty rows (no text, no label, no
response) are not examples: readers set them aside in `DataFile.empty_rows`, and the data audit
(`sweeper.audit`) refuses a sweep over them unless the user allows `empty-rows`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

MAX_TEXT_CHARS = 100_000  # one example's text; longer rows are almost always a broken export
FIELD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # it becomes a metric name: f1_<field>


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the row."""


class DataChanged(DataError):
    """A data file is no longer the one the sweep's data audit read (its SHA-256 differs)."""

    @classmethod
    def of(cls, path: str | Path, expected: str, actual: str) -> DataChanged:
        # One message argument: Ray copies and pickles a trial's exception by its args.
        return cls(f"{path}: changed since the sweep's data audit: SHA-256 {actual}, audited {expected}; re-run "
                   "`sweeper audit SPEC` on the new data and start a new sweep (a new `name:`), or put the audited "
                   "file back")


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
        """{field: text}; a field tagged twice keeps its first span, as the tagger's decoding does."""
        fields: dict[str, str] = {}
        for span in self.spans:  # sorted by start
            fields.setdefault(span.field, self.text[span.start : span.end])
        return fields

    def field_names(self) -> set[str]:
        return {span.field for span in self.spans}


@dataclass(frozen=True)
class ExtractionExample:
    """Text and the value of each field of a schema the data defines (`{"name": value or null}`).

    Values are any JSON: strings, numbers, booleans, or lists and objects (compared as canonical JSON). A null
    says the text does not give that field: a model that fills it in is wrong."""

    text: str
    values: tuple[tuple[str, Any], ...]  # (field, value or None) in the row's order

    def fields(self) -> dict[str, Any]:
        """The fields the text gives: {field: value}, nulls left out."""
        return {name: value for name, value in self.values if value is not None}

    def field_names(self) -> set[str]:
        return {name for name, _ in self.values}


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


Example = Union[TaggedExample, ExtractionExample, LabeledExample, PromptExample]
FieldsExample = Union[TaggedExample, ExtractionExample]
FIELDS_EXAMPLES = (TaggedExample, ExtractionExample)  # examples whose labels are named fields (per-field F1)


def field_schema(examples: list) -> list[str]:
    """The field names of a split's examples, sorted: the schema a model is trained to fill."""
    return sorted({name for example in examples for name in example.field_names()})


@dataclass
class DataFile:
    """A data file read: its examples, where each one is in the file, and the empty rows set aside."""

    examples: list[Example]
    rows: list[str]  # "record 3" / "line 5", in the file's own numbering (as in DataError messages)
    empty_rows: list[str] = field(default_factory=list)  # "line 7: empty text or label"


def read_examples(path: str | Path, fmt: str, sha256: str | None = None) -> list[Example]:
    """The usable examples of a file (empty rows skipped; the audit reports them).

    With `sha256` (what the data audit read), a file whose bytes differ now raises `DataChanged`. Checked after
    the read, so a file replaced before or during it never slips through.
    """
    try:
        examples = read_file(path, fmt).examples
    except DataError:
        if sha256:
            check_fingerprint(path, sha256)  # a replaced file: say that, not what is wrong with the new one
        raise
    if sha256:
        check_fingerprint(path, sha256)
    return examples


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as a file (`file not found`, `file is a directory`), or None."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return "file is a directory"
    return "file is not a regular file" if path.exists() else "file not found"


def read_file(path: str | Path, fmt: str) -> DataFile:
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(f"{path}: {problem}")
    try:
        raw = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Excel, Notepad) is not text
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc.strerror}") from None
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    data = FORMATS[check_format(fmt)].read(path, raw)
    for example, row in zip(data.examples, data.rows):
        if len(example.text) > MAX_TEXT_CHARS:
            raise DataError(f"{path}: {row} is {len(example.text):,} characters long (limit {MAX_TEXT_CHARS:,}); "
                            "split or drop it")
    return data


def read_split_files(data) -> dict[str, DataFile]:
    """Every split of a spec's `data:` section, read and checked before anything runs.

    Errors name the spec field first (`data.holdout: ...`), so a user knows which setting to fix.
    """
    splits = {}
    for role in ("train", "holdout", "test"):
        path = getattr(data, role)
        if path is None:
            continue
        try:
            splits[role] = read_file(path, data.format)
        except DataError as exc:
            raise DataError(f"data.{role}: {exc}") from None
    return splits


def _parse_json(text: str, where: str, one_line: bool = False):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if one_line else f"line {exc.lineno}"
        raise DataError(f"{where}: not valid JSON ({exc.msg} at {at})") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise DataError(f"{where}: not usable JSON ({str(exc).split(':')[0]})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to be a data record") from None


def _read_restaurant8k(path: Path, raw: str) -> DataFile:
    records = _parse_json(raw, str(path))
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records")
    data = DataFile([], [])
    for i, rec in enumerate(records):
        user_input = rec.get("userInput") if isinstance(rec, dict) else None
        text = user_input.get("text") if isinstance(user_input, dict) else None
        if not isinstance(text, str) or not text.strip():
            data.empty_rows.append(f"record {i}: userInput.text is missing or empty")
            continue
        data.examples.append(_restaurant8k_record(path, i, rec, text))
        data.rows.append(f"record {i}")
    return data


def _restaurant8k_record(path: Path, i: int, rec: dict, text: str) -> TaggedExample:
    where = f"{path}: record {i}"
    labels = [] if rec.get("labels") is None else rec["labels"]
    if not isinstance(labels, list):
        raise DataError(f"{where}: labels must be a list of {{slot, valueSpan}} objects, not {type(labels).__name__}")
    spans = []
    for label in labels:
        slot = label.get("slot") if isinstance(label, dict) else None
        span = label.get("valueSpan") if isinstance(label, dict) else None
        start, end = (span.get("startIndex", 0), span.get("endIndex")) if isinstance(span, dict) else (None, None)
        if not isinstance(slot, str) or type(start) is not int or type(end) is not int:  # a missing startIndex is 0
            raise DataError(f"{where}: each label needs a string slot and integer valueSpan indices")
        if not 0 <= start < end <= len(text):
            raise DataError(f"{where}: span {start}:{end} of slot {slot!r} is outside the text")
        spans.append(Span(slot, start, end))
    return TaggedExample(text, tuple(sorted(spans, key=lambda s: s.start)))


def _read_csv(path: Path, raw: str) -> DataFile:
    reader = csv.DictReader(io.StringIO(raw, newline=""))  # quoted fields may hold line breaks of any kind
    try:
        header = reader.fieldnames or []
        rows = [(reader.line_num, row) for row in reader]  # the file's own line (the row's last, if quoted)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    text_col = "text"
    label_col = next((c for c in ("label", "category") if c in header), None)
    if text_col not in header or label_col is None:
        raise DataError(f"{path}: needs a header with a 'text' column and a 'label' (or 'category') column")
    data = DataFile([], [])
    for i, row in rows:
        text, label = str(row.get(text_col) or "").strip(), str(row.get(label_col) or "").strip()
        if not text or not label:
            data.empty_rows.append(f"line {i}: empty text or label")
            continue
        data.examples.append(LabeledExample(text, label))
        data.rows.append(f"line {i}")
    return data


def _read_jsonl(path: Path, raw: str) -> DataFile:
    data = DataFile([], [])
    for i, line in enumerate(raw.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue  # blank lines separate nothing in JSONL: not rows
        rec = _parse_json(line, f"{path}: line {i}", one_line=True)
        prompt = rec.get("instruction", rec.get("prompt")) if isinstance(rec, dict) else None
        response = rec.get("response") if isinstance(rec, dict) else None
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(f"{path}: line {i}: needs string fields 'instruction' (or 'prompt') and 'response'")
        if not prompt.strip() or not response.strip():
            data.empty_rows.append(f"line {i}: empty instruction or response")
            continue
        data.examples.append(PromptExample(prompt, response))
        data.rows.append(f"line {i}")
    return data


def _read_extraction(path: Path, raw: str) -> DataFile:
    data = DataFile([], [])
    for i, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {i}"
        rec = _parse_json(line, where, one_line=True)
        text = rec.get("text") if isinstance(rec, dict) else None
        fields = rec.get("fields") if isinstance(rec, dict) else None
        if not isinstance(text, str) or not isinstance(fields, dict):
            raise DataError(f'{where}: needs a string "text" and an object "fields" ({{"name": value or null}})')
        bad = [name for name in fields if not FIELD_NAME.match(name)]
        if bad:
            raise DataError(f"{where}: field name {bad[0]!r} cannot name a metric (f1_<field>); use up to 64 letters, "
                            "digits, '_', '.' or '-'")
        if not text.strip():
            data.empty_rows.append(f"line {i}: empty text")
            continue
        data.examples.append(ExtractionExample(text, tuple(fields.items())))
        data.rows.append(f"line {i}")
    return data


@dataclass(frozen=True)
class DataFormat:
    """A data format a spec may name (`data.format`): its reader, and what a file of it holds (for listings)."""

    read: Callable[[Path, str], DataFile]
    holds: str
    fields: bool = False  # its rows carry named fields (per-field F1)


# The only list of data formats: the spec, the trainers' registrations and `sweeper tasks` read it.
FORMATS: dict[str, DataFormat] = {
    "restaurant8k": DataFormat(_read_restaurant8k, "a JSON list of {userInput: {text}, labels: [{slot, valueSpan}]}",
                               fields=True),
    "csv": DataFormat(_read_csv, "CSV with a header: text, label (or category)"),
    "jsonl": DataFormat(_read_jsonl, "JSON lines: {instruction (or prompt), response}"),
    "extraction": DataFormat(_read_extraction, 'JSON lines: {"text": ..., "fields": {"name": value or null}}, '
                                               "any field names", fields=True),
}


def check_format(name: str) -> str:
    """`name`, if it is a registered data format; ValueError otherwise (pydantic reports it with its path)."""
    if name not in FORMATS:
        raise ValueError(f"unknown data format {name!r}; use one of {', '.join(FORMATS)}")
    return name


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a data file's bytes: the export records it so a re-run can prove it used the same data."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_fingerprint(path: str | Path, expected: str) -> None:
    """Raise DataChanged if the file's SHA-256 is not `expected`; an unreadable file is left to its reader."""
    try:
        actual = fingerprint(path)
    except OSError:
        return
    if actual != expected:
        raise DataChanged.of(path, expected, actual)
