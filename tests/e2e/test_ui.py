"""The web UI in a real headless Chromium against a real server: sign in, a file with a bad row named by its line,
the fixed file, a job of a few steps, its live chart, the report and the playground answering from both models;
another project's job page is 404; every page passes axe-core with no serious violation. Screenshots of each page
go to $TUNELAB_UI_SCREENSHOTS when set (docs/ui.md shows them)."""

from __future__ import annotations

import json
import os
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import chromium, write_jsonl
from tunelab.serve.server import BackgroundServer, build
from tunelab.serve.state import ServeSettings


def rehearsals() -> list[Any]:
    """This process's children measuring an estimate (`python -m tunelab.plan.rehearsal`)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "tunelab.plan.rehearsal" in child.cmdline():
                out.append(child)
        except psutil.Error:
            pass
    return out

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
ROWS = [{"messages": [{"role": "user", "content": f"Where is my order {i}?"},
                      {"role": "assistant", "content": f"Order {i} ships within two days."}]} for i in range(12)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = ServeSettings(api_keys=["acme:key-a", "beta:key-b"], worker_jobs=1, log_content=True)
    app = build(str(tiny_model), name="tiny", data=str(tmp_path_factory.mktemp("ui-server")), settings=settings)
    with BackgroundServer(app) as url:
        yield url


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded default model, as `tunelab serve` starts without a model."""
    settings = ServeSettings(api_keys=["acme:key-a", "beta:key-b"], worker_jobs=1, log_content=True)
    app = build(None, data=str(tmp_path_factory.mktemp("ui-default")), settings=settings)
    with BackgroundServer(app) as url:
        yield url


def shot(page: Any, name: str) -> None:
    folder = os.environ.get("TUNELAB_UI_SCREENSHOTS")
    if folder and "tiny" not in page.inner_text("body"):  # the pictures in the docs show the default model
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"ui-{name}.png"), full_page=True)


def accessible(page: Any) -> None:
    """axe-core's WCAG 2 A/AA rules on the page as it is: no serious or critical violation."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})).violations
        .filter(v => ['serious', 'critical'].includes(v.impact))
        .map(v => ({id: v.id, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.html)}))""")
    assert not found, json.dumps(found, indent=1)


def sign_in(browser: Any, url: str, key: str, target: str = "/") -> Any:
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.goto(url + target)
    assert "/sign-in" in page.url  # pages need a key first
    page.fill("#key", key)
    page.keyboard.press("Enter")
    page.wait_for_url(url + target)
    return page


def test_sign_in_refuses_a_wrong_key(browser: Any, server: str) -> None:
    page = browser.new_context().new_page()
    page.goto(server + "/data")
    assert page.url.startswith(server + "/sign-in?next=")
    accessible(page)
    shot(page, "sign-in")
    page.fill("#key", "not-a-key")
    page.click("button[type=submit]")
    assert "not one of this server's keys" in page.inner_text("#key-error")
    assert page.evaluate("fetch('/v1/files', {headers: {'x-tunelab-ui': '1'}}).then(r => r.status)") == 401
    # a sign-in posted by another site (login CSRF) is refused, even with a good key
    forged = page.request.post(server + "/sign-in", form={"key": "key-a", "next": "/"},
                               headers={"origin": "http://evil.example"}, max_redirects=0)
    assert forged.status == 403 and "set-cookie" not in forged.headers


@pytest.mark.parametrize("which", ["server", pytest.param("default_server", marks=pytest.mark.slow)])
def test_from_a_data_file_to_the_playground(browser: Any, which: str, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(which)
    page = sign_in(browser, server, "key-a", "/data")
    bad = tmp_path / "orders.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + '\n{"messages": [{"role": "user", "content": "hi"}]}\n'
                   + "\n".join(json.dumps(r) for r in ROWS[2:]) + "\n")
    page.click("#data-form summary")
    page.select_option("#format", "chat")  # a setting of the form, kept across the re-upload below
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector(".verdict.bad")
    errors = page.inner_text(".errors")
    assert "orders.jsonl:3" in errors and "no assistant message" in errors
    accessible(page)
    shot(page, "data-bad-row")

    page.set_input_files("#file-input", str(write_jsonl(tmp_path / "orders.jsonl", ROWS)))
    page.wait_for_selector(".verdict.ok")
    assert page.input_value("#format") == "chat"
    assert "12 of 12" in page.inner_text(".facts") and "assistant's replies" in page.inner_text(".facts")
    shot(page, "data-ok")
    page.click("#use-file")
    page.wait_for_url(re.compile(r".*/jobs/new\?file=file-.*"))
    page.wait_for_selector("#estimate:has-text('usable rows')")
    if which == "server":  # measured here (the default model's rehearsal is timed in bench/, not waited for)
        page.wait_for_selector("#estimate:has-text('On this server: about')", timeout=180_000)
        assert "peak memory" in page.inner_text("#estimate")
    page.fill("#suffix", "orders")
    shot(page, "new-job")
    page.click("#advanced summary")
    for key, value in (("train.max_steps", "4"), ("train.threads", "1"), ("train.save_every", "2"),
                       ("data.val_fraction", "0.25"), ("train.eval_every", "2")):
        page.fill(f"[data-key='{key}']", value)
    page.select_option("[data-key='eval.probes.enabled']", "false")
    accessible(page)
    page.click("#start")
    page.wait_for_url(re.compile(r".*/jobs/ftjob-[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    if which == "default_server":  # the form's estimate, still measuring, stops with the page it was for
        deadline = time.time() + 10
        while rehearsals() and time.time() < deadline:
            time.sleep(0.2)
        assert not rehearsals(), "the left page's rehearsal still runs beside the job"

    page.wait_for_function("Number(document.getElementById('job').dataset.steps || 0) >= 1", timeout=120_000)
    page.wait_for_selector("#result-link:not([hidden])", timeout=240_000)
    assert page.get_attribute("#progress", "value") == "100"
    assert "step 4 of 4" in page.inner_text("#progress-text")
    assert "validation loss" in page.inner_text("#chart-text")
    assert "token F1" in page.inner_text("#task-name") and "%" in page.inner_text("#task-text")
    assert "The job has successfully completed" in page.inner_text("#events")
    assert ":ckpt-step-2" in page.inner_text("#checkpoints")
    accessible(page)
    shot(page, "job")

    page.click("#result-link")
    page.wait_for_url(f"{server}/jobs/{job_id}/result")
    model = page.get_attribute("#result", "data-model")
    base = page.get_attribute("#result", "data-base")
    assert model.startswith(f"ft:{base}:acme:orders:")
    report = page.frame_locator("#report")
    assert report.locator("body").inner_text(timeout=30_000)
    page.fill("#message", "Where is my order 3?")
    page.click("#play-form button[type=submit]")
    for side in ("#answer-base", "#answer-tuned"):
        page.wait_for_function(f"document.querySelector('{side}').textContent.length > 0 && "
                               f"!document.querySelector('{side}').hasAttribute('aria-busy')", timeout=60_000)
        assert not page.inner_text(side).startswith("Error"), page.inner_text(side)
    page.click("#rate .rate-down")
    page.fill("#rate textarea", "Order 3 ships within two days.")
    page.click("#rate .send-correction")
    page.wait_for_selector("#rate p:has-text('correction is kept')")
    accessible(page)
    shot(page, "result")

    page.click(f"a[href='/jobs/{job_id}/model']")
    page.wait_for_url(f"{server}/jobs/{job_id}/model")
    page.wait_for_function("Number(document.getElementById('model-page').dataset.watched || 0) >= 1")
    assert model in page.inner_text("#curl-snippet") and server in page.inner_text("#python-snippet")
    assert "request(s)" in page.inner_text("#summary")
    queue = page.inner_text("#queue")
    assert "Where is my order 3?" in queue and "corrected" in queue
    with page.expect_download() as download:
        page.click(f"a[href='/jobs/{job_id}/download/adapter']")
    assert download.value.suggested_filename.endswith(".zip")
    page.click(".export[data-format='gguf'] .make-export")  # tunelab export, run by the server
    page.wait_for_selector(".export[data-format='gguf'][data-status='ready']", timeout=180_000)
    with page.expect_download() as download:
        page.click(".export[data-format='gguf'] .download-export")
    with zipfile.ZipFile(download.value.path()) as z:
        names = z.namelist()
    assert any(n.endswith(".gguf") for n in names) and any(n.endswith("Modelfile") for n in names), names
    accessible(page)
    shot(page, "model")
    page.click("#start-round")
    page.wait_for_url(re.compile(r".*/jobs/ftjob-[0-9a-f]+$"))
    next_job = page.url.rsplit("/", 1)[1]
    assert next_job != job_id
    page.wait_for_selector("#status .status")
    api_job = page.evaluate(f"fetch('/v1/fine_tuning/jobs/{next_job}', {{headers: {{'x-tunelab-ui': '1'}}}})"
                            ".then(r => r.json())")
    assert api_job["model"] == model and api_job["metadata"] == {"next_round_of": job_id}
    page.click("#cancel")
    # the same feedback as preference pairs: the correction preferred over the answer it corrects
    dpo = page.evaluate(f"""fetch('/v1/fine_tuning/jobs/{job_id}/next_round', {{method: 'POST',
        headers: {{'x-tunelab-ui': '1', 'content-type': 'application/json'}}, body: JSON.stringify({{method: 'dpo'}})}})
        .then(r => r.json())""")
    assert dpo["method"]["type"] == "dpo" and dpo["training_file_rows"] == 1, dpo
    page.evaluate(f"fetch('/v1/fine_tuning/jobs/{dpo['id']}/cancel', "
                  "{method: 'POST', headers: {'x-tunelab-ui': '1'}})")

    page.goto(server + "/")
    page.wait_for_selector(f"a[href='/jobs/{job_id}']")
    assert model in page.inner_text("#models")
    accessible(page)
    shot(page, "home")

    other = sign_in(browser, server, "key-b", "/")
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/result", f"/jobs/{job_id}/report", f"/jobs/{job_id}/model",
                 f"/jobs/{job_id}/download/adapter", f"/jobs/{job_id}/download/gguf"):
        response = other.goto(server + path)
        assert response.status == 404 and job_id in other.inner_text("main")
    for api_path in (f"/v1/tunelab/models/{model}/requests", f"/v1/fine_tuning/jobs/{job_id}/exports/gguf",
                     f"/v1/fine_tuning/jobs/{job_id}/exports/gguf/content"):
        status = other.evaluate(f"fetch('{api_path}', {{headers: {{'x-tunelab-ui': '1'}}}}).then(r => r.status)")
        assert status == 404, api_path
    other.goto(server + "/")
    other.wait_for_selector("#models ul")
    assert model not in other.inner_text("#models") and job_id not in other.inner_text("#jobs")


def test_the_new_job_form_works_from_the_keyboard(browser: Any, server: str, tmp_path: Path) -> None:
    page = sign_in(browser, server, "key-a", "/data")
    page.set_input_files("#file-input", str(write_jsonl(tmp_path / "kb.jsonl", ROWS)))
    page.wait_for_selector("#use-file")
    page.focus("#use-file")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/jobs/new.*"))
    page.wait_for_selector("#training-file option", state="attached")
    page.focus("#training-file")
    order = []
    for _ in range(12):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
    assert order.index("validation-file") < order.index("task") < order.index("model") < order.index("suffix")
    page.focus("#suffix")
    page.keyboard.type("bad name!")
    page.focus("#start")
    page.keyboard.press("Enter")  # the browser refuses the pattern before anything is sent
    assert page.url.endswith("/jobs/new?file=" + page.input_value("#training-file") + "&task=answer")
