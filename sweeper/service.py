"""The sweep service: an HTTP API (FastAPI) to submit, watch, cancel, promote and export sweeps.

Submitted specs are validated exactly as the CLI validates them, then confined: data and model paths
must lie under the configured data roots, storage is the service's own, and only registered trainers
and search spaces can be named (the spec has no field that imports code). Every endpoint but /health needs a
bearer token.

The service holds no state of its own: sweeps, their drivers (Ray jobs on the cluster, or local processes) and
cancel requests live in the store database, submitted specs and exports under the shared storage root
(`sweeper.supervisor`). Any number of replicas can serve the same store: any of them lists, watches, cancels,
promotes and exports any sweep, and each restarts a driver that died mid-sweep. Promotion runs as its own driver
(`sweeper promote`), never in a request.
"""

import io
import logging
import os
import secrets
import shutil
import tempfile
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sweeper.audit import audit
from sweeper.compare import CompareError, Comparison, TrialStatus, compare
from sweeper.datasets import DataError
from sweeper.search import extend_budget
from sweeper.settings import ServiceSettings
from sweeper.spec import Spec, SpecError, keeping_recorded_defaults, parse_spec, stored_spec
from sweeper.store import ClaimHeld, StoreError, TrialStore
from sweeper.supervisor import LaunchError, Supervisor, drivers_for
from sweeper.yaml_safe import describe, load_yaml
from trainers.models import NAMED_MODELS

RECONCILE_EVERY_S = 2.0
log = logging.getLogger(__name__)
MAX_COMPARED = 20  # sweeps one comparison may name
MAX_OFFSET = 10**9  # far beyond any sweep's trials; larger numbers overflow the database's integers


# -- schemas -------------------------------------------------------------------------------------------
class SweepCreate(BaseModel):
    """A spec as a JSON object (`spec`) or as YAML text (`spec_yaml`), exactly one of them."""

    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any] | None = None
    spec_yaml: str | None = Field(default=None, max_length=200_000)

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.spec is None) == (self.spec_yaml is None):
            raise ValueError("give exactly one of `spec` (an object) or `spec_yaml` (text)")
        return self


class SweepPublic(BaseModel):
    name: str
    status: str
    message: str
    objective_metric: str
    objective_mode: str
    trials: int
    trials_by_status: dict[str, int]
    best_value: float | None
    best_trial: str | None


class TrialPublic(BaseModel):
    trial_key: str
    status: str
    stop_reason: str
    params: dict[str, Any]
    rounds: int
    best_round: int | None
    best_value: float | None
    wall_time_s: float
    device: str
    node: str
    retries: int
    error: str


class TrialPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[TrialPublic]


class RoundPublic(BaseModel):
    round: int
    eval_loss: float | None
    metrics: dict[str, Any]  # holdout metrics
    bookkeeping: dict[str, Any]  # the rest of the worker's record: epoch, train loss, counts, timings, ...


class PromotionPublic(BaseModel):
    state: str  # running | finished | failed
    message: str
    result: dict[str, Any] | None  # the latest promotion's outcome and table (`sweeper promote --format json`)


class ErrorItem(BaseModel):
    path: str
    message: str


class Accepted(BaseModel):
    name: str
    status: str


# -- helpers -------------------------------------------------------------------------------------------
def _problem(code: int, detail: Any) -> HTTPException:
    return HTTPException(status_code=code, detail=detail)


def _confined(path: Path, roots: tuple[Path, ...]) -> bool:
    try:
        resolved = path.resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop: not a path the service reads
        return False
    return any(resolved.is_relative_to(root) for root in roots)


def _confinement_errors(raw: dict, settings: ServiceSettings) -> list[dict]:
    """Paths outside the data roots, judged on the raw spec: parsing it looks at the files, and its messages
    would tell a caller whether a path outside the roots exists."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    base, roots = settings.data_roots[0], settings.data_roots  # relative data paths are read from the first root
    errors = [{"path": f"data.{role}", "message": "outside the service's data roots"} for role in ("train", "holdout", "test")
              if isinstance(data.get(role), str) and not _confined(base / data[role], roots)]
    model = raw.get("model")
    path, where = (model.get("path"), "model.path") if isinstance(model, dict) else (model, "model")
    if isinstance(path, str) and path not in NAMED_MODELS and not _confined(Path(path), roots):
        errors.append({"path": where, "message": "a model must be a named model or lie under the data roots"})
    return errors


def _raw_spec(body: SweepCreate) -> Any:
    if body.spec is not None:
        return body.spec
    try:
        return load_yaml(body.spec_yaml)
    except yaml.YAMLError as exc:
        raise _problem(422, [{"path": "spec_yaml", "message": describe(exc)}]) from None


def _service_spec(raw: Any, settings: ServiceSettings) -> Spec:
    """Validate as the CLI does, then put storage under the service's control and confine paths."""
    if isinstance(raw, dict) and "storage" in raw:
        raise _problem(422, [{"path": "storage", "message": "storage is set by the service; remove it"}])
    if isinstance(raw, dict):
        if errors := _confinement_errors(raw, settings):
            raise _problem(422, errors)
        raw = {**raw, "storage": {"root": str(settings.root)}}
    try:
        spec = parse_spec(raw, settings.data_roots[0], "spec")
    except SpecError as exc:
        raise _problem(422, [{"path": p, "message": m} for p, m in exc.errors]) from None
    try:
        report = audit(spec)  # the same data audit as `sweeper run`; a spec allows refusals under `audit.allow`
    except DataError as exc:
        field, _, message = str(exc).partition(": ")
        raise _problem(422, [{"path": field, "message": message}]) from None
    if not report.passed:
        raise _problem(422, [{"path": f"audit.{f.code}", "message": f.message} for f in report.blocking])
    return spec


def _existing_sweep(store: TrialStore, name: str):
    sweep = store.get_sweep(name)
    if sweep is None:
        raise _problem(404, f"no sweep named {name!r}")
    return sweep


def _public_sweep(store: TrialStore, name: str) -> SweepPublic:
    sweep = _existing_sweep(store, name)
    counts = store.trial_counts(name)
    best = store.best_trial(name)
    status, message = store.shown_status(sweep)  # `running` with its driver gone reads `interrupted`
    return SweepPublic(name=sweep.name, status=status, message=message,
                       objective_metric=sweep.objective_metric, objective_mode=sweep.objective_mode,
                       trials=sum(counts.values()), trials_by_status=counts,
                       best_value=best.best_value if best else None,
                       best_trial=best.trial_key if best else None)


def _public_trial(t) -> TrialPublic:
    return TrialPublic(trial_key=t.trial_key, status=t.status, stop_reason=t.stop_reason, params=t.params,
                       rounds=t.rounds, best_round=t.best_round, best_value=t.best_value,
                       wall_time_s=t.wall_time_s, device=t.device, node=t.node, retries=t.retries,
                       error=t.error)


class BodyLimit:
    """Reject bodies over the limit with 413 before the app reads them (chunked bodies included).

    The body is read here in full (it is at most `limit` bytes) and replayed to the app: an error raised
    while the app itself reads would reach FastAPI's body parsing, which answers it with 400.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: nobody to answer
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > self.limit:
                return await self._too_large(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect a streaming response waits for
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        body = b'{"detail":"request body too large"}'
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# -- the app -------------------------------------------------------------------------------------------
def create_app(settings: ServiceSettings) -> FastAPI:
    url = settings.database_url.get_secret_value()
    store = TrialStore(url)
    env = {**os.environ, "SWEEPER_DATABASE_URL": url, "HF_HUB_OFFLINE": "1"}
    supervisor = Supervisor(store, drivers_for(settings.root, env, settings.ray_address, url))
    stop = threading.Event()

    def watch():
        while not stop.wait(RECONCILE_EVERY_S):
            try:
                supervisor.reconcile()
            except StoreError:
                pass  # the database or the Ray cluster is away for a moment; the next pass settles it
            except Exception:  # noqa: BLE001 - a reconciler that died would leave every sweep unwatched
                log.exception("sweeper: a reconcile pass failed; the next one tries again")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.root.mkdir(parents=True, exist_ok=True)
        store.upgrade()  # once, here (under the schema lock): Alembic's context is module-global, not for requests
        supervisor.reconcile()  # resume what a replica that went away left running
        watcher = threading.Thread(target=watch, name="sweeper-supervisor", daemon=True)
        watcher.start()
        yield
        stop.set()
        watcher.join(timeout=5)  # drivers are not stopped: sweeps outlive a replica by design
        store.engine.dispose()

    open_docs = not settings.tokens  # with tokens, the schema needs one too and the browser docs (which cannot send it) are off
    app = FastAPI(title="sweeper", version="0.1.0", lifespan=lifespan,
                  description="Submit, watch, cancel, promote and export hyperparameter sweeps.",
                  openapi_url="/openapi.json" if open_docs else None, docs_url="/docs" if open_docs else None,
                  redoc_url="/redoc" if open_docs else None)
    bearer = HTTPBearer(auto_error=False)
    launching = threading.Lock()  # capacity check, claim and launch as one step: concurrent submissions cannot overshoot

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if not settings.tokens:
            return  # loopback-only service with no tokens configured (refused on any other address)
        given = credentials.credentials.encode() if credentials else b""
        matched = False
        for token in settings.tokens:  # compare with every token, in constant time, whatever matches first
            matched |= secrets.compare_digest(given, token.get_secret_value().encode())
        if not matched:
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    api = APIRouter(dependencies=[Depends(require_token)], responses={401: {"description": "missing or bad token"}})

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError):
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse(status_code=500, content={"detail": f"internal error ({type(exc).__name__})"})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if not open_docs:
        @api.get("/openapi.json", include_in_schema=False)
        def openapi_schema() -> JSONResponse:
            return JSONResponse(app.openapi())

    @api.post("/sweeps", status_code=202, response_model=Accepted,
              responses={409: {}, 413: {}, 422: {"model": list[ErrorItem]}, 503: {}})
    def submit(body: SweepCreate) -> Accepted:
        spec = _service_spec(_raw_spec(body), settings)
        with launching:
            if supervisor.active_count() >= settings.max_active_sweeps:
                raise _problem(503, f"the service already runs {settings.max_active_sweeps} sweep(s); try again later")
            try:  # a live driver (any replica's, or a `sweeper run` elsewhere) refuses it here
                token = store.claim(spec.name, owner=supervisor.owner)
            except ClaimHeld as exc:
                raise _problem(409, str(exc)) from None
            try:
                recorded = store.get_sweep(spec.name)
                spec = keeping_recorded_defaults(spec, recorded.spec if recorded else None)
                check_resubmission(spec, token)
                queue(spec, token)
            except LaunchError as exc:
                store.release(spec.name, token)
                raise _problem(503, str(exc)) from None
            except BaseException:
                store.release(spec.name, token)
                raise
        return Accepted(name=spec.name, status="queued")

    def check_resubmission(spec: Spec, token: str) -> None:
        """A sweep of that name may come again with more budget (it continues its study), never changed otherwise."""
        try:
            if extend_budget(store, spec, token):
                return
        except SpecError as exc:
            raise _problem(409, [{"path": p, "message": m} for p, m in exc.errors]) from None
        existing = store.get_sweep(spec.name)
        if existing is not None and existing.spec_fingerprint != spec.fingerprint():
            raise _problem(409, f"sweep {spec.name!r} exists with a different spec; give the new one another name")
        if existing is not None and existing.status == "completed":
            raise _problem(409, f"sweep {spec.name!r} is already completed; raise its budget to continue it")

    def queue(spec: Spec, token: str) -> None:
        """Record the sweep as queued and start its driver, handing it the claim."""
        store.open_sweep(spec.name, stored_spec(spec), spec.fingerprint(), spec.objective.metric, spec.objective.mode)
        store.update_sweep(spec.name, status="queued", message="")
        spec_path = settings.root / "specs" / f"{spec.name}.yaml"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        supervisor.launch(spec.name, spec_path, token)

    @api.get("/sweeps", response_model=list[SweepPublic])
    def list_sweeps() -> list[SweepPublic]:
        return [_public_sweep(store, s.name) for s in store.list_sweeps()]

    @api.get("/sweeps/{name}", response_model=SweepPublic, responses={404: {}})
    def get_sweep(name: str) -> SweepPublic:
        return _public_sweep(store, name)

    @api.get("/sweeps/{name}/trials", response_model=TrialPage, responses={404: {}})
    def list_trials(
        name: str,
        status_: Annotated[TrialStatus | None, Query(alias="status")] = None,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> TrialPage:
        _existing_sweep(store, name)
        total, page = store.trial_page(name, status_, offset, limit)
        return TrialPage(total=total, offset=offset, limit=limit, items=[_public_trial(t) for t in page])

    @api.get("/sweeps/{name}/trials/{trial_key}/rounds", response_model=list[RoundPublic],
             responses={404: {}})
    def trial_rounds(name: str, trial_key: str) -> list[RoundPublic]:
        _existing_sweep(store, name)
        if store.trial(name, trial_key) is None:
            raise _problem(404, f"sweep {name!r} has no trial {trial_key!r}")
        return [RoundPublic(round=r.round, eval_loss=r.eval_loss, metrics=r.metrics, bookkeeping=r.bookkeeping)
                for r in store.trial_rounds(name, trial_key)]

    @api.get("/compare", response_model=Comparison, responses={404: {}, 422: {}})
    def compare_sweeps(
        sweep: Annotated[list[str], Query(min_length=1, max_length=MAX_COMPARED,
                                          description="sweep names (repeat the parameter for several)")],
        status_: Annotated[list[TrialStatus] | None, Query(alias="status", description="keep these statuses")] = None,
        sort: Annotated[str, Query(max_length=200, description="a metric, `param.NAME` or a field")] = "objective",
        descending: Annotated[bool | None, Query(description="sort direction; default: best first")] = None,
    ) -> dict[str, Any]:
        """The trials of one or more sweeps side by side, as `sweeper compare --format json` prints them:
        holdout metrics at each trial's best round, and the best trial of each sweep."""
        for name in sweep:
            _existing_sweep(store, name)
        try:
            return compare(store, sweep, status_, sort, descending).to_dict()
        except CompareError as exc:
            raise _problem(422, str(exc)) from None

    @api.post("/sweeps/{name}/cancel", response_model=Accepted, responses={404: {}, 409: {}})
    def cancel(name: str) -> Accepted:
        sweep = _existing_sweep(store, name)
        if sweep.status not in ("queued", "running", "interrupted"):
            raise _problem(409, f"sweep {name!r} is {sweep.status}; nothing to cancel")
        if not supervisor.cancel(name):
            raise _problem(409, f"sweep {name!r} was not started by a sweep service")
        return Accepted(name=name, status="cancelling")

    @api.post("/sweeps/{name}/promote", status_code=202, response_model=Accepted, responses={404: {}, 409: {},
                                                                                              503: {}})
    def promote_sweep(name: str) -> Accepted:
        """Start checking the spec's gates on the best trial, re-evaluated on the test split, where the sweeps run
        (`sweeper promote`); the export is rewritten to say the outcome. Watch it at GET /sweeps/{name}/promotion."""
        sweep = _existing_sweep(store, name)
        if sweep.status != "completed":
            raise _problem(409, f"sweep {name!r} is {sweep.status}; promote it once it has completed")
        with launching:
            if supervisor.promoting(name):
                raise _problem(409, f"sweep {name!r} is being promoted; watch GET /sweeps/{name}/promotion")
            try:
                supervisor.promote(name)
            except LaunchError as exc:
                raise _problem(503, str(exc)) from None
        return Accepted(name=name, status="promoting")

    @api.get("/sweeps/{name}/promotion", response_model=PromotionPublic, responses={404: {}})
    def promotion(name: str) -> PromotionPublic:
        """The promotion started last: `running`, `finished` (with its outcome) or `failed` (it could not run)."""
        _existing_sweep(store, name)
        return _promotion_state(store, supervisor, name)

    @api.get("/sweeps/{name}/export", responses={200: {"content": {"application/zip": {}}}, 404: {}})
    def download_export(name: str) -> StreamingResponse:
        _existing_sweep(store, name)
        export_dir = settings.root / "sweeps" / name / "export"
        if not (export_dir / "winner.yaml").is_file():
            raise _problem(404, f"sweep {name!r} has no export yet (it is written when the sweep completes)")
        with tempfile.TemporaryDirectory() as tmp:
            archive = shutil.make_archive(str(Path(tmp) / name), "zip", export_dir)
            data = Path(archive).read_bytes()
        return StreamingResponse(io.BytesIO(data), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}-export.zip"'})

    app.include_router(api)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def _promotion_state(store: TrialStore, supervisor: Supervisor, name: str) -> PromotionPublic:
    row, latest = store.driver(name, role="promote"), store.latest_promotion(name)
    result = latest.result if latest else None
    if row is None:
        if latest is None:
            raise _problem(404, f"sweep {name!r} has not been promoted; POST /sweeps/{name}/promote")
        return PromotionPublic(state="finished", message="", result=result)
    if supervisor.promoting(name):
        return PromotionPublic(state="running", message=f"started {row.launched_at:%Y-%m-%d %H:%M:%S} UTC",
                               result=None)
    if latest is not None and latest.created_at >= row.launched_at:  # one database: both naive (SQLite) or aware
        return PromotionPublic(state="finished", message="", result=result)
    return PromotionPublic(state="failed", result=None,
                           message=f"the promotion ended without a result; {supervisor.drivers.where_logs(row)}")


def app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory sweeper.service:app_from_env`."""
    return create_app(ServiceSettings.from_env())
