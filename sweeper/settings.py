"""Settings of the sweep service, read from the environment; unsafe combinations are refused at start.

SWEEPER_API_TOKENS        comma-separated bearer tokens (required unless the service binds to loopback)
SWEEPER_DATABASE_URL      the trial store (default: SQLite under SWEEPER_SERVICE_ROOT)
SWEEPER_SERVICE_ROOT      folder for stores, Tune experiments, submitted specs, exports and driver logs: with
                          several replicas or Ray jobs, a shared volume mounted at the same path everywhere
SWEEPER_DATA_ROOTS        os.pathsep-separated folders a submitted spec may read data or models from
SWEEPER_RAY_ADDRESS       where sweeps run: a Ray dashboard (http://HEAD:8265: each sweep is a Ray job on that
                          cluster), or a cluster address (HOST:6379, ray://HOST:10001: local driver processes
                          join it); default: a local driver process with its own Ray per sweep
SWEEPER_MAX_BODY_BYTES    largest accepted request body (default 1 MiB)
SWEEPER_MAX_ACTIVE_SWEEPS sweeps running at once (default 2); further submissions get 503
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError


class SettingsError(ValueError):
    pass


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: tuple[SecretStr, ...] = ()
    root: Path
    database_url: SecretStr
    data_roots: tuple[Path, ...] = Field(min_length=1)
    ray_address: str | None = None
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="a whole number of bytes, at least 1024")
    max_active_sweeps: int = Field(default=2, ge=0, description="a whole number, 0 or more")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServiceSettings:
        env = dict(os.environ if env is None else env)
        root = Path(env.get("SWEEPER_SERVICE_ROOT", ".sweeper/service")).resolve()
        roots = [Path(p).resolve() for p in env.get("SWEEPER_DATA_ROOTS", "").split(os.pathsep) if p]
        values = dict(
            tokens=tuple(SecretStr(t.strip()) for t in env.get("SWEEPER_API_TOKENS", "").split(",") if t.strip()),
            root=root,
            database_url=SecretStr(env.get("SWEEPER_DATABASE_URL") or f"sqlite:///{root / 'sweeper.db'}"),
            data_roots=tuple(roots) or (Path.cwd().resolve(),),
            ray_address=env.get("SWEEPER_RAY_ADDRESS") or None,
        )
        for field in ("max_body_bytes", "max_active_sweeps"):
            if env.get(ENV[field], "").strip():
                values[field] = env[ENV[field]].strip()  # text: pydantic parses it, and a refusal names the variable
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc, env)) from None

    def check_bind(self, host: str) -> None:
        """Refuse to serve a network without tokens: every endpoint but /health needs one."""
        if not self.tokens and not _is_loopback(host):
            raise SettingsError(f"refusing to listen on {host} with no API token: set SWEEPER_API_TOKENS "
                                "(comma-separated) or bind to 127.0.0.1")
        if any(len(t.get_secret_value()) < 16 for t in self.tokens):
            raise SettingsError("SWEEPER_API_TOKENS: every token must be at least 16 characters long")


ENV = {"tokens": "SWEEPER_API_TOKENS", "root": "SWEEPER_SERVICE_ROOT", "database_url": "SWEEPER_DATABASE_URL",
       "data_roots": "SWEEPER_DATA_ROOTS", "ray_address": "SWEEPER_RAY_ADDRESS",
       "max_body_bytes": "SWEEPER_MAX_BODY_BYTES", "max_active_sweeps": "SWEEPER_MAX_ACTIVE_SWEEPS"}
SECRET = ("tokens", "database_url")  # never echoed


def _explain(exc: ValidationError, env: dict[str, str]) -> str:
    """One line per refused variable: its name, its value (unless secret) and what to set instead."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = ENV.get(field, field)
        given = "" if field in SECRET else f"={env.get(name, '')!r}"
        wanted = ServiceSettings.model_fields[field].description if field in ServiceSettings.model_fields else None
        problems.append(f"{name}{given}: {error['msg']}" + (f"; set it to {wanted}" if wanted else ""))
    return "; ".join(problems)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
