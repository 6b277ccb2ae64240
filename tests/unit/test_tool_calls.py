"""Function-calling rows (OpenAI's `tools`, `tool_calls`, `tool` results): every problem reported with file:line;
rendered through the model's own template with the tools; loss on the assistant's replies and calls, never on tool
results or the tools block; refused where the template has no tool support."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tunelab_cli, write_jsonl
from tunelab.data.formats import to_record
from tunelab.data.load import load_records
from tunelab.data.records import Record, RowError
from tunelab.data.report import prepare
from tunelab.data.templates import IGNORE, Encoded, encode_record, tool_support

# ChatML with tools as Qwen2.5's template has them: a tools block in the system turn, each call as JSON text between
# <tool_call> tags (arguments through tojson), results grouped into a user turn between <tool_response> tags.
TOOL_CHATML = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- else %}{{- 'you are a bank bot' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}{{- THINK if loop.last and message.role == 'assistant' }}"
    "{{- message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{{- THINK if loop.last }}"
    "{{- message.content }}{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN25 = "{%- set THINK = '' %}" + TOOL_CHATML
# Qwen3 renders an empty thinking block in the last assistant turn only, so a reply renders differently once the
# conversation goes on: the masks take the path that does not rely on prefixes.
QWEN3 = "{%- set THINK = '<think>\\n\\n</think>\\n\\n' %}" + TOOL_CHATML

RATE = {"type": "function", "function": {
    "name": "get_rate", "description": "the exchange rate of a currency",
    "parameters": {"type": "object", "properties": {"currency": {"type": "string"}}, "required": ["currency"]}}}
BLOCK = {"type": "function", "function": {"name": "block_card", "parameters": {"type": "object", "properties": {}}}}


def call(cid: str, name: str = "get_rate", arguments: str = '{"currency": "EUR"}') -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


USER = {"role": "user", "content": "what is the rate for my card"}
CALLING = {"role": "assistant", "content": None, "tool_calls": [call("call_1")]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "1.1"}
ANSWER = {"role": "assistant", "content": "it is 1.1"}
ROW = {"messages": [USER, CALLING, RESULT, ANSWER], "tools": [RATE], "parallel_tool_calls": False}

EXPECTED_CALL = '<tool_call>\n{"name": "get_rate", "arguments": {"currency": "EUR"}}\n</tool_call><|im_end|>'


def record(row: dict[str, Any]) -> Record:
    rec, problems = to_record("f.jsonl:3", row, "chat")
    assert not problems, [str(p) for p in problems]
    assert rec is not None
    return rec


def problems_of(row: dict[str, Any]) -> list[str]:
    rec, problems = to_record("f.jsonl:7", row, "chat")
    assert rec is None and problems
    assert all(p.where == "f.jsonl:7" and p.severity == "error" and p.field for p in problems)
    return [p.message for p in problems]


def trained_runs(tok: Any, enc: Encoded) -> list[str]:
    """The trained tokens, one string per contiguous run."""
    runs: list[list[int]] = []
    prev = IGNORE
    for lab in enc.labels:
        if lab != IGNORE:
            if prev == IGNORE:
                runs.append([])
            runs[-1].append(lab)
        prev = lab
    return [tok.decode(r) for r in runs]


def with_template(tok: Any, template: str, *added: str) -> Any:
    out = copy.deepcopy(tok)
    out.chat_template = template
    if added:  # Qwen's tool tags are single tokens: a span must not start or end inside one
        out.add_tokens(list(added))
    return out


@pytest.fixture(scope="module")
def qwen25(tiny_tokenizer: Any) -> Any:
    return with_template(tiny_tokenizer, QWEN25)


@pytest.fixture(scope="module")
def qwen3(tiny_tokenizer: Any) -> Any:
    return with_template(tiny_tokenizer, QWEN3, "<tool_call>", "</tool_call>", "<think>", "</think>")


# --- records --------------------------------------------------------------------------------------


def test_openai_row_keeps_tools_and_the_call_fields() -> None:
    rec = record(ROW)
    assert rec.tools == [RATE]
    assert rec.messages[1] == {"role": "assistant", "content": "", "tool_calls": [call("call_1")]}
    # a result also names its function, as Hugging Face templates read it
    assert rec.messages[2] == {"role": "tool", "content": "1.1", "tool_call_id": "call_1", "name": "get_rate"}
    rec = record({"messages": [{**USER, "name": "ana"}, CALLING]})  # a final call with no result is a lesson too
    assert rec.messages[0]["name"] == "ana" and rec.tools is None


def test_arguments_given_as_an_object_become_json_text() -> None:
    row = {"messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "get_rate", "arguments": {"currency": "€"}}}]}]}
    fn = record(row).messages[1]["tool_calls"][0]
    assert fn == {"id": "c", "type": "function", "function": {"name": "get_rate", "arguments": '{"currency": "€"}'}}


def test_older_functions_and_function_call_are_converted() -> None:
    row = {"functions": [RATE["function"]], "messages": [
        USER, {"role": "assistant", "content": None, "function_call": {"name": "get_rate", "arguments": "{}"}},
        {"role": "function", "name": "get_rate", "content": "1.1"}, ANSWER]}
    rec = record(row)
    assert rec.tools == [RATE]
    assert rec.messages[1]["tool_calls"] == [{"id": "call_1", "type": "function",
                                              "function": {"name": "get_rate", "arguments": "{}"}}]
    assert rec.messages[2] == {"role": "tool", "content": "1.1", "tool_call_id": "call_1", "name": "get_rate"}


def test_duplicates_tell_calls_apart() -> None:
    other = {**ROW, "messages": [USER, {**CALLING, "tool_calls": [call("call_1", arguments='{"currency": "USD"}')]},
                                 RESULT, ANSWER]}
    assert record(ROW).key() != record(other).key()
    assert record(ROW).key() == record(json.loads(json.dumps(ROW))).key()


def _with(i: int, **fields: Any) -> dict[str, Any]:
    """ROW with message i changed (a field set to None is removed)."""
    msgs = [dict(m) for m in ROW["messages"]]
    msgs[i].update(fields)
    msgs[i] = {k: v for k, v in msgs[i].items() if v is not None}
    return {**ROW, "messages": msgs}


BAD_ROWS = [
    (_with(1, tool_calls={"id": "x"}), "messages[1].tool_calls must be a list of tool calls, got object"),
    (_with(1, tool_calls=["get_rate"]), "messages[1].tool_calls[0] must be an object with id, type and function"),
    (_with(1, tool_calls=[call("call_1", arguments="{currency: EUR}")]),
     "messages[1].tool_calls[0].function.arguments is not valid JSON (Expecting property name enclosed in double "
     "quotes, column 2)"),
    (_with(1, tool_calls=[call("call_1", arguments='["EUR"]')]),
     "messages[1].tool_calls[0].function.arguments must be a JSON object of named arguments, got array"),
    (_with(1, tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "get_rate"}}]),
     "messages[1].tool_calls[0].function.arguments is missing"),
    (_with(1, tool_calls=[{"id": "call_1", "type": "function", "function": {"arguments": "{}"}}]),
     "messages[1].tool_calls[0].function.name must be the function's name, got null"),
    (_with(1, tool_calls=[{**call("call_1"), "type": "custom"}]),
     "messages[1].tool_calls[0].type is 'custom': only function calls are supported"),
    (_with(1, tool_calls=[call("call_1"), call("call_1")]),
     "messages[1].tool_calls[1].id 'call_1' is already the id of messages[1].tool_calls[0]"),
    (_with(1, tool_calls=[call("call_1", name="wire_money")]),
     "messages[1].tool_calls[0] calls 'wire_money', which is not among the row's tools (get_rate)"),
    (_with(1, tool_calls=[call("call_1"), call("call_2")]),
     "messages[1] makes 2 tool calls at once, but the row sets parallel_tool_calls to false"),
    (_with(1, content=None, tool_calls=None), "messages[1] is missing 'content'"),
    (_with(0, tool_calls=[call("call_0")]), "messages[0].tool_calls is only allowed on assistant messages"),
    (_with(2, tool_call_id=None), "messages[2] (tool) has no tool_call_id: set it to the id of the assistant tool "
     "call it answers"),
    (_with(2, tool_call_id="call_9"), "messages[2].tool_call_id 'call_9' matches no earlier assistant tool call "
     "(earlier calls: 'call_1')"),
    (_with(3, tool_call_id="call_1"), "messages[3].tool_call_id is only allowed on tool messages"),
    ({**ROW, "messages": [USER, RESULT, CALLING, ANSWER]},
     "messages[1].tool_call_id 'call_1' matches no earlier assistant tool call"),
    ({**ROW, "messages": [USER, CALLING, RESULT, RESULT, ANSWER]},
     "messages[3] answers tool call 'call_1' again: messages[2] already did"),
    ({**ROW, "tools": {"get_rate": RATE}}, "field 'tools' must be a list of function definitions, got object"),
    ({**ROW, "tools": [RATE["function"]]}, "tools[0].function must be an object with name, description and "
     "parameters, got null"),
    ({**ROW, "tools": [{"type": "function", "function": {**RATE["function"], "parameters": "currency"}}]},
     "tools[0].function.parameters must be a JSON Schema object, got string"),
    ({**ROW, "tools": [RATE, RATE]}, "tools[1].function.name 'get_rate' is defined twice (also in tools[0].function)"),
    ({**ROW, "tools": [{"type": "retrieval"}]}, "tools[0].type is 'retrieval': only function tools are supported"),
    ({**ROW, "functions": [RATE["function"]]}, "the row has both tools and functions (the older form of tools)"),
    ({**ROW, "parallel_tool_calls": "no"}, "field 'parallel_tool_calls' must be true or false, got 'no'"),
    ({"messages": [USER, {"role": "assistant", "function_call": {"name": "get_rate", "arguments": "{}"},
                          "tool_calls": [call("c")]}]},
     "messages[1] has both tool_calls and function_call (its older form): keep one"),
    ({"messages": [USER, {"role": "function", "name": "get_rate", "content": "1.1"}, ANSWER]},
     "messages[1] is a function result, but no earlier assistant message has a function_call for it to answer"),
    ({"messages": [USER, {"role": "assistant", "function_call": {"name": "get_rate", "arguments": "{}"}},
                   {"role": "function", "name": "block_card", "content": "ok"}, ANSWER]},
     "messages[2] is the result of 'block_card', but the function_call before it calls 'get_rate'"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS, ids=[m[:40] for _, m in BAD_ROWS])
def test_each_problem_says_what_is_wrong(row: dict[str, Any], message: str) -> None:
    found = problems_of(row)
    assert any(message in m for m in found), found


def test_every_problem_of_a_file_names_its_line(tmp_path: Path) -> None:
    rows = [ROW, *[row for row, _ in BAD_ROWS], ROW]
    path = write_jsonl(tmp_path / "tools.jsonl", rows)
    loaded = load_records(path)
    assert [r.where for r in loaded.records] == [f"{path}:1", f"{path}:{len(rows)}"]
    for line, (_, message) in enumerate(BAD_ROWS, start=2):
        here = [p.message for p in loaded.errors if p.where == f"{path}:{line}"]
        assert any(message in m for m in here), (line, message, here)


# --- rendering and masks --------------------------------------------------------------------------


def test_rendered_text_holds_the_tools_the_call_and_the_result(qwen25: Any) -> None:
    enc = encode_record(record(ROW), qwen25)
    text = qwen25.decode(enc.input_ids)
    assert json.dumps(RATE) in text  # the tool definition, as the template renders it
    # the arguments as a JSON object: OpenAI's JSON text passed through tojson would be a quoted string
    assert '{"name": "get_rate", "arguments": {"currency": "EUR"}}' in text
    assert '"{\\"currency' not in text
    assert "<tool_response>\n1.1\n</tool_response>" in text
    assert text == qwen25.apply_chat_template(
        [USER, {"role": "assistant", "content": "", "tool_calls": [
            {**call("call_1"), "function": {"name": "get_rate", "arguments": {"currency": "EUR"}}}]},
         {**RESULT, "name": "get_rate"}, ANSWER], tools=[RATE], tokenize=False)


def test_loss_is_on_the_calls_and_replies_not_the_results_or_tools(qwen25: Any) -> None:
    enc = encode_record(record(ROW), qwen25)
    assert len(enc.labels) == len(enc.input_ids)
    assert all(lab in (IGNORE, tid) for lab, tid in zip(enc.labels, enc.input_ids, strict=True))
    assert trained_runs(qwen25, enc) == [EXPECTED_CALL, "it is 1.1<|im_end|>"]


def test_reply_with_text_and_parallel_calls(qwen25: Any) -> None:
    row = {"tools": [RATE, BLOCK], "messages": [
        USER, {"role": "assistant", "content": "checking", "tool_calls": [call("a"), call("b", "block_card", "{}")]},
        {"role": "tool", "tool_call_id": "b", "content": "blocked"}, {**RESULT, "tool_call_id": "a"}, ANSWER]}
    enc = encode_record(record(row), qwen25)
    first = ('checking\n<tool_call>\n{"name": "get_rate", "arguments": {"currency": "EUR"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "block_card", "arguments": {}}\n</tool_call><|im_end|>')
    assert trained_runs(qwen25, enc) == [first, "it is 1.1<|im_end|>"]


def test_weight_zero_takes_a_call_out_of_the_loss(qwen25: Any) -> None:
    msgs = [USER, {**CALLING, "weight": 0}, RESULT, ANSWER]
    assert trained_runs(qwen25, encode_record(record({**ROW, "messages": msgs}), qwen25)) == ["it is 1.1<|im_end|>"]
    msgs = [USER, CALLING, RESULT, {**ANSWER, "weight": 0}]
    assert trained_runs(qwen25, encode_record(record({**ROW, "messages": msgs}), qwen25)) == [EXPECTED_CALL]


def test_train_on_all_keeps_the_tools(qwen25: Any) -> None:
    enc = encode_record(record(ROW), qwen25, train_on="all")
    assert enc.labels == enc.input_ids and "get_rate" in qwen25.decode(enc.input_ids)


def test_template_that_renders_the_last_reply_differently(qwen3: Any) -> None:
    """The call is no longer the last turn once the conversation goes on, so its span is found as what the call
    changes in the whole conversation, on token boundaries ("<tool_call>" is one token here)."""
    enc = encode_record(record(ROW), qwen3)
    assert trained_runs(qwen3, enc) == [EXPECTED_CALL, "<think>\n\n</think>\n\nit is 1.1<|im_end|>"]
    row = {**ROW, "messages": [USER, {**CALLING, "content": "checking"}, RESULT, ANSWER]}
    assert trained_runs(qwen3, encode_record(record(row), qwen3))[0] == "checking\n" + EXPECTED_CALL


def test_template_that_renders_results_inside_the_reply_is_refused(tiny_tokenizer: Any) -> None:
    """Like Gemma 4: results inline in the assistant's turn, the reply's text after them. The call can't be
    trained without its result, and training on a result teaches the model to make results up."""
    tok = with_template(tiny_tokenizer, (
        "{%- for m in messages %}{%- if m.role == 'assistant' and m.tool_calls %}"
        "{{- '<|im_start|>assistant\\n' }}{%- for c in m.tool_calls %}{{- 'call ' + c.function.name }}{%- endfor %}"
        "{%- for r in messages[loop.index:] if r.role == 'tool' %}{{- ' result ' + r.content }}{%- endfor %}"
        "{{- ' ' + m.content + '<|im_end|>\\n' }}"
        "{%- elif m.role != 'tool' %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"))
    row = {"messages": [USER, {**CALLING, "content": "checking"}, RESULT, ANSWER]}
    with pytest.raises(RowError, match="a tool result is rendered inside the assistant's turn"):
        encode_record(record(row), tok)


def test_arguments_stay_json_text_for_a_template_that_prints_them(tiny_tokenizer: Any) -> None:
    tok = with_template(tiny_tokenizer, (
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content }}"
        "{%- for c in m.tool_calls or [] %}{{- 'call ' + c.function.name + ' ' }}{{- c.function.arguments }}"
        "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"))
    assert tool_support(tok, with_tools=False).text_arguments
    enc = encode_record(record({"messages": [USER, CALLING]}), tok)
    assert trained_runs(tok, enc) == ['call get_rate {"currency": "EUR"}<|im_end|>']


def test_template_without_tool_support_is_refused(tiny_tokenizer: Any) -> None:
    """The tiny model's ChatML template renders content only: tools and calls would silently vanish."""
    with pytest.raises(RowError) as err:
        encode_record(record(ROW), tiny_tokenizer)
    message = str(err.value)
    assert message.startswith("the model's chat template has no tool support: it leaves out the tool definitions "
                              "(`tools`) and the assistant's tool calls")
    assert "data.system_prompt" in message and err.value.field == "tools"
    with pytest.raises(RowError, match="leaves out the assistant's tool calls, so training would see half"):
        encode_record(record({"messages": [USER, CALLING]}), tiny_tokenizer)


def test_template_that_renders_calls_but_not_tools_is_refused_for_rows_with_tools(qwen25: Any) -> None:
    tok = with_template(qwen25, QWEN25.replace("{%- if tools %}", "{%- if false %}"))
    with pytest.raises(RowError, match=r"leaves out the tool definitions \(`tools`\), so training"):
        encode_record(record(ROW), tok)
    assert trained_runs(tok, encode_record(record({"messages": [USER, CALLING]}), tok)) == [EXPECTED_CALL]


def test_data_report_counts_tool_rows_and_reports_refusals(tmp_path: Path, qwen25: Any,
                                                          tiny_tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "tools.jsonl", [ROW, {"messages": [USER, ANSWER]}])
    examples, rep = prepare(path, lambda r: encode_record(r, qwen25))
    assert rep.ok and rep.valid_rows == 2
    assert rep.completion_tokens == sum(Encoded(e.input_ids, e.labels).trained_tokens for e in examples)
    _, rep = prepare(path, lambda r: encode_record(r, tiny_tokenizer))
    assert [(e.where, e.field) for e in rep.errors] == [(f"{path}:1", "tools")] and rep.valid_rows == 1


# --- `tunelab data check` -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a tool-capable chat template."""
    out = tmp_path_factory.mktemp("tool-model") / "model"
    shutil.copytree(tiny_model, out)
    (out / "chat_template.jinja").write_text(QWEN25)
    return out


def test_data_check_on_a_tools_file(tmp_path: Path, tool_model: Path, tiny_model: Path) -> None:
    write_jsonl(tmp_path / "tools.jsonl", [
        ROW,                                                                            # 1 ok
        _with(1, tool_calls=[call("call_1", arguments="{currency: EUR}")]),             # 2 arguments not JSON
        _with(2, tool_call_id=None),                                                    # 3 result without its call
        _with(1, tool_calls=[call("call_1", name="wire_money")]),                       # 4 function not in tools
        {"messages": [USER, CALLING]},                                                  # 5 ok
    ])
    done = tunelab_cli("data", "check", "tools.jsonl", "--model", str(tool_model), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    err = " ".join(done.stderr.split())
    for line, message in {2: "messages[1].tool_calls[0].function.arguments is not valid JSON",
                          3: "messages[2] (tool) has no tool_call_id",
                          4: "calls 'wire_money', which is not among the row's tools (get_rate)"}.items():
        assert re.search(rf"^tools\.jsonl:{line}: ", done.stderr, re.M), (line, done.stderr)
        assert message in err, message
    assert re.search(r"valid rows\s*│\s*2\s*│", done.stderr), done.stderr

    write_jsonl(tmp_path / "good.jsonl", [ROW, {"messages": [USER, CALLING]}])
    done = tunelab_cli("data", "check", "good.jsonl", "--model", str(tool_model), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rep = json.loads(done.stdout)
    assert rep["valid_rows"] == 2 and rep["completion_tokens"] > 0 and not rep["errors"]

    # the tiny model's own template has no tool support: every tools row is refused, with its line and the fix
    done = tunelab_cli("data", "check", "good.jsonl", "--model", str(tiny_model), cwd=tmp_path)
    assert done.returncode == 1
    err = " ".join(done.stderr.split())
    for line in (1, 2):
        assert re.search(rf"^good\.jsonl:{line}: the model's chat template has no tool support", done.stderr, re.M)
    assert "data.system_prompt" in err
