"""`sweeper export` writes only into a new or empty folder, or over a previous export (--force), and pairs the
record with the data the sweep's audit read. The sweep is written through TrialStore (no Ray, no training): a
finished trial whose best round's checkpoint holds a stand-in adapter."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from helpers import small_spec, synthetic_spec
from typer.testing import CliRunner

from sweeper import export
from sweeper.audit import audit
from sweeper.cli import app
from sweeper.export import MARKER, ExportError
from sweeper.spec import load_spec
from sweeper.store import TrialStore
from sweeper.sweeps import stored_spec
from sweeper.yaml_safe import load_yaml
from trainers.base import RoundRecord

NAME = "small-sweep"
HOLDOUT = {"eval_loss": 0.5, "f1_micro": 0.6}
PARAMS = {"learning_rate": 3e-4, "batch_size": 16, "num_epochs": 2, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
          "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05}


BOOKKEEPING = {"epoch": 0.5, "train_loss": 0.9, "stop_reason": "completed", "device": "cpu", "pid": 42}


@pytest.fixture
def sweep(tmp_path) -> dict:
    """A completed sweep in a SQLite store: its audit as `sweeper run` records it, one trial, one checkpoint."""
    return recorded_sweep(tmp_path, small_spec(tmp_path), BOOKKEEPING)


def recorded_sweep(tmp_path: Path, spec_path: Path, bookkeeping: dict, metrics: dict = HOLDOUT,
                   model_files: tuple[str, ...] = ("adapter_config.json", "adapter_model.safetensors")) -> dict:
    """The sweep of the `sweep` fixture, with its one round recorded with `bookkeeping` as a worker reported it."""
    spec = load_spec(spec_path)
    url = f"sqlite:///{tmp_path / 'state' / 'sweeper.db'}"
    store = TrialStore(url)
    store.upgrade()
    store.open_sweep(NAME, stored_spec(spec), spec.fingerprint(), spec.objective.metric, spec.objective.mode)
    store.update_sweep(NAME, audit=audit(spec).to_dict(), status="completed")
    checkpoint = tmp_path / "state" / "ray" / NAME / "t1" / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    for name in model_files:
        (checkpoint / name).write_text("{}")
    store.trial_started(NAME, "t1", PARAMS)
    store.round_reported(NAME, "t1", RoundRecord(1, metrics, bookkeeping), str(checkpoint))
    store.trial_finished(NAME, "t1", "completed", "completed")
    store.engine.dispose()
    return {"db": url, "spec": spec, "root": tmp_path}


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def listing(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes: to show nothing was touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_out_dot_in_a_working_folder_is_refused_and_leaves_everything(sweep, monkeypatch):
    work = sweep["root"]  # the store, Tune's checkpoints, the spec and the data all live here
    before = listing(work)
    assert "state/sweeper.db" in before and "spec.yaml" in before
    monkeypatch.chdir(work)
    result = cli("export", NAME, "--out", ".", "--db", sweep["db"])
    assert result.exit_code == 2, result.output
    assert "not empty and holds no export" in " ".join(result.output.split())
    assert listing(work) == before
    forced = cli("export", NAME, "--out", ".", "--force", "--db", sweep["db"])
    assert forced.exit_code == 2 and listing(work) == before


def test_a_foreign_folder_is_refused_with_or_without_force(sweep, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        result = cli("export", NAME, "--out", folder, "--db", sweep["db"], *extra)
        assert result.exit_code == 2 and "notes.txt" in result.output, result.output
    assert listing(folder) == {"notes.txt": hashlib.sha256(b"keep me").hexdigest()}


def test_force_replaces_a_previous_export_and_nothing_else(sweep, tmp_path):
    out = tmp_path / "winner"
    first = cli("export", NAME, "--out", out, "--db", sweep["db"])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "adapter", "winner.json", "winner.yaml"]
    assert json.loads((out / MARKER).read_text())["sweep"] == NAME
    (out / "winner.json").write_text("stale")
    (out / "adapter" / "left-over.bin").write_bytes(b"old")

    again = cli("export", NAME, "--out", out, "--db", sweep["db"])
    assert again.exit_code == 2 and "--force" in again.output, again.output
    assert (out / "winner.json").read_text() == "stale"

    forced = cli("export", NAME, "--out", out, "--force", "--db", sweep["db"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "winner.json").read_text())["sweep"] == NAME
    assert not (out / "adapter" / "left-over.bin").exists()  # inside the export: the export's own
    assert [p.name for p in tmp_path.iterdir() if "sweeper-partial" in p.name] == []

    (out / "notes.txt").write_text("mine")  # a previous export with a file it did not write
    refused = cli("export", NAME, "--out", out, "--force", "--db", sweep["db"])
    assert refused.exit_code == 2 and "did not write (notes.txt)" in refused.output, refused.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "winner.yaml").is_file()


def test_an_empty_folder_is_filled_in_place(sweep, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    inode = out.stat().st_ino
    assert cli("export", NAME, "--out", out, "--db", sweep["db"]).exit_code == 0
    assert out.stat().st_ino == inode  # the user's folder, not a new one put in its place
    assert (out / "winner.yaml").is_file() and (out / MARKER).is_file()
    winner = yaml.safe_load((out / "winner.yaml").read_text())["winner"]
    assert winner["holdout_metrics"] == HOLDOUT  # the round's metrics: none of its bookkeeping


def test_the_default_export_folder_is_rewritten_without_force(sweep):
    """`sweeper run` and promotion rewrite the sweep's own export; one written before the marker counts too."""
    store = TrialStore(sweep["db"])
    out = sweep["root"] / "state" / "sweeps" / NAME / "export"
    export.export_sweep(store, NAME, out, "/models/x")
    (out / MARKER).unlink()  # as an export from before the marker existed
    export.export_sweep(store, NAME, out, "/models/x", promotion={"promoted": True, "status": "PROMOTED"})
    assert yaml.safe_load((out / "winner.yaml").read_text())["promotion"]["status"] == "PROMOTED"
    assert (out / MARKER).is_file()
    store.engine.dispose()


def test_a_failed_export_leaves_the_previous_one_whole(sweep, tmp_path, monkeypatch):
    store = TrialStore(sweep["db"])
    out = tmp_path / "winner"
    export.export_sweep(store, NAME, out, "/models/x")
    before = listing(out)

    copy = export._copy_adapter

    def copy_then_fail(*args):  # the disk fills up mid-staging
        copy(*args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_copy_adapter", copy_then_fail)
    with pytest.raises(ExportError, match="No space left on device"):
        export.export_sweep(store, NAME, out, "/models/x")
    assert listing(out) == before
    assert [p.name for p in tmp_path.iterdir() if "sweeper-partial" in p.name] == []
    store.engine.dispose()


def test_the_swap_without_renameat2_still_ends_with_the_new_export(tmp_path, monkeypatch):
    staged, out = tmp_path / "staged", tmp_path / "out"
    for folder, text in ((staged, "new"), (out, "old")):
        folder.mkdir()
        (folder / "winner.yaml").write_text(text)
    monkeypatch.setattr(export.ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(OSError("no libc")))
    export._swap(staged, out)
    assert (out / "winner.yaml").read_text() == "new" and (staged / "winner.yaml").read_text() == "old"


def test_the_export_records_the_audited_fingerprints_and_refuses_changed_data(sweep, tmp_path):
    audited = sweep["spec"].data
    out = tmp_path / "winner"
    assert cli("export", NAME, "--out", out, "--db", sweep["db"]).exit_code == 0
    record = load_yaml((out / "winner.yaml").read_text())  # sweeper's own loader: no anchors or aliases in it
    assert record == json.loads((out / "winner.json").read_text())
    assert record["data_fingerprints"] == record["audit"]["fingerprints"]
    for role in ("train", "holdout", "test"):
        sha256 = hashlib.sha256(Path(getattr(audited, role)).read_bytes()).hexdigest()
        assert record["data_fingerprints"][role] == {"path": getattr(audited, role), "sha256": sha256}
        assert record["trial"]["data"]["sha256"][role] == sha256

    train = Path(audited.train)
    old = hashlib.sha256(train.read_bytes()).hexdigest()
    train.write_text(train.read_text().replace("table", "tab1e", 1))  # same format, other bytes
    new = hashlib.sha256(train.read_bytes()).hexdigest()
    result = cli("export", NAME, "--out", tmp_path / "again", "--db", sweep["db"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"data.train: {train}: changed since the sweep's data audit" in message
    assert old in message and new in message and "sweeper audit" in message
    assert not (tmp_path / "again").exists()

    # The export already written re-runs only on the data it records (fails before any model is loaded).
    rerun = cli("train", out / "winner.yaml", "--rounds", "1")
    assert rerun.exit_code == 2, rerun.output
    assert "changed since the sweep's data audit" in " ".join(rerun.output.split())


def test_a_target_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "winner"
    target.write_text("x")
    assert "not a folder" in export.target_problem(target, replace=True)
    assert os.path.isfile(target)


# -- what the winner's worker ran with: its own record, not this machine's --------------------------------------
GPU_WORKER = {
    **BOOKKEEPING, "device": "NVIDIA H200", "dtype": "bfloat16", "quantization": "none",
    "gradient_checkpointing": False, "micro_batch": 4, "gradient_accumulation": 4,  # halved twice after OOM errors
    "peak_memory_mb": 61234.5, "peak_memory_kind": "cuda_max_allocated", "tokens_per_s": 51234.0,
    "training_arguments": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, "bf16": True,
                           "fp16": False, "use_cpu": False, "output_dir": "<output_dir>", "warmup_steps": 0.0,
                           "activation_checkpointing_kwargs": None},
    "lora_config": {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05, "target_modules": ["query", "value"]},
}


def test_the_export_records_what_the_worker_ran_not_what_this_machine_would(tmp_path):
    import torch

    from sweeper.trial_config import trial_config
    from trainers import hf_loop

    sweep = recorded_sweep(tmp_path, small_spec(tmp_path), GPU_WORKER)
    out = tmp_path / "winner"
    assert cli("export", NAME, "--out", out, "--db", sweep["db"]).exit_code == 0
    record = load_yaml((out / "winner.yaml").read_text())
    assert record["training_arguments"] == GPU_WORKER["training_arguments"]
    assert record["lora_config"] == GPU_WORKER["lora_config"]
    assert record["worker"] == {k: v for k, v in GPU_WORKER.items() if k in (
        "device", "dtype", "quantization", "gradient_checkpointing", "micro_batch", "gradient_accumulation",
        "peak_memory_mb", "peak_memory_kind", "tokens_per_s")}
    # This machine (no GPU) would have computed a micro-batch of 16 in fp32: not what the trial ran.
    config = trial_config(sweep["spec"], PARAMS, "/models/x", str(tmp_path / "o"))
    if not torch.cuda.is_available():
        assert hf_loop.schedule(config, 100)[0] == 16


def test_a_trial_recorded_before_workers_said_what_they_ran_is_exported_saying_so(sweep, tmp_path):
    out = tmp_path / "winner"
    assert cli("export", NAME, "--out", out, "--db", sweep["db"]).exit_code == 0
    record = load_yaml((out / "winner.yaml").read_text())
    assert (record["training_arguments"], record["lora_config"]) == ({}, {})
    assert record["worker"]["device"] == "cpu" and "not recorded" in record["worker"]["note"]


def test_a_synthetic_trial_exports_without_training_arguments(tmp_path):
    from trainers.synthetic import STATE_FILE

    sweep = recorded_sweep(tmp_path, synthetic_spec(tmp_path, name=NAME), {**BOOKKEEPING, "device": "synthetic"},
                           {"eval_loss": 0.5, "accuracy": 0.6}, model_files=(STATE_FILE,))
    out = tmp_path / "winner"
    result = cli("export", NAME, "--out", out, "--db", sweep["db"])
    assert result.exit_code == 0, result.output
    record = load_yaml((out / "winner.yaml").read_text())
    assert (record["training_arguments"], record["lora_config"]) == ({}, {})
    assert record["worker"] == {"device": "synthetic"} and (out / "adapter" / STATE_FILE).is_file()
