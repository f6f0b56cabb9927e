"""Task metrics computed from plain Python values, so they can be checked by hand.

Field F1 compares extracted values, not token positions, the same way for every task (a tagger's spans, a
language model's JSON): a predicted field counts when its value is the same as the gold value of that field in the
same example, by sweeper.values.same_value (case, punctuation and spacing ignored; numbers, dates and times
compared as values). A field given in gold and missing from the prediction is a miss (fn); one predicted where
gold has none (null) is spurious (fp); a wrong value is both. Per-field F1 is what a field-extraction gate needs:
a model can be good on average and fail one field.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Hashable, Iterable, Mapping, Sequence

from sweeper.values import canonical, same_value


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def field_f1(gold: Iterable[Mapping[str, Any]], predicted: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Micro precision / recall / F1 over all fields, and `f1_<field>` for each field given in gold or predicted
    (a field null everywhere and never predicted has no F1: there is nothing to score)."""
    counts: dict[str, Counter] = {}
    for gold_fields, pred_fields in zip(gold, predicted, strict=True):
        for name in {*gold_fields, *pred_fields}:
            given = canonical(gold_fields.get(name)) is not None
            found = canonical(pred_fields.get(name)) is not None
            if not (given or found):
                continue
            count = counts.setdefault(name, Counter())
            if given and found and same_value(gold_fields[name], pred_fields[name]):
                count["tp"] += 1
            else:
                count["fn"] += given
                count["fp"] += found
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
