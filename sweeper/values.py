"""When two field values are the same: one rule for scoring extraction (trainers/metrics.py) and for finding a
gold value in its text (sweeper/locate.py).

Values compare after normalisation: case, surrounding punctuation and runs of whitespace ignored; numbers as
numbers ("1,250.00" = 1250, "$12.50" = 12.5); dates and times as the moments they name ("2024-03-05" =
"March 5, 2024", "7pm" = "19:00") when both sides parse. An ambiguous date ("04/03/2024") equals either of its
readings (April 3 or 4 March): the data cannot say which, so neither side is marked wrong for the other. Lists and
objects compare as canonical JSON.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from dateutil import parser as dateparser

NUMBER = re.compile(r"^([-+]?)[$€£¥]?\s*([-+]?)(\d{1,3}(?:,\d{3})+|\d+)?(\.\d+)?$")
# A date is parsed with two different defaults: a date part the text does not give (the year of "March 5") takes
# each default's value, so "March" and "March 30" differ under one of them and never compare equal.
DATE_DEFAULTS = (datetime(2001, 1, 1), datetime(2002, 2, 2))  # a time without minutes means :00

# Where a number, a date or a time may stand in a text: the places `locate` compares with a gold value.
IN_TEXT = re.compile("|".join((
    r"\d{4}-\d{1,2}-\d{1,2}",                                                     # 2024-03-05
    r"\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}",                                            # 05/03/2024, 5.3.24
    r"(?:(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?,?\s+)?\d{1,2}(?:st|nd|rd|th)?\s+[A-Za-z]{3,9}\.?,?\s+\d{4}",  # Tue 5 March 2024
    r"[A-Za-z]{3,9}\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}",                        # March 5, 2024
    r"\d{1,2}(?::\d{2})?\s?(?:[ap]\.?m\.?)(?![A-Za-z])",                           # 7pm, 7:30 p.m.
    r"\d{1,2}:\d{2}(?::\d{2})?",                                                   # 19:00
    r"[-+]?(?:[$€£¥]\s?)?\d[\d,]*(?:\.\d+)?",                                       # 1,250.00, $12.50, 4
)), re.IGNORECASE)


def normalise_text(value: str) -> str:
    return " ".join(re.sub(r"^\W+|\W+$", "", value.lower()).split())


def as_number(text: str) -> float | None:
    match = NUMBER.match(text.strip())
    if not match or not (match[3] or match[4]) or (match[1] and match[2]):
        return None
    return float(f"{match[1] or match[2]}{(match[3] or '0').replace(',', '')}{match[4] or ''}")


@lru_cache(maxsize=8192)
def readings(text: str) -> frozenset | None:
    """The moments a date or time text can name (month-first and day-first), or None when it names none."""
    if not re.search(r"\d", text) or len(text) > 40:  # no digit: a word ("may", "sun"), not a date
        return None
    found = set()
    year_first = re.match(r"\d{4}\b", text)  # 2024-03-05 is never day-first
    for dayfirst in (False,) if year_first else (False, True):
        try:
            found.add(tuple(dateparser.parse(text, default=d, dayfirst=dayfirst) for d in DATE_DEFAULTS))
        except (ValueError, OverflowError):
            continue
    return frozenset(found) or None


def canonical(value: Any) -> tuple | None:
    """What a value is compared by: (kind, value); None for no value (null, empty, punctuation only)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ("text", str(value).lower())
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, (list, dict)):
        return ("json", json.dumps(value, sort_keys=True, separators=(",", ":")).lower()) if value else None
    text = str(value)
    if (number := as_number(text)) is not None:
        return ("number", number)
    if not (normalised := normalise_text(text)):
        return None
    moments = readings(normalised)
    return ("moment", moments) if moments else ("text", normalised)


def same_value(a: Any, b: Any) -> bool:
    """Whether two values name the same thing (see the module's rule); no value equals nothing."""
    ka, kb = canonical(a), canonical(b)
    if ka is None or kb is None:
        return False
    if ka[0] == kb[0] == "moment":
        return bool(ka[1] & kb[1])
    return ka == kb
