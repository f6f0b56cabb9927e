"""Task metrics computed from plain Python values, so they can be checked by hand.

Field F1 compares extracted values, not token positions: a prediction counts when its field and its
normalised value (case, surrounding punctuation and whitespace ignored) match a gold pair of the same
example. Per-field F1 is what a field-extraction gate needs: a model can be good on average and fail
one field.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Hashable, Iterable, Mapping, Sequence


def normalise_value(value: str) -> str:
    return " ".join(re.sub(r"^\W+|\W+$", "", value.lower()).split())


def _pairs(fields: Mapping[str, str]) -> Counter:
    return Counter((name, normalise_value(value)) for name, value in fields.items() if normalise_value(value))


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def field_f1(gold: Iterable[Mapping[str, str]], predicted: Iterable[Mapping[str, str]]) -> dict[str, float]:
    """Micro precision / recall / F1 over all fields, and `f1_<field>` for each field seen in gold or predictions."""
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
