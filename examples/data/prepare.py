"""Rebuild the example data subsets from the full datasets in ../shared/data (run once; output committed).

    python examples/data/prepare.py /path/to/shared/data

`bookings/` is the extraction format (`{"text", "fields"}`, any schema) made from `restaurant8k/`: the same
texts and splits under a schema of its own (party_size as a number where the text writes digits, the guest's
name as one field, null for what a message does not say).

Splits are disjoint after normalisation (case, whitespace, punctuation), so the data audit passes, and
every class / slot in holdout and test also appears in train. Fixed seed: re-running gives the same files.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent
SEED = 0


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def unique(rows, key, seen):
    out = []
    for row in rows:
        k = norm(key(row))
        if k and k not in seen:
            seen.add(k)
            out.append(row)
    return out


def restaurant8k(src: Path) -> None:
    rng = random.Random(SEED)
    text = lambda r: r["userInput"]["text"]  # noqa: E731
    train_pool = json.loads((src / "restaurant8k/train_0.json").read_text())
    test_pool = json.loads((src / "restaurant8k/test.json").read_text())
    rng.shuffle(train_pool)
    rng.shuffle(test_pool)
    seen: set[str] = set()
    pool = unique(train_pool, text, seen)
    test = unique(test_pool, text, seen)
    for name, (n_train, n_holdout, n_test) in {"restaurant8k": (400, 100, 300), "restaurant8k-small": (96, 24, 48)}.items():
        folder = OUT / name
        folder.mkdir(exist_ok=True)
        splits = {"train": pool[:n_train], "holdout": pool[n_train : n_train + n_holdout], "test": test[:n_test]}
        for split, rows in splits.items():
            (folder / f"{split}.json").write_text(json.dumps(rows, indent=1) + "\n")


def banking77(src: Path) -> None:
    rng = random.Random(SEED)
    by_label = defaultdict(list)
    for row in csv.DictReader(open(src / "banking77/train.csv", encoding="utf-8")):
        by_label[row["category"]].append(row)
    test_pool = list(csv.DictReader(open(src / "banking77/test.csv", encoding="utf-8")))
    rng.shuffle(test_pool)  # test.csv is grouped by label
    seen: set[str] = set()
    train, holdout = [], []
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        rows = unique(rows, lambda r: r["text"], seen)
        train += rows[:12]
        holdout += rows[12:15]
    test_by_label = defaultdict(list)
    for row in unique(test_pool, lambda r: r["text"], seen):
        if len(test_by_label[row["category"]]) < 5:
            test_by_label[row["category"]].append(row)
    test = [r for label in sorted(test_by_label) for r in test_by_label[label]]
    folder = OUT / "banking77"
    folder.mkdir(exist_ok=True)
    for split, rows in {"train": train, "holdout": holdout, "test": test}.items():
        rng.shuffle(rows)
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows({"text": r["text"], "category": r["category"]} for r in rows)


def booking_fields(record: dict) -> dict:
    text = record["userInput"]["text"]
    spans = {}
    for label in record.get("labels", []):  # the first span of a slot, as sweeper reads restaurant8k
        span = label["valueSpan"]
        spans.setdefault(label["slot"], (span.get("startIndex", 0), span["endIndex"]))
    value = {slot: text[start:end] for slot, (start, end) in spans.items()}
    people = value.get("people")
    names = [spans[s] for s in ("first_name", "last_name") if s in spans]
    return {
        "party_size": int(people) if people and people.isdigit() else people,
        "date": value.get("date"),
        "time": value.get("time"),
        "guest_name": text[min(s for s, _ in names) : max(e for _, e in names)] if names else None,
    }


def bookings() -> None:
    folder = OUT / "bookings"
    folder.mkdir(exist_ok=True)
    for split in ("train", "holdout", "test"):
        records = json.loads((OUT / "restaurant8k" / f"{split}.json").read_text())
        lines = [json.dumps({"text": r["userInput"]["text"], "fields": booking_fields(r)}, ensure_ascii=False)
                 for r in records]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else OUT.parents[2] / "shared" / "data")
    restaurant8k(source)
    banking77(source)
    bookings()
