"""The data audit on copies of the shipped data (restaurant8k-small and banking77) with one fault injected each.

Every fault is refused by `sweeper audit` and by `sweeper run` (exit 2, nothing written) with a message that
names the split and the rows; `--allow CODE` lets exactly that fault through and says it was allowed. The real
sweep that runs with an allowance (recorded in the store) is in tests/promotion/test_promotion_cli.py.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES, small_spec
from typer.testing import CliRunner

from sweeper.audit import audit, shingles, similar_pairs
from sweeper.cli import app
from sweeper.datasets import read_examples, read_file
from sweeper.spec import load_spec


# -- the data, copied and broken on purpose ---------------------------------------------------------
def copied_spec(tmp_path: Path, example: str, data_folder: str, ext: str) -> Path:
    spec = yaml.safe_load((EXAMPLES / example).read_text())
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES / "data" / data_folder, data)
    spec.update(name=f"{data_folder}-audit", storage={"root": str(tmp_path / "state")}, tracking={"mode": "none"},
                data={**spec["data"], **{role: str(data / f"{role}.{ext}") for role in ("train", "holdout", "test")}})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def banking_spec(tmp_path: Path) -> Path:
    return copied_spec(tmp_path, "banking77-minilm.yaml", "banking77", "csv")


def bookings_spec(tmp_path: Path) -> Path:
    return copied_spec(tmp_path, "bookings-minilm.yaml", "bookings", "jsonl")


class Restaurant8k:
    """restaurant8k JSON records: a text per record, slots as character spans."""

    name, spec, ext = "restaurant8k", staticmethod(small_spec), "json"

    @staticmethod
    def load(path):
        return json.loads(path.read_text())

    @staticmethod
    def save(path, rows):
        path.write_text(json.dumps(rows))

    @staticmethod
    def text(row):
        return row["userInput"]["text"]

    @staticmethod
    def with_text(row, text):
        return {**row, "userInput": {"text": text}}

    @staticmethod
    def with_unseen_label(rows):
        rows.append({"userInput": {"text": "A table on the terrace please"},
                     "labels": [{"slot": "table_area", "valueSpan": {"startIndex": 15, "endIndex": 22}}]})
        return "'table_area' (1 row(s))"

    @staticmethod
    def blank(rows, i):
        rows[i] = Restaurant8k.with_text(rows[i], "   ")
        return f"holdout record {i}: userInput.text is missing or empty"

    @staticmethod
    def row_name(i):
        return f"record {i}"


class Banking77:
    """banking77 CSV rows: text and category."""

    name, spec, ext = "banking77", staticmethod(banking_spec), "csv"

    @staticmethod
    def load(path):
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    @staticmethod
    def save(path, rows):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, ["text", "category"])
            writer.writeheader()
            writer.writerows(rows)

    @staticmethod
    def text(row):
        return row["text"]

    @staticmethod
    def with_text(row, text):
        return {**row, "text": text}

    @staticmethod
    def with_unseen_label(rows):
        rows.append({"text": "Where is the parcel I ordered to my flat?", "category": "parcel_tracking"})
        return "'parcel_tracking' (1 row(s))"

    @staticmethod
    def blank(rows, i):
        rows[i] = {**rows[i], "text": ""}
        return f"holdout line {i + 2}: empty text or label"

    @staticmethod
    def row_name(i):
        return f"line {i + 2}"  # the header is line 1


class Bookings:
    """Extraction JSON lines of a schema of their own: {"text", "fields": {name: value or null}}."""

    name, spec, ext = "bookings", staticmethod(bookings_spec), "jsonl"

    @staticmethod
    def load(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    @staticmethod
    def save(path, rows):
        path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")

    @staticmethod
    def text(row):
        return row["text"]

    @staticmethod
    def with_text(row, text):
        return {**row, "text": text}

    @staticmethod
    def with_unseen_label(rows):
        rows.append({"text": "A table on the terrace please", "fields": {"party_size": None, "table_area": "terrace"}})
        return "'table_area' (1 row(s))"

    @staticmethod
    def blank(rows, i):
        rows[i] = {**rows[i], "text": " "}
        return f"holdout line {i + 1}: empty text"

    @staticmethod
    def row_name(i):
        return f"line {i + 1}"


def one_char_changed(text: str) -> str:
    i = len(text) // 2
    return text[:i] + ("x" if text[i] != "x" else "y") + text[i + 1 :]


def inject(kind, folder: Path, fault: str) -> tuple[str, list[str]]:
    """Break one split of the copied data; returns the refusal code and fragments its report must contain."""
    files = {role: folder / f"{role}.{kind.ext}" for role in ("train", "holdout", "test")}
    rows = {role: kind.load(path) for role, path in files.items()}
    train, holdout, test = rows["train"], rows["holdout"], rows["test"]
    if fault == "overlap":
        test.append(train[3])
        expected = ("overlap", ["data.train and data.test: 1 example(s) in both splits",
                                f"test {kind.row_name(len(test) - 1)}", f"train {kind.row_name(3)}"])
    elif fault == "overlap-normalised":  # case and punctuation differ: the same example all the same
        holdout.append(kind.with_text(train[5], kind.text(train[5]).upper() + " !!"))
        expected = ("overlap", ["data.train and data.holdout: 1 example(s) in both splits",
                                f"holdout {kind.row_name(len(holdout) - 1)}"])
    elif fault == "near-duplicate":  # the longest train text with one character changed
        longest = max(range(len(train)), key=lambda i: len(kind.text(train[i])))
        test.append(kind.with_text(train[longest], one_char_changed(kind.text(train[longest]))))
        expected = ("near-duplicate", ["data.train and data.test: 1 near-duplicate pair(s)",
                                       f"train {kind.row_name(longest)}", "Jaccard 0.9"])
    elif fault == "tiny-holdout":
        keep = len(train) // 20  # 5% of train
        del holdout[keep:]
        expected = ("small-holdout", [f"data.holdout: {keep} rows is", f"of train ({len(train)} rows)",
                                      "below the minimum of 10%"])
    elif fault == "empty-rows":
        expected = ("empty-rows", ["data.holdout: 1 empty row(s)", kind.blank(holdout, 2)])
    elif fault == "unseen-label":
        expected = ("unseen-label", ["data.test: label(s) not in train:", kind.with_unseen_label(test)])
    for role, path in files.items():
        kind.save(path, rows[role])
    return expected


FAULTS = ["overlap", "overlap-normalised", "near-duplicate", "tiny-holdout", "empty-rows", "unseen-label"]
KINDS = [Restaurant8k, Banking77, Bookings]


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def broken(tmp_path, request):
    kind, fault = request.param
    spec = kind.spec(tmp_path)
    code, fragments = inject(kind, tmp_path / "data", fault)
    return spec, code, fragments


CASES = [(kind, fault) for kind in KINDS for fault in FAULTS]
IDS = [f"{kind.name}-{fault}" for kind, fault in CASES]


@pytest.mark.parametrize("broken", CASES, ids=IDS, indirect=True)
def test_each_fault_is_refused_by_audit_and_run_with_the_rows_named(broken, tmp_path, monkeypatch):
    spec, code, fragments = broken
    monkeypatch.chdir(tmp_path)
    for command in ("audit", "run"):
        exit_code, output = cli(command, spec)
        assert exit_code == 2, output
        assert f"refused [{code}]" in output, output
        for fragment in fragments:
            assert fragment in output, (fragment, output)
        assert f"--allow {code}" in output  # the report says how to launch anyway
        assert "Traceback" not in output
    assert not (tmp_path / "state").exists(), "a refused audit must write nothing"
    assert not (tmp_path / ".sweeper").exists()


@pytest.mark.parametrize("broken", CASES, ids=IDS, indirect=True)
def test_allowing_the_fault_lets_it_through_and_says_so(broken):
    spec, code, fragments = broken
    exit_code, output = cli("audit", spec, "--allow", code)
    assert exit_code == 0, output
    assert f"allowed [{code}]" in output and f"allowed by the user: {code}" in output
    assert fragments[0] in output  # still reported, just not blocking


def test_allowance_in_the_spec_counts_like_the_flag(tmp_path):
    spec = small_spec(tmp_path, audit={"allow": ["overlap"]})
    inject(Restaurant8k, tmp_path / "data", "overlap")
    report = audit(load_spec(spec), {"near-duplicate"})
    assert report.passed and report.allowed == ["near-duplicate", "overlap"]
    assert [f.code for f in report.refusals] == ["overlap"]
    assert report.to_dict()["passed"] is True and report.to_dict()["allowed"] == ["near-duplicate", "overlap"]


def test_a_pairwise_allowance_lets_through_that_pair_of_splits_only(tmp_path):
    # an official test set sharing templates with train may be allowed; the same between train and holdout is not
    spec = bookings_spec(tmp_path)
    inject(Bookings, tmp_path / "data", "near-duplicate")  # train ~ test
    holdout = Bookings.load(tmp_path / "data" / "holdout.jsonl")
    train = Bookings.load(tmp_path / "data" / "train.jsonl")
    second = sorted(range(len(train)), key=lambda i: -len(train[i]["text"]))[1]
    holdout.append(Bookings.with_text(train[second], one_char_changed(train[second]["text"])))
    Bookings.save(tmp_path / "data" / "holdout.jsonl", holdout)

    exit_code, output = cli("audit", spec, "--allow", "near-duplicate:test-train")  # either order
    assert exit_code == 2
    assert "allowed [near-duplicate] data.train and data.test: 1 near-duplicate pair(s)" in output
    assert "refused [near-duplicate] data.train and data.holdout: 1 near-duplicate pair(s)" in output
    assert "allowed by the user: near-duplicate:train-test" in output
    assert "--allow near-duplicate:train-holdout" in output  # the narrowest allowance that would let it through
    report = audit(load_spec(spec), {"near-duplicate:train-test", "near-duplicate:train-holdout"})
    assert report.passed and report.allowed == ["near-duplicate:train-holdout", "near-duplicate:train-test"]


@pytest.mark.parametrize("value, problem", [
    ("near-duplicate:train-train", "name two different splits of train, holdout, test"),
    ("overlap:train-dev", "name two different splits"),
    ("small-holdout:train-test", "small-holdout is not found between two splits"),
    ("near_duplicate", "not an audit code"),
])
def test_a_bad_allowance_is_refused_naming_what_to_write(tmp_path, value, problem):
    exit_code, output = cli("audit", small_spec(tmp_path), "--allow", value)
    assert exit_code == 2 and problem in output
    spec = yaml.safe_load(small_spec(tmp_path).read_text())
    spec["audit"] = {"allow": [value]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    exit_code, output = cli("validate", tmp_path / "bad.yaml")
    assert exit_code == 2 and "audit.allow.0" in output and problem in output


def test_values_a_tagger_cannot_find_in_their_text_are_reported_field_by_field(tmp_path):
    spec = bookings_spec(tmp_path)
    train = Bookings.load(tmp_path / "data" / "train.jsonl")
    train[0] = {"text": "A table for four people on Friday", "fields": {"party_size": 4, "date": "friday",
                                                                         "time": None, "guest_name": None}}
    train[1] = {"text": "Dinner at 7 for 2 on\nMarch 5", "fields": {"party_size": 2.0, "date": "march 5",
                                                                    "time": "7", "guest_name": None}}
    Bookings.save(tmp_path / "data" / "train.jsonl", train)
    report = audit(load_spec(spec))
    assert report.passed  # a warning: the rows still train what can be found
    finding = next(w for w in report.warnings if w.code == "unlocated-values" and "data.train" in w.message)
    # the shipped train file has 6 (restaurant8k's time spans inside date spans); "four" is not 4 makes a 7th, while
    # "friday" (case), "march 5" (a line break) and 2.0 (written "2") are found
    assert "data.train: 7 value(s)" in finding.message and "party_size 1," in finding.message
    assert finding.rows[0] == "train line 1 'A table for four people on Friday': party_size=4 (not in the text)"
    causal = yaml.safe_load(spec.read_text())
    causal.update(task="causal_lm_sft", model={"path": "smollm2-135m", "max_seq_length": 192})
    spec.write_text(yaml.safe_dump(causal))
    assert "unlocated-values" not in {w.code for w in audit(load_spec(spec)).warnings}  # a causal LM writes values


def test_an_unknown_allow_code_is_refused(tmp_path):
    exit_code, output = cli("audit", small_spec(tmp_path), "--allow", "everything")
    assert exit_code == 2 and "not an audit code" in output and "near-duplicate" in output


def test_a_split_with_only_empty_rows_cannot_be_allowed(tmp_path):
    spec = small_spec(tmp_path)
    Restaurant8k.save(tmp_path / "data" / "holdout.json", [{"userInput": {"text": ""}, "labels": []}])
    exit_code, output = cli("audit", spec, "--allow", "empty-rows", "--allow", "small-holdout")
    assert exit_code == 2 and "data.holdout:" in output and "no usable rows" in output


def test_warnings_do_not_block(tmp_path):
    spec_path = small_spec(tmp_path)
    spec = yaml.safe_load(spec_path.read_text())
    del spec["data"]["test"]
    spec_path.write_text(yaml.safe_dump(spec))
    train = Restaurant8k.load(tmp_path / "data" / "train.json")
    repeated = Restaurant8k.with_text(train[0], Restaurant8k.text(train[0]) + ".")
    Restaurant8k.save(tmp_path / "data" / "train.json", train + [repeated])
    report = audit(load_spec(spec_path))
    assert report.passed and not report.refusals
    assert {w.code for w in report.warnings} == {"duplicates", "no-test-split"}
    assert "train record 96" in report.warnings[0].rows[0]


def test_label_imbalance_is_a_warning(tmp_path):
    spec = banking_spec(tmp_path)
    train = Banking77.load(tmp_path / "data" / "train.csv")
    rare = train[0]["category"]
    kept = [r for r in train if r["category"] != rare] + [next(r for r in train if r["category"] == rare)]
    Banking77.save(tmp_path / "data" / "train.csv", kept)
    report = audit(load_spec(spec))
    imbalance = next(w for w in report.warnings if w.code == "label-imbalance")
    assert f"{rare!r} only 1" in imbalance.message
    assert report.passed


# -- files that crashed the readers (issue 16): refused with the split, the file and the row named -----
UNREADABLE = {
    "labels-a-number": ([{"userInput": {"text": "for 4"}, "labels": 5}], "record 0: labels must be a list"),
    "span-null": ([{"userInput": {"text": "for 4"}, "labels": [{"slot": "people", "valueSpan": None}]}],
                  "record 0: each label needs a string slot and integer valueSpan indices"),
    "deeply-nested": ("[" * 5000 + "]" * 5000, "JSON nested too deeply"),
    "huge-number": ("[" + "1" * 5000 + "]", "not usable JSON"),
}


@pytest.mark.parametrize("content, fragment", UNREADABLE.values(), ids=list(UNREADABLE))
def test_an_unreadable_split_is_refused_by_audit_and_run(content, fragment, tmp_path, monkeypatch):
    spec = small_spec(tmp_path)
    holdout = tmp_path / "data" / "holdout.json"
    holdout.write_text(content if isinstance(content, str) else json.dumps(content))
    monkeypatch.chdir(tmp_path)
    for command in ("audit", "run"):
        exit_code, output = cli(command, spec)
        assert exit_code == 2, output
        assert "data.holdout:" in output and "holdout.json" in output and fragment in output, output
        assert "Traceback" not in output
    assert not (tmp_path / "state").exists() and not (tmp_path / ".sweeper").exists()


def test_a_directory_as_a_split_is_named_a_directory(tmp_path, monkeypatch):
    spec = small_spec(tmp_path)
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["train"] = str(tmp_path / "data")
    spec.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "audit", "run"):
        exit_code, output = cli(command, spec)
        assert exit_code == 2 and "data.train: file is a directory" in output, output
    assert not (tmp_path / "state").exists()


def test_a_csv_with_a_byte_order_mark_is_read_like_one_without(tmp_path):
    spec = banking_spec(tmp_path)
    plain = read_examples(tmp_path / "data" / "train.csv", "csv")
    for role in ("train", "holdout", "test"):
        path = tmp_path / "data" / f"{role}.csv"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Excel's "CSV UTF-8" writes it
    assert read_examples(tmp_path / "data" / "train.csv", "csv") == plain
    exit_code, output = cli("audit", spec)
    assert exit_code == 0, output


def test_a_line_separator_inside_a_row_does_not_split_it(tmp_path):
    """U+2028 and a quoted newline are text, not row breaks; the row keeps its own line number."""
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"instruction": "a\u2028b", "response": "c"}\n', encoding="utf-8")
    assert [e.prompt for e in read_examples(jsonl, "jsonl")] == ["a\u2028b"]
    rows = tmp_path / "rows.csv"
    rows.write_text('text,label\n"two\nlines",x\nplain\u2028text,y\n', encoding="utf-8")
    data = read_file(rows, "csv")
    assert [e.text for e in data.examples] == ["two\nlines", "plain\u2028text"] and data.rows == ["line 3", "line 4"]


# -- the shipped data, and the near-duplicate threshold measured on it --------------------------------
@pytest.mark.parametrize("spec", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_examples_pass_the_audit_with_nothing_to_allow(spec):
    report = audit(load_spec(spec))
    assert report.passed and report.refusals == [], report.lines()


def test_the_default_threshold_sits_above_the_natural_paraphrases_of_the_shipped_data():
    # Measured: the closest cross-split pairs of the shipped data are paraphrases one word apart, at 0.904-0.911
    # ("What's the address ..." / "What is the address ..."); a one-character edit of a text longer than ~70
    # characters scores above 0.92 (see the near-duplicate faults above), so 0.92 separates the two.
    closest = []
    for folder, fmt, ext in (("restaurant8k", "restaurant8k", "json"), ("banking77", "csv", "csv")):
        sets = {r: [shingles(e.text) for e in read_examples(EXAMPLES / "data" / folder / f"{r}.{ext}", fmt)]
                for r in ("train", "holdout", "test")}
        for a, b in (("train", "holdout"), ("train", "test"), ("holdout", "test")):
            closest += [sim for _, _, sim in similar_pairs(sets[a], sets[b], 0.9)]
    default = load_spec(EXAMPLES / "banking77-minilm.yaml").audit.near_duplicate_threshold
    assert len(closest) == 3 and max(closest) < default == 0.92


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_similar_pairs_finds_exactly_what_comparing_every_pair_finds(threshold):
    left = [shingles(e.text) for e in read_examples(EXAMPLES / "data" / "restaurant8k" / "train.json", "restaurant8k")]
    right = [shingles(e.text) for e in read_examples(EXAMPLES / "data" / "restaurant8k" / "test.json", "restaurant8k")]
    every_pair = {(i, j) for i, a in enumerate(left) for j, b in enumerate(right)
                  if len(a & b) / len(a | b) >= threshold}
    assert {(i, j) for i, j, _ in similar_pairs(left, right, threshold)} == every_pair
    assert every_pair  # the comparison is not vacuous
