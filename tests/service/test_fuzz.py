"""Schemathesis fuzzing of the service's OpenAPI schema: no server errors, no way around the token.

The app runs in-process on a real SQLite store. `SWEEPER_MAX_ACTIVE_SWEEPS=0` makes a submission that
passes validation end in 503 instead of launching a sweep, so fuzzing never starts training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from sweeper.service import create_app
from sweeper.settings import ServiceSettings
from sweeper.store import TrialStore

TOKEN = "fuzz-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


def _app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-service")
    url = f"sqlite:///{root / 'sweeper.db'}"
    TrialStore(url).upgrade()
    return create_app(ServiceSettings.from_env({
        "SWEEPER_API_TOKENS": TOKEN, "SWEEPER_SERVICE_ROOT": str(root), "SWEEPER_DATABASE_URL": url,
        "SWEEPER_DATA_ROOTS": str(ROOT / "examples"), "SWEEPER_MAX_ACTIVE_SWEEPS": "0"}))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return _app(tmp_path_factory)


@pytest.fixture(scope="module")
def operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {TOKEN}"})
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz(operation, examples: int, check) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        check(case)

    run()


def test_every_operation_is_fuzzed(operations):
    assert {op.label for op in operations} >= {"GET /health", "POST /sweeps", "GET /sweeps", "GET /sweeps/{name}",
                                               "GET /sweeps/{name}/trials", "POST /sweeps/{name}/cancel",
                                               "GET /sweeps/{name}/export", "GET /sweeps/{name}/trials/{trial_key}/rounds",
                                               "GET /compare", "POST /sweeps/{name}/promote",
                                               "GET /sweeps/{name}/promotion"}


def test_no_server_errors_with_a_token(operations):
    def check(case):
        response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500 or response.status_code == 503, (case.path, response.text)

    for operation in operations:
        _fuzz(operation, 40, check)


def test_no_auth_bypass(operations):
    def check(case):
        response = case.call(headers={"Authorization": "Bearer not-the-token-000000000"})
        if case.path == "/health":
            assert response.status_code == 200
        else:  # FastAPI may refuse a malformed request (422) before the token check; it never answers 2xx
            assert response.status_code in (401, 422), (case.path, response.status_code, response.text)

    for operation in operations:
        _fuzz(operation, 15, check)


def test_committed_openapi_schema_is_current(app):
    committed = json.loads((ROOT / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(app.openapi(), sort_keys=True)), \
        "openapi.json is stale: run `sweeper openapi --out openapi.json`"
