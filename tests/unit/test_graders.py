"""OpenAI's graders (rl.grader, and the graders/run and /validate endpoints' library): every grader type and
operation, templates, the python grader's process and its failures, the multi grader's formula, grader models
(a reward-model run, a local OpenAI-compatible server), validation, the config field and the reward function."""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tunelab import graders
from tunelab.config import ConfigError, dump_config, load_config
from tunelab.data.preference import load_prompts
from tunelab.graders import text_similarity


def make(**fields: Any) -> Any:
    return graders.validate(fields)


def check(op: str, reference: str = "{{item.ref}}") -> Any:
    return make(type="string_check", name="s", input="{{sample.output_text}}", reference=reference, operation=op)


def sample(text: str) -> dict[str, Any]:
    return {"output_text": text}


# --- string_check and templates ------------------------------------------------------------------------------


@pytest.mark.parametrize(("op", "text", "ref", "reward"), [
    ("eq", "Paris", "Paris", 1.0), ("eq", "Paris ", "Paris", 0.0), ("eq", "paris", "Paris", 0.0),
    ("ne", "Rome", "Paris", 1.0), ("ne", "Paris", "Paris", 0.0),
    ("like", "It is Paris.", "Paris", 1.0), ("like", "It is paris.", "Paris", 0.0),
    ("ilike", "IT IS PARIS.", "paris", 1.0), ("ilike", "Rome", "paris", 0.0)])
def test_string_check_operations(op: str, text: str, ref: str, reward: float) -> None:
    got = graders.grade(check(op), sample(text), {"ref": ref})
    assert got.reward == reward and got.errors == [] and got.metadata["scores"] == {"s": reward}
    assert got.metadata["name"] == "s" and got.metadata["type"] == "string_check"


def test_the_result_has_the_shape_of_openais_graders_run_answer() -> None:
    out = graders.grade(check("eq"), sample("a"), {"ref": "a"}).to_dict()
    assert set(out) == {"reward", "sub_rewards", "metadata", "model_grader_token_usage_per_model"}
    assert set(graders.ERROR_FLAGS) <= set(out["metadata"]["errors"])
    assert {"name", "type", "errors", "execution_time", "scores", "token_usage", "sampled_model_name"} <= set(
        out["metadata"])


def test_templates_read_nested_item_fields_and_the_answers_json() -> None:
    item = {"user": {"emails": ["a@x.org", "b@x.org"], "age": 41}, "tags": {"k": True}}
    assert graders.render("{{ item.user.emails[1] }} / {{item.user.emails.0}}", {}, item) == "b@x.org / a@x.org"
    assert graders.render("{{item.user.age}} {{item.tags}}", {}, item) == '41 {"k": true}'  # non-strings as JSON
    s = graders.sample_from_text('{"answer": {"city": "Paris"}}')
    assert graders.render("{{sample.output_json.answer.city}}!", s, {}) == "Paris!"
    g = check("eq", "{{item.user.emails[0]}}")
    assert graders.grade(g, sample("a@x.org"), item).reward == 1.0


def test_a_variable_that_is_not_there_scores_0_with_the_error_flagged() -> None:
    got = graders.grade(check("eq", "{{item.user.name}}"), sample("x"), {"user": {"age": 3}})
    assert got.reward == 0.0 and got.errors == ["invalid_variable_error"]
    assert "item.user has no 'name' (its fields: age)" in got.metadata["errors"]["invalid_variable_error_details"]
    g = make(type="string_check", name="j", input="{{sample.output_json.city}}", reference="Paris", operation="eq")
    assert graders.grade(g, sample("not json"), {}).errors == ["sample_parse_error"]
    assert graders.grade(g, sample('{"city": "Paris"}'), {}).reward == 1.0
    assert graders.missing_item_fields(check("eq", "{{item.a.b}} {{item.c[2]}}"), {"a": {"b": 1}, "c": [1]}) == [
        "item.c[2]"]


# --- text_similarity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [m for m in graders.METRICS if m != "meteor"])
def test_text_similarity_metrics(metric: str) -> None:
    g = make(type="text_similarity", name="t", input="{{sample.output_text}}", reference="{{item.ref}}",
             evaluation_metric=metric)
    ref = "the cat sat on the mat by the door today"
    same = graders.grade(g, sample(ref), {"ref": ref}).reward
    close = graders.grade(g, sample("the cat sat on the mat by a door"), {"ref": ref}).reward
    far = graders.grade(g, sample("quantum chromodynamics"), {"ref": ref}).reward
    assert same == pytest.approx(1.0) and 0.0 <= far < close < 1.0


def test_cosine_and_meteor_without_its_data_are_refused_naming_what_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"cosine .*text-embedding-3-large.*fuzzy_match, bleu, gleu, rouge_1"):
        make(type="text_similarity", name="t", input="a", reference="b", evaluation_metric="cosine")
    monkeypatch.setattr(text_similarity, "wordnet", lambda: None)
    with pytest.raises(ConfigError, match=r"meteor needs NLTK's WordNet data.*nltk.downloader wordnet.*rouge_l"):
        make(type="text_similarity", name="t", input="a", reference="b", evaluation_metric="meteor")


def test_meteor_runs_when_wordnet_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoSynonyms:  # WordNet's interface as METEOR uses it: exact and stem matches still count
        def synsets(self, word: str) -> list[Any]:
            return []

    monkeypatch.setattr(text_similarity, "wordnet", lambda: NoSynonyms())
    g = make(type="text_similarity", name="t", input="{{sample.output_text}}", reference="the cats sat on the mat",
             evaluation_metric="meteor")
    assert graders.grade(g, sample("the cats sat on the mat"), {}).reward > graders.grade(
        g, sample("a cat sits"), {}).reward > 0


# --- python ------------------------------------------------------------------------------------------------------

SOURCE = """
import os, time
def grade(sample, item):
    print("printing does not disturb the results")
    kind = item.get("kind")
    if kind == "sleep":
        time.sleep(30)
    if kind == "raise":
        raise KeyError("no such thing")
    if kind == "text":
        return "high"
    if kind == "secret":
        return float("TUNELAB_GRADER_API_KEY" in os.environ)
    if kind == "exit":
        os._exit(3)
    return len(sample["output_text"]) / 10 + item.get("bonus", 0)
"""


def test_python_grader_grades_in_its_own_process() -> None:
    g = make(type="python", name="p", source=SOURCE)
    assert graders.grade(g, sample("abc"), {"bonus": 1}).reward == pytest.approx(1.3)


def test_python_grader_failures_score_0_and_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_GRADER_API_KEY", "sk-secret")
    g = make(type="python", name="p", source=SOURCE)
    kinds = ["raise", "text", "sleep", None, "exit", "secret", None]
    got = graders.grade_many(g, [(sample("ab"), {"kind": k}) for k in kinds], python_timeout=0.5)
    raised, text, slept, ok, ended, secret, ok_again = got
    assert raised.reward == 0.0 and raised.errors == ["python_grader_runtime_error"]
    details = raised.metadata["errors"]["python_grader_runtime_error_details"]
    assert 'File "<grader>", line 9, in grade' in details and "KeyError: 'no such thing'" in details
    assert text.errors == ["python_grader_runtime_error"]
    assert "returned str 'high', not a finite number" in text.metadata["errors"]["python_grader_runtime_error_details"]
    assert slept.errors == ["python_grader_server_error"]
    assert slept.metadata["errors"]["python_grader_server_error_type"] == "timeout" and slept.reward == 0.0
    assert ended.metadata["errors"]["python_grader_server_error_type"] == "crashed"
    # after a timeout or a crash the remaining answers are graded in a fresh process
    assert ok.reward == ok_again.reward == pytest.approx(0.2) and ok.errors == []
    assert secret.reward == 0.0 and secret.errors == []  # this process's environment (API keys) is not passed on


@pytest.mark.skipif(sys.platform != "linux", reason="address-space limits as Linux enforces them")
def test_python_grader_memory_is_limited() -> None:
    g = make(type="python", name="p", source="def grade(sample, item):\n    return len(bytearray(8 * 2**30))\n")
    got = graders.grade(g, sample("x"), {})
    assert got.reward == 0.0 and "MemoryError" in got.metadata["errors"]["python_grader_runtime_error_details"]


@pytest.mark.parametrize(("source", "said"), [
    ("def grade(sample, item)\n    return 1\n", "does not compile: expected ':' at line 1"),
    ("def grader(sample, item):\n    return 1\n", "defines no grade(sample, item)"),
    ("if True:\n    def grade(sample, item):\n        return 1\n", "defines no grade(sample, item)")])
def test_python_grader_that_cannot_run_is_refused(source: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said.replace("(", r"\(").replace(")", r"\)")):
        make(type="python", name="p", source=source)


# --- multi --------------------------------------------------------------------------------------------------------


def multi(formula: str, **extra: Any) -> Any:
    return make(type="multi", name="m", calculate_output=formula, graders={
        "name": {"type": "string_check", "name": "n", "input": "{{sample.output_json.name}}",
                 "reference": "{{item.name}}", "operation": "eq"},
        "email": {"type": "text_similarity", "name": "e", "input": "{{sample.output_json.email}}",
                  "reference": "{{item.email}}", "evaluation_metric": "fuzzy_match"}} | extra)


def test_multi_combines_its_graders_by_the_formula() -> None:
    item = {"name": "Ann", "email": "ann@example.org"}
    answer = sample('{"name": "Ann", "email": "ann@example.com"}')
    got = graders.grade(multi("(name + email) / 2"), answer, item)
    assert got.sub_rewards["name"] == 1.0 and 0.5 < got.sub_rewards["email"] < 1.0
    assert got.reward == pytest.approx((1.0 + got.sub_rewards["email"]) / 2) and got.metadata["type"] == "multi"
    email = got.sub_rewards["email"]
    for formula, value in [("min(name, email) * 2 - 1", 2 * email - 1), ("max(name, email) ^ 2 + abs(-1)", 2.0),
                           ("2 ^ 3 * 2 - 2 ^ 2", 12.0),
                           ("floor(email) + ceil(email) + sqrt(4) + exp(0) + log(1)", 4.0), ("-name", -1.0),
                           ("2 ** 3", 8.0)]:
        assert graders.grade(multi(formula), answer, item).reward == pytest.approx(value), formula


def test_multi_errors_score_0_flagged() -> None:
    got = graders.grade(multi("name / (email - email)"), sample('{"name": "A", "email": "a"}'), {"name": "A",
                                                                                                  "email": "a"})
    assert got.reward == 0.0 and "division by zero" in got.metadata["errors"]["other_error_details"]
    failed_sub = graders.grade(multi("name + email"), sample("not json"), {"name": "A", "email": "a"})
    assert failed_sub.errors == ["sample_parse_error"] and failed_sub.sub_rewards == {"name": 0.0, "email": 0.0}


@pytest.mark.parametrize(("formula", "said"), [
    ("name + phone", "'phone' is not one of the graders"), ("__import__('os')", r"__import__\(...\) is not allowed"),
    ("name.real", "Attribute is not allowed"), ("(lambda: 1)()", "is not allowed"), ("name > 0", "Compare"),
    ("min + 1", "'min' is not one of the graders"), ("'a' * 3", "is not a number"), ("name +", "is not a formula")])
def test_multi_formula_is_arithmetic_only(formula: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        multi(formula)


def test_multi_takes_one_grader_as_the_client_types_it_and_label_model_only_inside() -> None:
    one = make(type="multi", name="m", calculate_output="s", graders={
        "type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"})
    assert set(one.graders) == {"s"} and graders.grade(one, sample("x"), {}).reward == 1.0
    with pytest.raises(ConfigError, match="only allowed inside a multi grader"):
        graders.validate({"type": "label_model", "name": "l", "model": "m", "input": [], "labels": ["a"],
                          "passing_labels": ["a"]})


# --- validate ------------------------------------------------------------------------------------------------------


def test_validate_names_the_field_that_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"graders\.name\.operation: Input should be 'eq', 'ne', 'like' or 'ilike'"):
        multi("name", name={"type": "string_check", "name": "n", "input": "a", "reference": "b", "operation": "is"})
    with pytest.raises(ConfigError, match=r"evaluation_metric: Input should be"):
        make(type="text_similarity", name="t", input="a", reference="b", evaluation_metric="bleurt")
    with pytest.raises(ConfigError, match="surprise: Extra inputs are not permitted"):
        make(type="string_check", name="s", input="a", reference="b", operation="eq", surprise=1)
    with pytest.raises(ConfigError, match="the only namespaces are item and sample"):
        check("eq", "{{items.ref}}")
    with pytest.raises(ConfigError, match=r"\{\{sample.output_tools\}\} is not a sample variable"):
        check("eq", "{{sample.output_tools}}")
    with pytest.raises(ConfigError, match="does not match any of the expected tags"):
        graders.validate({"type": "regex", "name": "r"})
    with pytest.raises(ConfigError, match=r"range \[1.0, 0.0\] must be two numbers"):
        make(type="score_model", name="s", model="m", input=[{"role": "user", "content": "x"}], range=[1, 0])


# --- grader models: a local OpenAI-compatible server, a tunelab reward-model run -----------------------------------


@pytest.fixture
def grader_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[dict[str, Any]], Any]], None]]:
    """A local /v1/chat/completions whose reply the test sets: reply(request) -> text, or (status, error text)."""
    state: dict[str, Any] = {"reply": lambda req: "0"}
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(req | {"auth": self.headers.get("Authorization")})
            got = state["reply"](req)
            status, body = (got[0], {"error": {"message": got[1]}}) if isinstance(got, tuple) else (200, {
                "id": "c", "object": "chat.completion", "created": 0, "model": req["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": got}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TUNELAB_GRADER_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
    monkeypatch.setenv("TUNELAB_GRADER_API_KEY", "sk-test")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    def set_reply(f: Callable[[dict[str, Any]], Any]) -> None:
        state["reply"] = f

    set_reply.seen = seen  # type: ignore[attr-defined]
    yield set_reply
    server.shutdown()


def score_model(**extra: Any) -> Any:
    return make(type="score_model", name="judge", model="judge-model", input=[
        {"role": "developer", "content": "Score the answer from 0 to 10."},
        {"role": "user", "content": [{"type": "input_text", "text": "Q: {{item.q}}"},
                                     {"type": "output_text", "text": " A: {{sample.output_text}}"}]}]) if not extra \
        else make(type="score_model", name="judge", model="judge-model",
                  input=[{"role": "user", "content": "{{sample.output_text}}"}], **extra)


def test_score_model_on_a_server(grader_server: Any) -> None:
    grader_server(lambda req: "Score: 7 out of 10")
    g = make(type="score_model", name="judge", model="judge-model", range=[0, 10],
             sampling_params={"temperature": 0, "seed": 3, "max_completions_tokens": 5},
             input=[{"role": "developer", "content": "Score it."},
                    {"role": "user", "content": [{"type": "input_text", "text": "Q: {{item.q}}"},
                                                 {"type": "output_text", "text": " A: {{sample.output_text}}"}]}])
    got = graders.grade(g, sample("Paris"), {"q": "capital of France?"})
    assert got.reward == 7.0 and got.errors == [] and got.metadata["token_usage"] == 9
    assert got.model_grader_token_usage_per_model == {"judge-model": {"prompt_tokens": 7, "completion_tokens": 2,
                                                                      "total_tokens": 9}}
    req = grader_server.seen[-1]
    assert req["messages"] == [{"role": "system", "content": "Score it."},
                               {"role": "user", "content": "Q: capital of France? A: Paris"}]
    assert req["temperature"] == 0 and req["seed"] == 3 and req["max_completion_tokens"] == 5
    assert req["auth"] == "Bearer sk-test"

    grader_server(lambda req: '{"steps": [], "result": 42}')
    assert graders.grade(g, sample("x"), {"q": "q"}).reward == 10.0  # clamped to range
    grader_server(lambda req: "I can't tell")
    assert graders.grade(g, sample("x"), {"q": "q"}).errors == ["model_grader_parse_error"]
    grader_server(lambda req: (400, "no such model"))
    bad = graders.grade(g, sample("x"), {"q": "q"})
    assert bad.errors == ["model_grader_server_error"] and "no such model" in bad.metadata["errors"][
        "model_grader_server_error_details"]


def test_label_model_inside_multi_on_a_server(grader_server: Any) -> None:
    grader_server(lambda req: "Verdict: the answer is CORRECT." if "Paris" in str(req["messages"]) else "wrong")
    g = make(type="multi", name="m", calculate_output="verdict", graders={"verdict": {
        "type": "label_model", "name": "v", "model": "judge-model", "labels": ["correct", "wrong"],
        "passing_labels": ["correct"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}})
    assert graders.grade(g, sample("Paris"), {}).reward == 1.0
    assert graders.grade(g, sample("Rome"), {}).reward == 0.0
    assert graders.parse_label('{"result": "wrong"}', ["correct", "wrong"]) == "wrong"


def test_model_graders_need_a_server_or_a_reward_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TUNELAB_GRADER_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="TUNELAB_GRADER_BASE_URL is not set"):
        score_model(range=[0, 1])
    (tmp_path / "config.yaml").write_text("method: sft\n")
    (tmp_path / "summary.json").write_text('{"status": "completed"}')
    with pytest.raises(ConfigError, match="not a completed tunelab reward-model run"):
        make(type="score_model", name="s", model=str(tmp_path), input=[{"role": "user", "content": "x"}])


def test_score_model_on_a_reward_model_run(tiny_model: Path, tmp_path: Path) -> None:
    """A reward-model run scores the conversation with the answer as the assistant's turn, squashed into range."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "rm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(run / "tokenizer")
    (run / "config.yaml").write_text(f"method: reward\nmodel:\n  base: {tiny_model}\n")
    (run / "summary.json").write_text('{"status": "completed"}')
    (run / "labels.json").write_text('["reward"]')
    g = make(type="score_model", name="rm", model=str(run), range=[-1, 1],
             input=[{"role": "user", "content": "{{item.q}}"}])
    got = graders.grade_many(g, [(sample("Paris"), {"q": "capital of France?"}), (sample("hello"), {"q": "hi"})])
    assert all(-1 < r.reward < 1 and r.errors == [] for r in got) and got[0].reward != got[1].reward
    raw = got[0].metadata["scores"]["reward_model_score"]
    assert got[0].reward == pytest.approx(-1 + 2 / (1 + 2.718281828459045 ** -raw))


# --- the config field, RFT rows and the reward function ---------------------------------------------------------

GRADER_YAML = """\
method: grpo
rl:
  grader:
    type: python
    name: brief
    source: |
      def grade(sample, item):
          return 1.0 if item["answer"] in sample["output_text"] else 0.0
  grader_timeout: 2
"""


def test_a_config_with_a_grader_loads_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "rft.yaml"
    path.write_text(GRADER_YAML)
    cfg = load_config(path)
    assert cfg.rl.grader is not None and cfg.rl.grader.type == "python" and cfg.rl.grader_timeout == 2
    (tmp_path / "back.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "back.yaml", rules=False).rl.grader == cfg.rl.grader


def test_grader_with_rewards_is_refused_naming_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(GRADER_YAML + "  rewards: [exact]\n  reward_weights: [1.0]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:10: rl.grader and rl.rewards are both set" in str(err.value)
    assert f"{path}:11: rl.grader and rl.reward_weights are both set" in str(err.value)
    with pytest.raises(ConfigError, match="source does not compile"):
        load_config(None, ["method=grpo", "rl.grader={type: python, name: p, source: 'def grade(:'}"])


DEEP_YAML = """\
method: grpo
rl:
  grader:
    type: multi
    name: contact
    calculate_output: "city + judge"
    graders:
      city:
        type: string_check
        name: city
        input: "{{sample.output_text}}"
        reference: "{{item.city}}"
        operation: contains
      judge:
        type: score_model
        name: judge
        model: judge-model
        temprature: 0
        input:
          - role: user
            content:
              - type: input_text
                text: 3
"""


def test_errors_deep_in_a_grader_name_the_key_as_written_at_its_line(tmp_path: Path) -> None:
    """pydantic puts each grader's type into an error's location (rl.grader.multi.graders.city.string_check...):
    the loader drops it, so the key reads as in the YAML and is found at its line."""
    path = tmp_path / "deep.yaml"
    path.write_text(DEEP_YAML)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}:13: rl.grader.graders.city.operation = 'contains': Input should be 'eq'" in msg
    assert f"{path}:18: unknown key 'rl.grader.graders.judge.temprature'" in msg
    assert "Valid keys here: input, model, name, range, sampling_params, type" in msg
    assert f"{path}:23: rl.grader.graders.judge.input.0.content.0.text = 3: Input should be a valid string" in msg
    assert "string_check" not in msg and "score_model" not in msg and "tagged-union" not in msg
    path.write_text(DEEP_YAML.replace("        operation: contains\n", ""))
    with pytest.raises(ConfigError, match=re.escape(f"{path}:8: rl.grader.graders.city.operation is required")):
        load_config(path)  # a missing key: the line of the grader that lacks it


def test_a_grader_for_a_method_that_does_not_use_it_is_refused() -> None:
    with pytest.raises(ConfigError, match="rl.grader is not used by method sft"):
        load_config(None, ["method=sft", "rl.grader={type: python, name: p, source: 'def grade(s, i): return 1'}"])


def test_rft_rows_keep_their_other_fields_as_the_item(tmp_path: Path) -> None:
    path = tmp_path / "rft.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Name a city"}], "reference": {"city": "Paris"}, "id": 7},
            {"question": "2+3?", "answer": 5, "source": "gsm"},
            {"prompt": "hi", "answer": "hello"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    (tmp_path / "q.jsonl").write_text(json.dumps(rows[1]) + "\n")
    (tmp_path / "p.jsonl").write_text(json.dumps(rows[2]) + "\n")
    (rft,), _ = load_prompts(path)
    assert rft.item == {"reference": {"city": "Paris"}, "id": 7} and rft.answer is None
    (q,), _ = load_prompts(tmp_path / "q.jsonl")
    assert q.item == {"answer": 5, "source": "gsm"} and q.answer == "5" and q.prompt[-1]["content"] == "2+3?"
    (p,), _ = load_prompts(tmp_path / "p.jsonl")
    assert p.item == {"answer": "hello"} and p.answer == "hello"


def test_reward_function_in_trls_signature(caplog: pytest.LogCaptureFixture) -> None:
    f = graders.reward_function(multi("(name + email) / 2"))
    assert f.__name__ == "m"
    items = [graders.item_column({"name": "Ann", "email": "ann@x.org"})] * 2
    logged: dict[str, float] = {}
    got = f([[{"role": "user", "content": "q"}]] * 2,
            [[{"role": "assistant", "content": '{"name": "Ann", "email": "ann@x.org"}'}], "not json"],
            item=items, answer=[None, None], log_metric=logged.__setitem__, trainer_state=None)
    assert got == [1.0, 0.0] and logged == {"grader/error_rate": 0.5, "grader/name": 0.5, "grader/email": 0.5}
    assert f.graded == 2 and f.failed == 1 and "sample_parse_error" in caplog.text

    missing = graders.reward_function(check("eq", "{{item.nope}}"))  # answers fail, the run goes on
    assert missing([], ["a", "b"], item=[graders.item_column({"ref": "a"})] * 2) == [0.0, 0.0]
    assert missing.failed == 2 and "item has no 'nope'" in (missing.first_error or "")


def test_a_grader_server_that_fails_every_first_answer_stops_the_run(grader_server: Any) -> None:
    grader_server(lambda req: (400, "model not found"))
    f = graders.reward_function(score_model(range=[0, 1]))
    with pytest.raises(graders.GraderError, match=r"server failed on every one of the 2 answers.*model not found"):
        f([], ["a", "b"])
    grader_server(lambda req: "1")
    assert f([], ["a", "b"]) == [1.0, 1.0]  # later calls: failures would score 0 and be counted
