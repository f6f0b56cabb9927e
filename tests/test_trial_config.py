"""One builder of a trial's config (sweeper.trial_config), and the spec a sweep stores, read back typed."""

from __future__ import annotations

import httpx
import pytest
from helpers import small_spec
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.spec import SCHEMA_VERSION, SpecError, load_spec, spec_from_store, stored_spec
from sweeper.trial_config import complete, trial_config

FIXED = {"batch_size": 16, "num_epochs": 2, "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0,
         "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
SPACE = {"params": {"learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}}


@pytest.fixture
def spec(tmp_path):
    """A spec with an inline search space and fixed values."""
    return load_spec(small_spec(tmp_path, search_space=SPACE, fixed=FIXED))


def test_the_stored_spec_is_versioned_redacted_and_reads_back_typed(tmp_path):
    url = "postgresql+psycopg://sweeper:s3cret@db:5432/sweeps"  # its password must not be stored
    spec = load_spec(small_spec(tmp_path, search_space=SPACE, fixed=FIXED, storage={"root": "state", "database_url": url}))
    stored = stored_spec(spec)
    assert stored["schema_version"] == SCHEMA_VERSION and "s3cret" not in str(stored)
    again = spec_from_store(stored)
    assert again.model_dump(exclude={"storage"}) == spec.model_dump(exclude={"storage"})
    assert again.space().params.keys() == {"learning_rate"} and again.storage.database_url.endswith("@db:5432/sweeps")
    legacy = {k: v for k, v in stored.items() if k != "schema_version"}  # stored before the version was
    assert spec_from_store(legacy).model_dump() == again.model_dump()


def test_a_stored_spec_of_another_version_or_shape_is_refused_by_name(spec):
    with pytest.raises(SpecError, match="schema_version: 3: this sweeper reads stored specs of versions 1 to 2"):
        spec_from_store({**stored_spec(spec), "schema_version": 3})
    with pytest.raises(SpecError, match="task: unknown task 'retired'"):
        spec_from_store({**stored_spec(spec), "task": "retired"})


def test_trials_and_re_runs_get_the_same_config_from_the_spec(spec):
    """The controller's job (what a Ray worker completes) and the direct builder agree, audited hashes included."""
    from sweeper import controller

    sampled = {"learning_rate": 3e-3}
    job = controller._job(spec, "/models/x", 3)
    config = trial_config(spec, sampled, "/models/x", "/out", None, torch_threads=3)
    assert complete(job["trial"], sampled, "/out") == config
    assert config.hparams.model_dump() == {**FIXED, **sampled, "lora_alpha": 16.0}
    assert (config.data.train, config.seed, config.patience, config.evals_per_epoch) == (
        spec.data.train, spec.seed, spec.early_stopping.patience, spec.scheduler.evals_per_epoch)
    hashes = {"train": "a" * 64}
    rerun = trial_config(spec, {**FIXED, **sampled}, "/models/x", "/rerun", hashes, seed=8, max_rounds=2)
    assert (rerun.seed, rerun.max_rounds, rerun.data.sha256, rerun.output_dir) == (8, 2, hashes, "/rerun")


def _mock_service(monkeypatch, handler) -> None:
    """The CLI's service client, answered by `handler` instead of a network."""
    real = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(handler), **kwargs))


def test_cancel_asks_the_service_and_says_so(monkeypatch):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path, request.headers.get("authorization")))
        if request.url.path == "/sweeps/done/cancel":
            return httpx.Response(409, json={"detail": "sweep 'done' is completed; nothing to cancel"})
        return httpx.Response(200, json={"name": "s1", "status": "cancelling"})

    _mock_service(monkeypatch, handler)
    monkeypatch.setenv("SWEEPER_API_TOKEN", "tok")
    result = CliRunner().invoke(app, ["--server", "http://svc:8000", "cancel", "s1"])
    assert result.exit_code == 0, result.output
    assert "sweep 's1' cancelling on http://svc:8000" in result.output
    refused = CliRunner().invoke(app, ["--server", "http://svc:8000", "cancel", "done"])
    assert refused.exit_code == 1 and "409 sweep 'done' is completed" in " ".join(refused.output.split())
    assert calls == [("POST", "/sweeps/s1/cancel", "Bearer tok"), ("POST", "/sweeps/done/cancel", "Bearer tok")]


def test_cancel_without_a_service_says_how_to_stop_a_local_sweep(monkeypatch):
    monkeypatch.delenv("SWEEPER_SERVER", raising=False)
    result = CliRunner().invoke(app, ["cancel", "s1"])
    assert result.exit_code == 2 and "Ctrl+C" in result.output
