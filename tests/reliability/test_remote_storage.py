"""Tune storage in object storage (`s3://`) for real: a real S3-compatible server on this machine (moto in server
mode), with sweeps whose trials checkpoint into its bucket, a driver killed mid-trial and resumed from the bucket,
and the export (and promotion: the same `sweeper.checkpoints.local_copy`) read back from it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from helpers import free_port, run_cli
from moto.server import ThreadedMotoServer
from test_driver_kills import PHASES, assert_completed_once_each, kill_when, running, spec_for, trials

from sweeper import checkpoints

BUCKET = "sweeps"


@pytest.fixture
def s3(monkeypatch) -> pafs.S3FileSystem:
    """A private S3 server and bucket; the environment points pyarrow (here, in the CLI and in Ray's workers) at it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(name, value)
    bucket = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                               secret_key="test", region="us-east-1", allow_bucket_creation=True)
    bucket.create_dir(BUCKET)
    yield bucket
    server.stop()


def files_under(bucket: pafs.S3FileSystem, prefix: str) -> list[str]:
    return [i.path for i in bucket.get_file_info(pafs.FileSelector(prefix, recursive=True))
            if i.type == pafs.FileType.File]


def test_local_copy_reads_a_checkpoint_from_the_bucket_and_says_when_it_is_gone(s3, tmp_path):
    s3.create_dir(f"{BUCKET}/exp/t0000/checkpoint_000002")
    with s3.open_output_stream(f"{BUCKET}/exp/t0000/checkpoint_000002/adapter_config.json") as out:
        out.write(b'{"r": 8}')
    experiment = f"s3://{BUCKET}/exp"
    with checkpoints.local_copy(f"{BUCKET}/exp/t0000/checkpoint_000002", experiment) as folder:
        assert json.loads((folder / "adapter_config.json").read_text()) == {"r": 8}
        downloaded = folder
    assert not downloaded.exists()  # a temporary copy, removed after use
    with checkpoints.local_copy(f"{BUCKET}/exp/t0000/checkpoint_000009", experiment) as folder:
        assert folder is None
    assert checkpoints.exists(experiment)(f"{BUCKET}/exp/t0000/checkpoint_000002")
    local = tmp_path / "checkpoint_000001"
    local.mkdir()
    with checkpoints.local_copy(str(local), str(tmp_path)) as folder:
        assert folder == local  # a local checkpoint is used where it is


@pytest.mark.slow
def test_a_sweep_on_s3_resumes_from_the_bucket_after_a_driver_kill_and_exports_from_it(s3, tmp_path, ray_cleanup,
                                                                                       monkeypatch):
    monkeypatch.setenv("SWEEPER_STORAGE_PATH", f"s3://{BUCKET}/tune")
    spec = spec_for(tmp_path)
    kill_when(tmp_path, spec, PHASES["during-the-first-trial"][1])
    db = tmp_path / "state" / "sweeper.db"
    (killed,) = running(trials(db))
    with sqlite3.connect(db) as con:
        (saved,) = con.execute("select checkpoint from sweeper_rounds r join sweeper_trials t on t.id = r.trial_id "
                               f"where t.trial_key = '{killed[0]}' order by r.round desc limit 1").fetchone()
    assert saved.startswith(f"{BUCKET}/tune/synthetic-sweep/") and files_under(s3, saved)  # in the bucket

    run_cli(["run", spec], tmp_path, check=True)
    assert_completed_once_each(tmp_path)
    with sqlite3.connect(db) as con:
        retries = dict(con.execute("select trial_key, retries from sweeper_trials"))
        (best_checkpoint,) = con.execute(
            "select r.checkpoint from sweeper_rounds r join sweeper_trials t on t.id = r.trial_id "
            "where r.round = t.best_round order by t.best_value desc limit 1").fetchone()
    assert retries[killed[0]] == 1  # it went on from its checkpoint in the bucket, not from zero
    assert not (tmp_path / "state" / "ray").exists()  # Tune kept nothing on this machine

    url = f"sqlite:///{db}"
    run_cli(["export", "synthetic-sweep", "--out", "winner", "--db", url], tmp_path, check=True)
    with s3.open_input_stream(f"{best_checkpoint}/synthetic_state.json") as source:
        assert (tmp_path / "winner" / "adapter" / "synthetic_state.json").read_bytes() == source.read()
    s3.delete_dir(best_checkpoint)
    gone = run_cli(["export", "synthetic-sweep", "--out", "again", "--db", url], tmp_path)
    assert gone.returncode == 2 and "checkpoint is missing" in gone.stderr and not Path(tmp_path / "again").exists()
