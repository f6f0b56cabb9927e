"""The data a sweep trains on is the data its audit read: the audit records each file's SHA-256, every trial (and a
resume, an export, `sweeper train`) checks its files against it and refuses a file replaced since."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers import ray_tmp, small_spec

from sweeper import sweeps
from sweeper.audit import audit, check_same_data, recorded_sha256
from sweeper.datasets import DataChanged, read_examples
from sweeper.spec import load_spec
from sweeper.store import TrialStore
from trainers.base import DataFiles


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leak_a_holdout_row(spec) -> None:
    """Replace the train file with one that also holds a holdout row: valid data, and exactly what the audit refuses."""
    train, holdout = Path(spec.data.train), Path(spec.data.holdout)
    records = json.loads(train.read_text()) + json.loads(holdout.read_text())[:1]
    train.write_text(json.dumps(records))


@pytest.fixture
def spec(tmp_path):
    return load_spec(small_spec(tmp_path))


def test_the_audit_records_the_sha256_of_each_file_it_read(spec):
    report = audit(spec)
    assert report.to_dict()["fingerprints"] == {
        role: {"path": getattr(spec.data, role), "sha256": sha256(Path(getattr(spec.data, role)))}
        for role in ("train", "holdout", "test")}


def test_reading_a_replaced_file_names_it_the_hashes_and_what_to_do(spec):
    train = Path(spec.data.train)
    audited = sha256(train)
    assert read_examples(train, "restaurant8k", audited)  # unchanged: read as usual
    leak_a_holdout_row(spec)
    with pytest.raises(DataChanged) as caught:
        read_examples(train, "restaurant8k", audited)
    message = str(caught.value)
    assert message.startswith(f"{train}: changed since the sweep's data audit")
    assert audited in message and sha256(train) in message
    assert "sweeper audit" in message and "new sweep" in message and "\n" not in message
    train.write_text("not json")  # a replacement that does not even parse is still reported as replaced
    with pytest.raises(DataChanged):
        read_examples(train, "restaurant8k", audited)


def test_a_trial_config_checks_each_split_against_its_own_hash(spec):
    files = {role: getattr(spec.data, role) for role in ("train", "holdout", "test")}
    data = DataFiles(format="restaurant8k", **files, sha256={role: sha256(Path(p)) for role, p in files.items()})
    assert data.read("train") and data.read("holdout")
    Path(spec.data.holdout).write_text(Path(spec.data.holdout).read_text() + "\n")
    assert data.read("train")
    with pytest.raises(DataChanged, match="holdout"):
        data.read("holdout")
    assert DataFiles(format="restaurant8k", **files).read("holdout")  # no hashes (a hand-written config): no check


def test_a_resume_refuses_data_changed_since_the_sweep_started(spec):
    started = audit(spec).to_dict()
    check_same_data(started, audit(spec))
    check_same_data({"passed": True}, audit(spec))  # recorded before fingerprints existed: nothing to compare
    leak_a_holdout_row(spec)
    with pytest.raises(DataChanged, match="train.json: changed since"):
        check_same_data(started, audit(spec, {"overlap", "near-duplicate"}))


def test_the_controller_hands_each_trial_the_recorded_hashes(spec, tmp_path):
    from sweeper import controller

    assert recorded_sha256(spec.database_url(), spec.name) is None  # no store yet: nothing recorded
    store = sweeps.open_store(spec)
    store.open_sweep(spec.name, sweeps.stored_spec(spec), spec.fingerprint(), "f1_micro", "max")
    report = audit(spec)
    store.update_sweep(spec.name, audit=report.to_dict())
    store.engine.dispose()
    data = controller._job(spec, "/models/x", 1)["trial"]["data"]
    assert data["sha256"] == {role: entry["sha256"] for role, entry in report.fingerprints.items()}
    assert DataFiles.model_validate(data).sha256["train"] == sha256(Path(spec.data.train))


@pytest.mark.slow
def test_a_train_file_replaced_after_the_audit_fails_every_trial_with_that_cause(tmp_path, monkeypatch, ray_cleanup):
    """The real audit passes, then the train file is replaced before any trial starts: each trial (a Ray worker)
    refuses it when it reads its data, and the sweep ends `failed` saying so; nothing is exported."""
    spec = load_spec(small_spec(tmp_path, budget={"trials": 2, "max_concurrent": 2, "max_failures": 0}))
    train = Path(spec.data.train)
    audited = sha256(train)
    real_audit = sweeps.audit

    def audit_then_replace(spec, allow):
        report = real_audit(spec, allow)
        leak_a_holdout_row(spec)
        return report

    monkeypatch.setattr(sweeps, "audit", audit_then_replace)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp(tmp_path)))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))  # sweeps.run sets it for its process:
    monkeypatch.chdir(tmp_path)                                                # restored after this test
    outcome = sweeps.run(spec)

    assert outcome.status == "failed" and outcome.export is None
    store = TrialStore(spec.database_url())
    sweep = store.get_sweep(spec.name)
    assert sweep.status == "failed"
    assert sweep.message.startswith("all 2 trials failed; the first ended with: ")
    assert f"{train}: changed since the sweep's data audit: SHA-256 {sha256(train)}, audited {audited}" in sweep.message
    assert sweep.audit["fingerprints"]["train"]["sha256"] == audited
    errors = [t.error for t in store.trials(spec.name)]
    assert len(errors) == 2 and all("DataChanged" in e and audited in e for e in errors)
    assert not (tmp_path / "state" / "sweeps" / spec.name / "export").exists()
    store.engine.dispose()
