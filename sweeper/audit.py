"""The data audit: run before every sweep (and by `sweeper audit SPEC`); a refused audit launches nothing.

Three roles: train, holdout (early stopping and trial selection) and test (promotion only; the search
never sees it). The audit refuses a sweep, naming the rows, when

- `small-holdout`:  the holdout has fewer rows than `audit.min_holdout_fraction` of train (default 10%);
- `overlap`:        an example is in two splits, exactly or after normalising case, whitespace and punctuation;
- `near-duplicate`: two splits hold texts whose character 3-gram Jaccard is >= `audit.near_duplicate_threshold`;
- `empty-rows`:     a split has rows with no text or no label (an unparseable file is a `DataError` at once);
- `unseen-label`:   a class or field in the holdout or test never occurs in train.

Each refusal can be let through with `--allow CODE` (or `audit.allow:` in the spec); `overlap` and
`near-duplicate` can be let through for one pair of splits only (`--allow near-duplicate:train-test`: an official
test set sharing templates with train, while train and holdout stay refused). The allowance is recorded with the
sweep's report. Duplicates inside a split, label imbalance, a missing test split and, for a task that tags spans,
extraction values that cannot be found in their text are warnings.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations

from sweeper.datasets import (
    FIELDS_EXAMPLES,
    DataChanged,
    DataError,
    DataFile,
    Example,
    ExtractionExample,
    LabeledExample,
    fingerprint,
    read_split_files,
)
from sweeper.locate import locate
from sweeper.spec import Spec, check_allowance
from trainers import get_task

SHOWN = 10  # rows named per finding; the count says how many there are in all
SHINGLE = 3  # characters per shingle for near-duplicate detection
IMBALANCE_RATIO = 10  # most / least frequent train label at which the audit warns


def normalise(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: `Book a table!` == `book a  table`."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def shingles(text: str) -> frozenset[str]:
    padded = f" {normalise(text)} "  # padding lets the first and last characters count in short texts
    return frozenset(padded[i : i + SHINGLE] for i in range(max(1, len(padded) - SHINGLE + 1)))


def labels_of(example: Example) -> set[str]:
    """The class of a labelled example, the fields of a tagged one (prompt/response rows have none)."""
    if isinstance(example, LabeledExample):
        return {example.label}
    if isinstance(example, FIELDS_EXAMPLES):
        return set(example.fields())  # the fields it gives (a null is no label)
    return set()


@dataclass
class Finding:
    code: str
    message: str
    count: int = 0
    rows: list[str] = field(default_factory=list)  # the first SHOWN, each naming split, row and text
    between: str = ""  # "train-test": the pair of splits a pairwise finding is about

    @property
    def allowance(self) -> str:
        """The narrowest `--allow` that lets this finding through."""
        return f"{self.code}:{self.between}" if self.between else self.code


@dataclass
class AuditReport:
    splits: dict[str, int]  # usable rows per split
    refusals: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)  # refusal codes the user let through
    fingerprints: dict[str, dict] = field(default_factory=dict)  # role -> {path, sha256} of the files audited

    def is_allowed(self, finding: Finding) -> bool:
        return finding.code in self.allowed or finding.allowance in self.allowed

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.refusals if not self.is_allowed(f)]

    @property
    def passed(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def lines(self) -> list[str]:
        sizes = ", ".join(f"{role} {n} rows" for role, n in self.splits.items())
        verdict = "passed" if self.passed else f"REFUSED ({len(self.blocking)} problem(s))"
        out = [f"data audit {verdict}: {sizes}"]
        for finding in self.refusals:
            tag = "allowed" if self.is_allowed(finding) else "refused"
            out += _finding_lines(f"{tag} [{finding.code}]", finding)
        for finding in self.warnings:
            out += _finding_lines(f"warning [{finding.code}]", finding)
        if self.allowed:
            out.append(f"allowed by the user: {', '.join(self.allowed)} (recorded with the sweep)")
        if not self.passed:
            codes = " ".join(f"--allow {c}" for c in dict.fromkeys(f.allowance for f in self.blocking))
            out.append(f"fix the data, or launch anyway with {codes} (or list the codes under `audit.allow:`)")
        return out


def _finding_lines(tag: str, finding: Finding) -> list[str]:
    lines = [f"{tag} {finding.message}"] + [f"    {row}" for row in finding.rows]
    if finding.count > len(finding.rows):
        lines.append(f"    ... and {finding.count - len(finding.rows)} more")
    return lines


class AuditRefused(Exception):
    """The audit refused the sweep; `report` says why, row by row."""

    def __init__(self, report: AuditReport):
        self.report = report
        super().__init__("\n".join(report.lines()))


def allowances(codes) -> frozenset[str]:
    """`--allow` values checked and in their canonical form; ValueError naming the first bad one."""
    try:
        return frozenset(check_allowance(c) for c in codes)
    except ValueError as exc:
        raise ValueError(f"--allow {exc}") from None


def audit(spec: Spec, allow: set[str] | frozenset[str] = frozenset()) -> AuditReport:
    """Read every split and check it; raises DataError for a file that cannot be read at all."""
    allow = allowances(allow)
    fingerprints = data_fingerprints(spec.data)  # before the read: a file replaced meanwhile fails the trials' check
    splits = read_split_files(spec.data)
    for role, data in splits.items():
        if not data.examples:
            first = f" ({data.empty_rows[0]})" if data.empty_rows else ""
            raise DataError(f"data.{role}: {getattr(spec.data, role)}: no usable rows{first}")
    _check_rows_fit(spec, splits)
    settings = spec.audit
    report = AuditReport({role: len(data.examples) for role, data in splits.items()},
                         allowed=sorted(set(settings.allow) | set(allow)), fingerprints=fingerprints)
    report.refusals += _empty_rows(splits, spec)
    report.refusals += _small_holdout(splits, settings.min_holdout_fraction)
    report.refusals += _overlaps(splits)
    report.refusals += _near_duplicates(splits, settings.near_duplicate_threshold)
    report.refusals += _unseen_labels(splits)
    report.warnings += _duplicates_inside(splits) + _imbalance(splits["train"]) + _no_test(splits)
    if get_task(spec.task).spans:
        report.warnings += _unlocated_values(splits)
    return report


def _check_rows_fit(spec: Spec, splits: dict[str, DataFile]) -> None:
    """A task that writes answers (a causal LM) refuses rows whose prompt and answer exceed max_seq_length: found
    here, once, rather than by every trial. Loads the model's tokenizer only."""
    task = get_task(spec.task)
    if not task.prompted:
        return
    from trainers.models import resolve_model

    problems = task.load().data_problems(resolve_model(spec.model.path), spec.model.max_seq_length,
                                         spec.data.prompt_template, splits)
    if problems:
        raise DataError("\n".join(problems))


# -- refusals ----------------------------------------------------------------------------------------
def _where(role: str, data: DataFile, i: int) -> str:
    return f"{role} {data.rows[i]} {_quote(data.examples[i].text)}"


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _empty_rows(splits: dict[str, DataFile], spec: Spec) -> list[Finding]:
    return [Finding("empty-rows", f"data.{role}: {len(data.empty_rows)} empty row(s) in {getattr(spec.data, role)}; "
                                  "remove or fill them",
                    len(data.empty_rows), [f"{role} {row}" for row in data.empty_rows[:SHOWN]])
            for role, data in splits.items() if data.empty_rows]


def _small_holdout(splits: dict[str, DataFile], minimum: float) -> list[Finding]:
    n_train, n_holdout = len(splits["train"].examples), len(splits["holdout"].examples)
    if n_holdout >= minimum * n_train:
        return []
    return [Finding("small-holdout", f"data.holdout: {n_holdout} rows is {n_holdout / n_train:.1%} of train "
                                     f"({n_train} rows), below the minimum of {minimum:.0%} "
                                     "(audit.min_holdout_fraction): trial selection on so few rows is noise; "
                                     "move rows from train to the holdout", n_holdout)]


def _pairs_of_splits(splits: dict[str, DataFile]):
    return combinations([role for role in ("train", "holdout", "test") if role in splits], 2)


def _overlaps(splits: dict[str, DataFile]) -> list[Finding]:
    findings = []
    for a, b in _pairs_of_splits(splits):
        index = defaultdict(list)
        for i, example in enumerate(splits[a].examples):
            index[normalise(example.text)].append(i)
        rows = [f"{_where(b, splits[b], j)} = {_where(a, splits[a], index[normalise(e.text)][0])}"
                for j, e in enumerate(splits[b].examples) if normalise(e.text) in index]
        if rows:
            findings.append(Finding("overlap", f"data.{a} and data.{b}: {len(rows)} example(s) in both splits "
                                               "(exactly or after normalising case, whitespace and punctuation); "
                                               f"remove them from data.{b}", len(rows), rows[:SHOWN], f"{a}-{b}"))
    return findings


def _near_duplicates(splits: dict[str, DataFile], threshold: float) -> list[Finding]:
    findings = []
    sets = {role: [shingles(e.text) for e in data.examples] for role, data in splits.items()}
    for a, b in _pairs_of_splits(splits):
        pairs = [(j, i, sim) for i, j, sim in similar_pairs(sets[a], sets[b], threshold)
                 if sim < 1.0 or normalise(splits[a].examples[i].text) != normalise(splits[b].examples[j].text)]
        if pairs:  # identical after normalisation is an overlap, reported above
            pairs.sort(key=lambda p: -p[2])
            rows = [f"{_where(b, splits[b], j)} ~ {_where(a, splits[a], i)} (Jaccard {sim:.3f})" for j, i, sim in pairs]
            findings.append(Finding("near-duplicate", f"data.{a} and data.{b}: {len(pairs)} near-duplicate pair(s) "
                                                      f"(character {SHINGLE}-gram Jaccard >= {threshold:g}); remove "
                                                      f"one of each pair from data.{b}", len(pairs), rows[:SHOWN],
                                    f"{a}-{b}"))
    return findings


def similar_pairs(left: list[frozenset], right: list[frozenset], threshold: float) -> list[tuple[int, int, float]]:
    """Every (i, j, Jaccard) with Jaccard(left[i], right[j]) >= threshold: exact, not sampled (no MinHash).

    Prefix filtering: order each set's shingles rarest first; two sets with Jaccard >= t share one of the
    first |s| - ceil(t |s|) + 1 shingles of each, so only pairs sharing such a shingle are compared.
    """
    frequency = Counter(s for sets in (left, right) for shingle_set in sets for s in shingle_set)

    def prefix(shingle_set: frozenset) -> list[str]:
        ordered = sorted(shingle_set, key=lambda s: (frequency[s], s))
        return ordered[: len(ordered) - math.ceil(threshold * len(ordered) - 1e-9) + 1]

    index = defaultdict(list)
    for j, shingle_set in enumerate(right):
        for s in prefix(shingle_set):
            index[s].append(j)
    found = []
    for i, shingle_set in enumerate(left):
        for j in sorted({j for s in prefix(shingle_set) for j in index[s]}):
            similarity = len(shingle_set & right[j]) / len(shingle_set | right[j])
            if similarity >= threshold:
                found.append((i, j, similarity))
    return found


def _unseen_labels(splits: dict[str, DataFile]) -> list[Finding]:
    known = {label for e in splits["train"].examples for label in labels_of(e)}
    findings = []
    for role in ("holdout", "test"):
        if role not in splits:
            continue
        data = splits[role]
        rows = defaultdict(list)
        for i, example in enumerate(data.examples):
            for label in sorted(labels_of(example) - known):
                rows[label].append(i)
        if rows:
            names = ", ".join(f"{label!r} ({len(idx)} row(s))" for label, idx in sorted(rows.items()))
            shown = [f"{_where(role, data, i)}: {label!r}" for label, idx in sorted(rows.items()) for i in idx]
            findings.append(Finding("unseen-label", f"data.{role}: label(s) not in train: {names}; the model can "
                                                    "never learn them; add train rows or drop these",
                                    len(shown), shown[:SHOWN]))
    return findings


# -- warnings ----------------------------------------------------------------------------------------
def _duplicates_inside(splits: dict[str, DataFile]) -> list[Finding]:
    findings = []
    for role, data in splits.items():
        first: dict[str, int] = {}
        rows = []
        for i, example in enumerate(data.examples):
            key = normalise(example.text)
            if key in first:
                rows.append(f"{_where(role, data, i)} = {data.rows[first[key]]}")
            else:
                first[key] = i
        if rows:
            findings.append(Finding("duplicates", f"data.{role}: {len(rows)} row(s) repeat an earlier row of the same "
                                                  "split (after normalisation); they weigh double", len(rows),
                                    rows[:SHOWN]))
    return findings


def _imbalance(train: DataFile) -> list[Finding]:
    counts = Counter(label for e in train.examples for label in labels_of(e))
    if len(counts) < 2:
        return []
    (top, most), (rare, least) = counts.most_common()[0], counts.most_common()[-1]
    if most < IMBALANCE_RATIO * least:
        return []
    return [Finding("label-imbalance", f"data.train: label {top!r} has {most} rows, {rare!r} only {least} "
                                       f"({most / least:.0f}x); per-label scores of rare labels will be noisy",
                    len(counts), [f"{label}: {n}" for label, n in counts.most_common()][:SHOWN])]


def _unlocated_values(splits: dict[str, DataFile]) -> list[Finding]:
    """Extraction values a span tagger cannot learn or find: not in their text, even ignoring case and spacing.
    They still count as gold when the tagger is scored, so they cap its recall."""
    findings = []
    for role, data in splits.items():
        per_field, rows = Counter(), []
        for i, example in enumerate(data.examples):
            if isinstance(example, ExtractionExample):
                for name, value, why in locate(example)[1]:
                    per_field[name] += 1
                    rows.append(f"{_where(role, data, i)}: {name}={value!r} ({why})")
        if per_field:
            located = sum(len(e.fields()) for e in data.examples) - len(rows)
            counts = ", ".join(f"{name} {n}" for name, n in per_field.most_common())
            findings.append(Finding("unlocated-values", f"data.{role}: {len(rows)} value(s) not found in their text or only "
                                                        "inside another field's value "
                                                        f"({counts}; {located} found): a span tagger cannot learn them "
                                                        "and they count as misses when it is scored; write values as "
                                                        "the text has them, or use a causal LM",
                                    len(rows), rows[:SHOWN]))
    return findings


def _no_test(splits: dict[str, DataFile]) -> list[Finding]:
    if "test" in splits:
        return []
    return [Finding("no-test-split", "no data.test: promotion can then only be checked on the holdout, the data "
                                     "the trials were selected on, and will say so")]


# -- fingerprints: the trials, resumes, exports and re-runs use the files the audit read, or refuse --------
def data_fingerprints(data) -> dict[str, dict]:
    """{role: {path, sha256}} of each data file; an unreadable one is left to the readers to explain."""
    found = {}
    for role in ("train", "holdout", "test"):
        path = getattr(data, role)
        if path is None:
            continue
        try:
            found[role] = {"path": str(path), "sha256": fingerprint(path)}
        except OSError:
            continue  # missing or unreadable: the readers say which and why
    return found


def audited_sha256(audit: dict | None) -> dict[str, str] | None:
    """{role: sha256} of a stored audit report; None when it has none (recorded before fingerprints were)."""
    entries = (audit or {}).get("fingerprints")
    return {role: entry["sha256"] for role, entry in entries.items()} if entries else None


def recorded_sha256(database_url: str, sweep_name: str) -> dict[str, str] | None:
    """The audited SHA-256 of each data file as stored with the sweep (None: no sweep or audit recorded)."""
    from sweeper import migrations
    from sweeper.store import TrialStore

    store = TrialStore(database_url)
    try:
        sweep = store.get_sweep(sweep_name) if migrations.schema_state(store.engine) != "missing" else None
    finally:
        store.engine.dispose()
    return audited_sha256(sweep.audit) if sweep else None


def check_same_data(recorded: dict | None, report: AuditReport) -> None:
    """A resumed sweep must go on with the data its trials started on: DataChanged for the first file whose
    SHA-256 differs from the one recorded with the sweep."""
    expected, now = audited_sha256(recorded) or {}, audited_sha256({"fingerprints": report.fingerprints}) or {}
    for role, sha256 in expected.items():
        if role in now and now[role] != sha256:
            raise DataChanged.of(report.fingerprints[role]["path"], sha256, now[role])
