"""A client of the sweep service, for the CLI's `--server URL` mode (token from SWEEPER_API_TOKEN)."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx


class ServiceError(RuntimeError):
    """The service refused or failed a request; the message carries its JSON detail."""


class ServiceClient:
    def __init__(self, url: str, token: str | None, timeout: float = 60):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the service at {self.http.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise ServiceError(f"{method} {path}: {response.status_code} {_detail(response)}")
        return response

    def submit(self, spec_path: Path) -> dict:
        return self._call("POST", "/sweeps", json={"spec_yaml": spec_path.read_text(encoding="utf-8")}).json()

    def sweeps(self) -> list[dict]:
        return self._call("GET", "/sweeps").json()

    def sweep(self, name: str) -> dict:
        return self._call("GET", f"/sweeps/{name}").json()

    def trials(self, name: str) -> list[dict]:
        items, offset = [], 0
        while True:
            page = self._call("GET", f"/sweeps/{name}/trials", params={"offset": offset, "limit": 500}).json()
            items += page["items"]
            offset += len(page["items"])
            if offset >= page["total"] or not page["items"]:
                return items

    def compare(self, names: list[str], statuses: list[str] | None, sort: str, descending: bool | None) -> dict:
        params = {"sweep": names, "status": statuses or [], "sort": sort}
        if descending is not None:
            params["descending"] = descending
        return self._call("GET", "/compare", params=params).json()

    def cancel(self, name: str) -> dict:
        return self._call("POST", f"/sweeps/{name}/cancel").json()

    def promote(self, name: str, every_s: float = 2.0, timeout_s: float = 6 * 3600) -> dict:
        """Start the promotion where the sweeps run, wait for it, and return its outcome (`sweeper promote`'s)."""
        self._call("POST", f"/sweeps/{name}/promote")
        deadline = time.monotonic() + timeout_s
        while True:
            state = self._call("GET", f"/sweeps/{name}/promotion").json()
            if state["state"] == "finished":
                return state["result"]
            if state["state"] == "failed":
                raise ServiceError(f"the promotion of {name!r} failed: {state['message']}")
            if time.monotonic() > deadline:
                raise ServiceError(f"the promotion of {name!r} is still running after {timeout_s:.0f} s; "
                                   f"watch GET /sweeps/{name}/promotion")
            time.sleep(every_s)

    def download_export(self, name: str, out_dir: Path) -> Path:
        archive = self._call("GET", f"/sweeps/{name}/export").content
        out_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
            bundle.extractall(out_dir)
        return out_dir / "winner.yaml"


def _detail(response: httpx.Response) -> Any:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text[:500]
    if isinstance(detail, list):
        return "; ".join(_item(d) for d in detail)
    return detail


def _item(problem: Any) -> str:
    """One problem of a 422: ours are {path, message}; FastAPI's own validation gives {loc, msg}."""
    if not isinstance(problem, dict):
        return str(problem)
    path = problem.get("path") or ".".join(str(part) for part in problem.get("loc", []))
    return f"{path}: {problem.get('message') or problem.get('msg', problem)}"
