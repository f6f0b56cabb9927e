"""`sweeper report` on a store with known trials and a real Optuna study in the same database (no training)."""

from __future__ import annotations

import base64
import io
import math
import struct
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from sweeper import report
from sweeper.cli import app
from sweeper.compare import trial_rows
from sweeper.store import TrialStore
from trainers.base import RoundRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr", "area", "base", "embed", "param", "track"}
DISTRIBUTIONS = {
    "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
    "batch_size": optuna.distributions.CategoricalDistribution([16, 32]),
    "lora_r": optuna.distributions.CategoricalDistribution([8, 16]),
    "warmup_ratio": optuna.distributions.FloatDistribution(0.0, 0.1),
}
# (status, stop reason, rounds of (eval_loss, f1_micro)): early-stopped and ASHA-stopped trials included.
OUTCOMES = [
    ("completed", "completed", [(1.2, 0.30), (0.9, 0.50), (0.8, 0.55), (0.78, 0.56)]),
    ("stopped", "asha", [(1.6, 0.10)]),
    ("early_stopped", "patience", [(1.1, 0.40), (0.95, 0.52), (1.0, 0.50)]),
    ("completed", "completed", [(1.0, 0.45), (0.7, 0.66), (0.6, 0.71), (0.62, 0.70)]),
    ("stopped", "asha", [(1.4, 0.20), (1.3, 0.25)]),
    ("early_stopped", "patience", [(1.05, 0.48), (0.9, 0.58), (0.92, 0.57)]),
    ("completed", "completed", [(1.3, 0.28), (1.0, 0.40), (0.9, 0.47), (0.85, 0.49)]),
    ("failed", "error", []),
]


def make_sweep(url: str, name: str, outcomes: list, with_study: bool = True) -> None:
    """A sweep in the store and, optionally, its Optuna study (same DB, study name = sweep name)."""
    store = TrialStore(url)
    store.upgrade()
    store.open_sweep(name, {"name": name}, f"fp-{name}", "f1_micro", "max")
    study = optuna.create_study(study_name=name, storage=url, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=3)) if with_study else None
    for i, (status, reason, rounds) in enumerate(outcomes):
        if study is not None:
            trial = study.ask(DISTRIBUTIONS)
            params = dict(trial.params)
        else:
            params = {"learning_rate": 1e-3 * (i + 1), "batch_size": 16, "lora_r": 8, "warmup_ratio": 0.05}
        key = f"{name[:3]}{i:05d}"
        store.trial_started(name, key, params)
        for n, (loss, f1) in enumerate(rounds, start=1):
            store.round_reported(name, key, RoundRecord(n, {"eval_loss": loss, "f1_micro": f1}))
        store.trial_finished(name, key, status, reason, "boom" if status == "failed" else "")
        if study is not None:
            if rounds:
                study.tell(trial, max(f1 for _, f1 in rounds))
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
    store.engine.dispose()


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """One database for the module (the tests only read it): three sweeps, two with a study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path_factory.mktemp('report-db') / 'sweeper.db'}"
    make_sweep(url, "rich", OUTCOMES)
    make_sweep(url, "tiny", OUTCOMES[:3])  # 3 complete trials: too few for importance
    make_sweep(url, "bare", [], with_study=False)
    return url


def check_png(data: bytes) -> tuple[int, int]:
    """A well-formed PNG: signature, IHDR first with a plausible size, IEND last, decodes to that size."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    assert 300 <= width <= 4000 and 200 <= height <= 4000
    assert data.endswith(PNG_END)
    pixels = imread(io.BytesIO(data), format="png")
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.01  # not a blank canvas
    return width, height


class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.stack, self.urls, self.images, self.text = [], [], [], [], []
        self.rows: list[tuple[str | None, list[str]]] = []
        self._cells: list[str] | None = None
        self._row_class: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "action", "data", "poster", "srcset")]
        if tag == "img":
            self.images.append(attrs)
        if tag == "tr":
            self._cells, self._row_class = [], attrs.get("class")
        if tag == "td" and self._cells is not None:
            self._cells.append("")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "tr" and self._cells:
            self.rows.append((self._row_class, self._cells))
        if tag == "tr":
            self._cells = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cells:
            self._cells[-1] += data.strip()


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"
    return page


def check_page(path: Path, images: dict[str, Path]) -> Page:
    raw = path.read_text(encoding="utf-8")
    page = parse(path)
    assert {"html", "head", "title", "body", "h1"} <= set(page.tags)
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert "http://" not in raw and "https://" not in raw and "url(" not in raw  # nothing loaded from elsewhere
    assert all(u.startswith("data:image/png;base64,") for u in page.urls), page.urls
    embedded = [base64.b64decode(img["src"].split(",", 1)[1], validate=True) for img in page.images]
    assert len(embedded) == len(images)
    assert sorted(embedded) == sorted(p.read_bytes() for p in images.values())  # the same PNGs, inline
    for data in embedded:
        check_png(data)
    return page


def test_report_writes_plots_and_a_self_contained_page(db, tmp_path):
    out = tmp_path / "report"
    result = report.build_report(TrialStore(db), "rich", out)
    assert set(result.images) == set(report.PLOTS) and result.notes == {}
    for name, png in result.images.items():
        assert png == out / f"{name}.png"
        check_png(png.read_bytes())
    page = check_page(result.html, result.images)
    text = " ".join(page.text)
    data_rows = [r for r in page.rows if r[1] and r[1][0].startswith("ric")]
    assert len(data_rows) == len(OUTCOMES)
    best = [cells for cls, cells in data_rows if cls == "best"]
    assert len(best) == 1 and best[0][0] == "ric00003 *" and best[0][4] == "3"  # f1 0.71 at round 3
    assert "early_stopped" in text and "patience" in text and "asha" in text
    assert f"optuna-dashboard {db}" in text


def test_loss_curves_show_early_stopped_trials_apart(db):
    store = TrialStore(db)
    rows = trial_rows(store, ["rich"])
    fig = report.plot_curves(rows, store.rounds("rich"), "f1_micro")
    loss_axis, metric_axis = fig.axes[:2]
    curves = [line for line in loss_axis.get_lines() if len(line.get_xdata()) > 1]
    assert {line.get_linestyle() for line in curves} == {"-", "--", ":"}  # completed, early-stopped, ASHA-stopped
    ends = sorted(int(line.get_xdata()[-1]) for line in curves if line.get_linestyle() == "--")
    assert ends == [3, 3]  # both early-stopped trials end at their last round
    markers = {line.get_marker() for line in loss_axis.get_lines() if len(line.get_xdata()) == 1}
    assert "x" in markers  # the round where a stopped trial ended is marked
    assert len([line for line in metric_axis.get_lines() if len(line.get_xdata()) > 1]) == len(curves)


def test_importance_ranks_the_parameters_of_the_study(db):
    store = TrialStore(db)
    ranked = report.importances(report.load_study(store, "rich"))
    assert set(ranked) <= set(DISTRIBUTIONS) and len(ranked) >= 2
    assert math.isclose(sum(ranked.values()), 1.0, rel_tol=1e-6)
    assert list(ranked.values()) == sorted(ranked.values(), reverse=True)


def test_too_few_trials_becomes_a_note_not_a_crash(db, tmp_path):
    result = report.build_report(TrialStore(db), "tiny", tmp_path / "tiny")
    assert set(result.images) == {"optimisation_history", "holdout_loss", "parallel_coordinates"}
    assert "at least 4 complete trials" in result.notes["param_importance"] and "has 3" in result.notes["param_importance"]
    assert not (tmp_path / "tiny" / "param_importance.png").exists()
    page = check_page(result.html, result.images)
    assert "Not drawn: parameter importance needs at least 4 complete trials" in " ".join(page.text)

    bare = report.build_report(TrialStore(db), "bare", tmp_path / "bare")  # no trials, no study
    assert bare.images == {} and set(bare.notes) == set(report.PLOTS)
    assert "no Optuna study" in bare.notes["param_importance"]
    check_page(bare.html, {})


def test_report_cli(db, tmp_path):
    out = tmp_path / "cli-report"
    result = CliRunner().invoke(app, ["report", "rich", "--db", db, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"page: {out / 'report.html'}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{k}.png" for k in report.PLOTS), "report.html"])
    assert f"optuna-dashboard {db}" in result.stdout
    missing = CliRunner().invoke(app, ["report", "nope", "--db", db, "--out", str(out)])
    assert missing.exit_code == 2 and "no sweep named 'nope'" in missing.output
