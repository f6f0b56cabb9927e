"""Task metrics computed from plain Python values, so they can be checked by hand.

Field F1 compares extracted values, not token positions, the same way for every task (a tagger's spans, a
language model's JSON): a predicted field counts when its value equals the gold value of that field in the same
example, after normalisation: case, surrounding punctuation and runs of whitespace ignored; numbers compared as
numbers ("1,250.00" = 1250, "$12.50" = 12.5) and dates or times as the moments they name ("2024-03-05" =
"March 5, 2024", "7pm" = "19:00") when both sides parse. A field given in gold and missing from the prediction
is a miss (fn); one predicted where gold has none (null) is spurious (fp); a wrong value is both. Per-field F1 is
what a field-extraction gate needs: a model can be good on average and fail one field.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime
from functools import lru_cache
from typing import Any, Hashable, Iterable, Mapping, Sequence

from dateutil import parser as dateparser

NUMBER = re.compile(r"^([-+]?)[$€£¥]?\s*([-+]?)(\d{1,3}(?:,\d{3})+|\d+)?(\.\d+)?$")
# A date is parsed with two different defaults: a date part the text does not give (the year of "March 5") takes
# each default's value, so "March" and "March 30" differ under one of them and never compare equal.
DATE_DEFAULTS = (datetime(2001, 1, 1), datetime(2002, 2, 2))  # a time without minutes means :00


def normalise_value(value: str) -> str:
    return " ".join(re.sub(r"^\W+|\W+$", "", value.lower()).split())


def _number(text: str) -> float | None:
    match = NUMBER.match(text.strip())
    if not match or not (match[3] or match[4]) or (match[1] and match[2]):
        return None
    return float(f"{match[1] or match[2]}{(match[3] or '0').replace(',', '')}{match[4] or ''}")


@lru_cache(maxsize=4096)
def _moment(text: str) -> tuple[datetime, ...] | None:
    if not re.search(r"\d", text) or len(text) > 40:  # no digit: a word ("may", "sun"), not a date
        return None
    try:
        return tuple(dateparser.parse(text, default=default) for default in DATE_DEFAULTS)
    except (ValueError, OverflowError):
        return None


def value_key(value: Any) -> tuple | None:
    """What a field's value is compared by; None for no value (null, empty, punctuation only)."""
    if value is None or isinstance(value, bool):
        return None if value is None else ("text", str(value).lower())
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, (list, dict)):
        return ("json", json.dumps(value, sort_keys=True, separators=(",", ":")).lower()) if value else None
    text = str(value)
    if (number := _number(text)) is not None:
        return ("number", number)
    if not (normalised := normalise_value(text)):
        return None
    moment = _moment(normalised)
    return ("moment", moment) if moment else ("text", normalised)


def _pairs(fields: Mapping[str, Any]) -> Counter:
    return Counter((name, key) for name, value in fields.items() if (key := value_key(value)) is not None)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def field_f1(gold: Iterable[Mapping[str, Any]], predicted: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Micro precision / recall / F1 over all fields, and `f1_<field>` for each field given in gold or predicted
    (a field null everywhere and never predicted has no F1: there is nothing to score)."""
    counts: dict[str, Counter] = {}
    for gold_fields, pred_fields in zip(gold, predicted, strict=True):
        g, p = _pairs(gold_fields), _pairs(pred_fields)
        for (name, _), n in (g & p).items():
            counts.setdefault(name, Counter())["tp"] += n
        for (name, _), n in (p - g).items():
            counts.setdefault(name, Counter())["fp"] += n
        for (name, _), n in (g - p).items():
            counts.setdefault(name, Counter())["fn"] += n
    total = sum(counts.values(), Counter())
    tp, fp, fn = total["tp"], total["fp"], total["fn"]
    out = {
        "precision_micro": tp / (tp + fp) if tp + fp else 0.0,
        "recall_micro": tp / (tp + fn) if tp + fn else 0.0,
        "f1_micro": _f1(tp, fp, fn),
    }
    for name in sorted(counts):
        c = counts[name]
        out[f"f1_{name}"] = _f1(c["tp"], c["fp"], c["fn"])
    return out


def classification_metrics(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> dict[str, float]:
    """Accuracy and macro F1 over the labels present in gold or predictions."""
    pairs = list(zip(gold, predicted, strict=True))
    accuracy = sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0
    tp = Counter(g for g, p in pairs if g == p)
    fp = Counter(p for g, p in pairs if g != p)
    fn = Counter(g for g, p in pairs if g != p)
    f1s = [_f1(tp[label], fp[label], fn[label]) for label in sorted(set(gold) | set(predicted))]
    return {"accuracy": accuracy, "f1_macro": sum(f1s) / len(f1s) if f1s else 0.0}


def pooled_loss(records: Iterable[Mapping]) -> float:
    """A split's loss from per-example records {"loss": summed loss, "tokens": labelled tokens}: the mean
    over every labelled token, so any resample of examples pools the same way."""
    records = list(records)
    tokens = sum(r["tokens"] for r in records)
    return sum(r["loss"] for r in records) / tokens if tokens else float("nan")
