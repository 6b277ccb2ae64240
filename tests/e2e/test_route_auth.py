"""Every route the server has, enumerated from the app itself: without a key each one is refused (401 for the
API, a redirect to sign-in for the web UI's pages), with another project's key each one that names an object
answers 404, and admin operations refuse a project key. A route added later without auth fails this test."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.routing import APIRoute

from tests.helpers import write_chat
from tunelab.serve.server import BackgroundServer, build
from tunelab.serve.state import ServeSettings

pytestmark = pytest.mark.e2e

# Open by design, each for its reason: a liveness probe that names nothing; the sign-in page and its form; the
# web UI's own scripts and styles (StaticFiles, not an APIRoute).
PUBLIC = {("GET", "/health"), ("GET", "/sign-in"), ("POST", "/sign-in"), ("GET", "/sign-out")}
ADMIN = {("GET", "/metrics"), ("POST", "/v1/adapters"), ("DELETE", "/v1/adapters/{name:path}")}
# the path parameters that name a project's objects: with another project's key each answers 404
OWNED_IDS = ("job_id", "file_id", "request_id", "feedback_id")
# valid bodies, so that a refusal can only be about whose object it is (a malformed body is a 400 for any id)
BODIES = {"/v1/fine_tuning/jobs/{job_id}/exports": {"format": "gguf"}}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, dict[str, str]]]:
    data = tmp_path_factory.mktemp("auth-server")
    settings = ServeSettings(api_keys=["acme:key-a", "beta:key-b"], admin_keys=["key-admin"], worker_jobs=0)
    app = build(str(tiny_model), name="tiny", data=str(data), settings=settings)
    with BackgroundServer(app) as url:
        a = openai.OpenAI(base_url=url + "/v1", api_key="key-a", max_retries=0, timeout=60)
        with write_chat(data / "rows.jsonl", 4).open("rb") as f:
            file = a.files.create(file=f, purpose="fine-tune")
        job = a.fine_tuning.jobs.create(model="tiny", training_file=file.id)  # queued: this server trains nothing
        answer = a.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        status, body = _post(url, "/v1/feedback", {"request_id": answer.id, "rating": "up"}, "key-a")
        assert status == 201, body
        yield url, app, {"file_id": file.id, "job_id": job.id, "request_id": answer.id,
                         "feedback_id": str(body["id"])}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a redirect is an answer to check, not follow
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _routes(app: Any) -> list[tuple[str, str]]:
    others = [getattr(r, "path", r) for r in app.routes if not isinstance(r, APIRoute)]
    assert others == ["/ui/static"], others  # the UI's assets; no /openapi.json, /docs or anything unlisted
    out = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in sorted(r.methods - {"HEAD"})]
    assert len(out) > 40, out  # the API, the jobs API and the pages: enumeration really saw them
    return out


def _fill(path: str, ids: dict[str, str]) -> str:
    values = ids | {"name": "tiny", "fmt": "gguf", "trial": "0"}
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: values[m.group(1)], path)


def _call(url: str, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None
          ) -> tuple[int, str]:
    data = json.dumps(body or {}).encode() if method in ("POST", "PUT", "PATCH") else None
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"content-type": "application/json", **headers})

    try:
        with _OPENER.open(req, timeout=60) as r:
            return r.status, r.headers.get("location") or ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("location") or ""


def _post(url: str, path: str, body: dict[str, Any], key: str) -> tuple[int, Any]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.load(r)


def _page(path: str) -> bool:
    return not (path.startswith("/v1/") or path == "/metrics")


def test_every_route_refuses_a_request_without_a_key(server: tuple[str, Any, dict[str, str]]) -> None:
    url, app, ids = server
    checked = []
    for method, path in _routes(app):
        if (method, path) in PUBLIC:
            continue
        status, location = _call(url, method, _fill(path, ids), {})
        if _page(path):
            assert status == 303 and location.startswith("/sign-in"), (method, path, status)
        else:
            assert status == 401, (method, path, status)
        checked.append((method, path))
        status, _ = _call(url, method, _fill(path, ids), {"authorization": "Bearer not-a-key"})
        assert status == (303 if _page(path) else 401), (method, path, status)
    assert len(checked) == len(_routes(app)) - len(PUBLIC)


def test_another_projects_key_finds_none_of_its_objects(server: tuple[str, Any, dict[str, str]]) -> None:
    url, app, ids = server
    owned = [(m, p) for m, p in _routes(app) if any(f"{{{k}}}" in p for k in OWNED_IDS)]
    assert len(owned) > 20
    for method, path in owned:
        filled = _fill(path, ids)
        status, _ = _call(url, method, filled, {"authorization": "Bearer key-b"}, BODIES.get(path))
        if not _page(path):
            assert status == 404, (method, path, status)
    # the same pages, signed in as the other project
    b = _sign_in(url, "key-b")
    for method, path in owned:
        if _page(path):
            status, _ = _call(url, method, _fill(path, ids), {"cookie": b})
            assert status == 404, (method, path, status)
    # and the owner still has them: the 404s above were about the project, not the ids
    for path in ("/v1/files/{file_id}", "/v1/fine_tuning/jobs/{job_id}"):
        assert _call(url, "GET", _fill(path, ids), {"authorization": "Bearer key-a"})[0] == 200
    # the request log has no GET: its row and feedback are still in the database, also after the other project
    # deleted all of its own log
    assert _call(url, "DELETE", "/v1/requests", {"authorization": "Bearer key-b"})[0] == 200
    store = app.state.tunelab.store
    assert store.get_request(ids["request_id"]) is not None
    assert store.get_feedback(int(ids["feedback_id"])) is not None


def test_admin_operations_refuse_a_project_key(server: tuple[str, Any, dict[str, str]]) -> None:
    url, app, ids = server
    assert set(_routes(app)) >= ADMIN
    for method, path in sorted(ADMIN):
        assert _call(url, method, _fill(path, ids), {"authorization": "Bearer key-a"})[0] == 401, (method, path)
    assert _call(url, "GET", "/metrics", {"authorization": "Bearer key-admin"})[0] == 200


def _sign_in(url: str, key: str) -> str:
    req = urllib.request.Request(url + "/sign-in", data=f"key={key}&next=/".encode(), method="POST",
                                 headers={"content-type": "application/x-www-form-urlencoded"})

    try:
        _OPENER.open(req, timeout=30)
    except urllib.error.HTTPError as exc:
        assert exc.code == 303
        return str(exc.headers["set-cookie"]).split(";")[0]
    raise AssertionError("sign-in did not redirect")
