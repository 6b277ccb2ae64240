"""The parity check run after every export: the model as it was trained (base + adapter, unmerged, loaded the way
`tunelab generate` and the server load it) and the model as exported, on a few held-out prompts.

Structure must match exactly: the chat template, the special and stop tokens, the token ids of every rendered
prompt, and for a GGUF the Ollama Modelfile's TEMPLATE (rendered) and stop parameters. Lossless exports (hf f32,
the adapter, gguf f32) must give the same greedy answers with logits within LOSSLESS_TOL (LLAMA_CPP_TOL in llama.cpp
itself, when llama-cpp-python is installed); lossy ones (f16, bf16,
q8_0) are measured and refused below FLOORS. Answers are compared teacher-forced: the exported model reads the
trained model's greedy answer and must pick the same token at each position, which is exactly "the same greedy
answer" when every position agrees, and costs one forward pass per prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.templates import Message, render_chat, trained_system_prompt
from ..runs import RunDir
from .source import ExportError, Log, Source

MAX_NEW_TOKENS = 16  # short answers: enough to see a divergence, cheap on a CPU
N_PROMPTS = 3
MAX_PROMPT_CHARS = 1500
LOSSLESS_TOL = 1e-3  # max |logit difference| for lossless formats: f32 merge rounding is ~1e-5
# llama.cpp runs an f32 file through kernels of its own (GELU from an f16 table, another summation order): measured up
# to ~2e-3 off on the test models with an f32 KV cache, while a damaged or foreign weight is off by far more
LLAMA_CPP_TOL = 1e-2
FLOORS = {"f16": 0.9, "bf16": 0.75, "q8_0": 0.75}  # least share of greedy answer tokens agreeing
FIXED_PROMPTS = ("What is the capital of France?", "Write one short sentence about the sea.",
                 "How do I reset my password?")
# Tokenizer corners a pre-tokenizer gets wrong first: digit runs, whitespace, non-ASCII.
PROBE_TEXTS = ("digits 0123456789 and 3.14", "  leading spaces,\ttabs\nand newlines  ", "unicode: café 東京 🙂")
SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclass
class Case:
    """One held-out prompt as the trained model sees it, with the trained model's answer."""

    prompt: str
    messages: list[Message] | None  # None: the text is used as it is (completion task, classification head)
    text: str  # exactly what is tokenized
    ids: list[int]
    answer: list[int] = field(default_factory=list)  # greedy answer tokens; empty for a head
    logits: torch.Tensor | None = None  # [len(answer), vocab] predicting the answer; a head: [1, labels]


@dataclass
class Reference:
    tokenizer: Any
    head: bool
    system: str | None
    stops: set[int]
    cases: list[Case]
    prompts_from: str


@dataclass
class Target:
    """One way of running the export: what it tokenizes to and what it computes."""

    name: str
    precision: str  # f32 | f16 | bf16 | q8_0
    lossless: bool
    tokenize: Callable[[str], list[int]]  # special tokens in the text are parsed, none added
    logits: Callable[[list[int]], torch.Tensor]  # [seq, vocab]; a head: [labels]
    tokenizer: Any | None = None  # a transformers tokenizer: compared in full
    chat_template: str | None = None
    specials: dict[str, Any] = field(default_factory=dict)  # compared key by key with the training tokenizer's
    stops: set[int] | None = None
    stops_exact: bool = True  # False: the training stops need only be among these (a GGUF stores one eos)
    tolerance: float = LOSSLESS_TOL  # lossless targets: max |logit difference|; twice it, a tie either pick settles


# --- what the run trained on ---------------------------------------------------------------------------

def held_out_prompts(src: Source) -> tuple[str, list[str]]:
    """(where from, prompts): the run's scored validation rows when it kept them, else FIXED_PROMPTS."""
    if src.run is not None:
        run = RunDir(src.run)
        found: list[Any] = []
        try:
            ev = run.evaluations(damaged=[]).get("validation") or {}
            found = [e.get("input") for e in ev.get("examples") or [] if isinstance(e, dict)]
            if not found:  # classification and RL runs keep their scored validation rows here
                found = [p.get("text") or p.get("prompt") for p in run.predictions() or []]
        except (OSError, ValueError):  # a damaged record: the fixed prompts still check the export
            found = []
        rows = [x[:MAX_PROMPT_CHARS] for x in found if isinstance(x, str) and x.strip()][:N_PROMPTS]
        if rows:
            return "validation rows", rows
    return "fixed prompts", list(FIXED_PROMPTS)


def _case(tok: Any, prompt: str, *, raw: bool, system: str | None, head: bool) -> Case:
    """A prompt encoded as tunelab's inference encodes it (inference.stream_reply, eval.classify.predict_head):
    render_chat folds the system prompt into the first user turn where the template has no system role."""
    if head:
        text = prompt + (tok.eos_token or "")
        return Case(prompt, None, text, tok(text, add_special_tokens=False).input_ids)
    if raw:
        return Case(prompt, None, prompt, tok(prompt, add_special_tokens=False).input_ids)
    messages: list[Message] = ([{"role": "system", "content": system}] if system else [])
    messages.append({"role": "user", "content": prompt})
    text = render_chat(tok, messages, add_generation_prompt=True, tokenize=False)
    ids = render_chat(tok, messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    if tok(text, add_special_tokens=False).input_ids != list(ids):  # the rendered text must stand for the ids
        raise ExportError(f"the training tokenizer does not re-tokenize its own rendered prompt {text[:80]!r} to "
                          f"the same ids; the chat template and tokenizer disagree, so no export can match it")
    return Case(prompt, messages, text, list(ids))


def stop_ids(model: Any, tok: Any) -> set[int]:
    """The token ids generation stops at, as the server collects them (serve/engine.py)."""
    ids: set[int] = set()
    for got in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                getattr(getattr(model, "config", None), "eos_token_id", None), tok.eos_token_id):
        if isinstance(got, int):
            ids.add(got)
        elif isinstance(got, (list, tuple)):
            ids.update(int(x) for x in got)
    return ids


@torch.no_grad()
def reference(src: Source, log: Log) -> Reference:
    """The trained model on the held-out prompts, loaded through tunelab's own path (models.load.load)."""
    from ..models.load import load

    lm = load(src.ref)
    model, tok = lm.model.to("cpu").eval(), lm.tokenizer  # the exports are run on the CPU: compare like with like
    cfg = lm.run_config()
    head = bool(lm.labels)
    raw = (cfg is not None and cfg.task == "completion") or not isinstance(tok.chat_template, str)
    system = None if head or raw else trained_system_prompt(cfg)
    where, prompts = held_out_prompts(src)
    log(f"parity check: running the trained model on {len(prompts)} {where}")
    stops = stop_ids(model, tok)
    cases = [_case(tok, p, raw=raw, system=system, head=head) for p in prompts]
    for c in cases:
        ids = torch.tensor([c.ids])
        if head:
            c.logits = model(input_ids=ids).logits.float()
            continue
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW_TOKENS,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=sorted(stops) or None)
        c.answer = out[0, len(c.ids):].tolist()
        c.logits = _answer_logits(model(input_ids=torch.tensor([c.ids + c.answer[:-1]])).logits[0], c)
    return Reference(tok, head, system, stops, cases, where)


def _answer_logits(seq: torch.Tensor, c: Case) -> torch.Tensor:
    """The rows of [seq, vocab] logits that predict the answer tokens."""
    start = len(c.ids) - 1
    return seq[start:start + len(c.answer)].float()


# --- the export, run back ------------------------------------------------------------------------------

def _hf_logits(model: Any) -> Callable[[list[int]], torch.Tensor]:
    @torch.no_grad()
    def run(ids: list[int]) -> torch.Tensor:
        return model(input_ids=torch.tensor([ids])).logits[0].float()
    return run


def _specials(tok: Any, limit: int | None = None) -> dict[str, Any]:
    """Special tokens by name and id; `limit`: only ids below it (transformers' GGUF tokenizer adds defaults such
    as <|endoftext|> past the file's vocabulary, which the model has no row for and llama.cpp never sees)."""
    out: dict[str, Any] = {}
    for name in SPECIAL_NAMES:
        out[name] = getattr(tok, name, None)
        out[f"{name}_id"] = getattr(tok, f"{name}_id", None)
    out["special tokens"] = sorted((i, t.content) for i, t in tok.added_tokens_decoder.items()
                                   if t.special and (limit is None or i < limit))
    return out


def _tok_target(name: str, tok: Any, model: Any, precision: str, lossless: bool, limit: int | None = None,
                **kw: Any) -> Target:
    return Target(name, precision, lossless, lambda text: tok(text, add_special_tokens=False).input_ids,
                  _hf_logits(model.eval()), tokenizer=tok,
                  chat_template=tok.chat_template if isinstance(tok.chat_template, str) else None,
                  specials=_specials(tok, limit), **kw)


def _auto_model(path: str, head: int | None, pad: int | None, **kw: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=head, dtype=torch.float32, **kw)
    model.config.pad_token_id = pad
    return model


def hf_target(folder: Path, src: Source, precision: str) -> Target:
    """The merged directory as anyone loads it: AutoModel / AutoTokenizer.from_pretrained(folder)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if src.labels:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32)
    else:
        model = _auto_model(str(folder), None, None)
    return _tok_target("transformers (merged)", tok, model, precision, precision == "f32",
                       stops=stop_ids(model, tok))


def adapter_target(folder: Path, src: Source, precision: str) -> Target:
    """The adapter as anyone applies it: PeftModel.from_pretrained(the base it names, folder)."""
    import json

    from peft import PeftModel
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    named = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    base = named if named and Path(named).exists() else src.resolved.path
    model = _auto_model(base, len(src.labels) if src.labels else None, tok.pad_token_id)
    model = PeftModel.from_pretrained(model, str(folder))
    return _tok_target("peft (base + exported adapter)", tok, model, precision, precision == "f32",
                       stops=stop_ids(model, tok))


def gguf_target(file: Path, precision: str, extra_stops: set[int], vocab: int) -> Target:
    """The GGUF through transformers' gguf_file loader, with the pre-tokenizer its `tokenizer.ggml.pre` names
    (as llama.cpp and tunelab's own GGUF loader apply it)."""
    from transformers import AutoTokenizer

    from ..models.gguf_convert import fix_pre_tokenizer, gguf_pre_name

    tok = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    fix_pre_tokenizer(tok, gguf_pre_name(file))
    model = _quiet_gguf_model(file)
    return _tok_target("transformers (gguf_file)", tok, model, precision, precision == "f32", limit=vocab,
                       stops=stop_ids(model, tok) | extra_stops, stops_exact=False)


def _quiet_gguf_model(file: Path) -> Any:
    """transformers' dequantizing loader, without its per-tensor progress bar in the export's output."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    real = getattr(gguf_utils, "tqdm", None)
    if real is not None:  # a transformers without it: the bar shows, nothing else changes
        gguf_utils.tqdm = lambda it, **_kw: it
    try:
        return _auto_model(str(file.parent), None, None, gguf_file=file.name)
    finally:
        if real is not None:
            gguf_utils.tqdm = real


def llama_cpp_target(file: Path, precision: str, n_ctx: int) -> Target | str:
    """The GGUF in llama.cpp itself through llama-cpp-python, or why it was not run (it is optional)."""
    try:
        import llama_cpp
    except ImportError:
        return "llama-cpp-python is not installed (pip install llama-cpp-python runs it here too)"
    import numpy as np

    version = getattr(llama_cpp, "__version__", "?")
    try:
        # the KV cache in f32 (llama.cpp's default is f16, ~1e-2 off in the logits): an f32 export is checked exactly
        llm = llama_cpp.Llama(model_path=str(file), n_ctx=n_ctx, logits_all=True, verbose=False,
                              n_threads=max(1, torch.get_num_threads()), type_k=getattr(llama_cpp, "GGML_TYPE_F32", 0),
                              type_v=getattr(llama_cpp, "GGML_TYPE_F32", 0))
    except Exception as exc:  # noqa: BLE001 - whatever llama.cpp says: the file does not run there
        raise ExportError(f"llama.cpp (llama-cpp-python {version}) can't load {file.name}: {exc}. An older "
                          f"llama.cpp may not know the architecture: upgrade llama-cpp-python, or export "
                          f"--format hf") from exc

    def tokenize(text: str) -> list[int]:
        return list(llm.tokenize(text.encode(), add_bos=False, special=True))

    def logits(ids: list[int]) -> torch.Tensor:
        llm.reset()
        llm.eval(ids)
        return torch.from_numpy(np.asarray(llm.eval_logits, dtype=np.float32))

    meta = getattr(llm, "metadata", None) or {}
    specials = {"eos_token_id": _id(llm.token_eos())}
    # llama.cpp names a BOS id for every vocabulary (qwen2's default, say): it matters only where the file adds it
    adds_bos = getattr(getattr(llm, "_model", None), "add_bos_token", lambda: True)
    if adds_bos():
        specials["bos_token_id"] = _id(llm.token_bos())
    return Target(f"llama.cpp (llama-cpp-python {version})", precision, precision == "f32", tokenize, logits,
                  chat_template=meta.get("tokenizer.chat_template"), specials=specials, tolerance=LLAMA_CPP_TOL)


def _id(i: int) -> int | None:
    return None if i is None or i < 0 else int(i)


# --- comparing -----------------------------------------------------------------------------------------

def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, i - 20)
    return f"at character {i}: training {a[lo:i + 20]!r}, export {b[lo:i + 20]!r}"


def structure(ref: Reference, t: Target) -> list[str]:
    """What differs in how the export reads and writes text; empty when nothing does."""
    tok, problems = ref.tokenizer, []
    trained_template = tok.chat_template if isinstance(tok.chat_template, str) else None
    if t.chat_template != trained_template:
        if t.chat_template is None or trained_template is None:
            problems.append(f"chat template: training {'has one' if trained_template else 'has none'}, the export "
                            f"{'has one' if t.chat_template else 'has none'}")
        else:
            problems.append(f"chat template {_first_difference(trained_template, t.chat_template)}")
    trained = _specials(tok)
    for key, got in t.specials.items():
        if got != trained.get(key):
            problems.append(f"{key}: training {trained.get(key)!r}, export {got!r}")
    if t.stops is not None:
        if t.stops_exact and t.stops != ref.stops:
            problems.append(f"stop token ids: training {sorted(ref.stops)}, export {sorted(t.stops)}")
        elif not t.stops_exact and not ref.stops <= t.stops:
            problems.append(f"stop token ids {sorted(ref.stops - t.stops)} of training are not stops in the export "
                            f"(its stops: {sorted(t.stops)})")
    for c in ref.cases:
        got = t.tokenize(c.text)
        if got != c.ids:
            problems.append(f"prompt {c.text[:60]!r}: token ids differ ({_ids_difference(c.ids, got)})")
        if t.tokenizer is not None and c.messages is not None and t.chat_template:
            rendered = render_chat(t.tokenizer, c.messages, add_generation_prompt=True, tokenize=False)
            if rendered != c.text:
                problems.append(f"rendered prompt {_first_difference(c.text, rendered)}")
    for text in PROBE_TEXTS:
        want = tok(text, add_special_tokens=False).input_ids
        got = t.tokenize(text)
        if got != want:
            problems.append(f"text {text!r}: token ids differ ({_ids_difference(want, got)})")
        if t.tokenizer is not None and t.tokenizer(text).input_ids != tok(text).input_ids:
            problems.append(f"text {text!r} with the tokenizer's own special tokens added: token ids differ")
    return problems


def _ids_difference(want: list[int], got: list[int]) -> str:
    i = next((k for k, (x, y) in enumerate(zip(want, got, strict=False)) if x != y), min(len(want), len(got)))
    return f"from position {i}: training {want[i:i + 6]}, export {got[i:i + 6]}"


def compare(ref: Reference, t: Target) -> dict[str, Any]:
    """Greedy agreement and logit difference of one target against the trained model."""
    worst, agree, total, identical, first = 0.0, 0, 0, 0, None
    for c in ref.cases:
        assert c.logits is not None
        seq = t.logits(c.ids if ref.head else c.ids + c.answer[:-1])
        got = seq.reshape(1, -1) if ref.head else _answer_logits(seq, c)
        if got.shape != c.logits.shape:
            raise ExportError(f"{t.name}: the export's outputs have shape {tuple(got.shape)}, training's "
                              f"{tuple(c.logits.shape)}: the exported vocabulary or head differs")
        worst = max(worst, (got - c.logits).abs().max().item())
        expected = c.logits.argmax(-1) if ref.head else torch.tensor(c.answer)
        choice = got.argmax(-1)
        gap = c.logits.gather(1, expected[:, None]) - c.logits.gather(1, choice[:, None])
        ok = (choice == expected) | (gap[:, 0].abs() <= 2 * t.tolerance)
        agree, total = agree + int(ok.sum()), total + len(ok)
        if bool(ok.all()):
            identical += 1
        elif first is None:
            k = int((~ok).nonzero()[0])
            dec = ref.tokenizer.decode
            first = (f"prompt {c.prompt[:60]!r}, answer token {k + 1}: training "
                     f"{dec(c.answer[:k + 1]) if not ref.head else int(expected[k])!r}, export "
                     f"{dec([*c.answer[:k], int(choice[k])]) if not ref.head else int(choice[k])!r}")
    return {"target": t.name, "precision": t.precision, "lossless": t.lossless,
            **({"tolerance": t.tolerance} if t.lossless else {}),
            "max_logit_diff": float(f"{worst:.4g}"), "token_agreement": round(agree / max(total, 1), 4),
            "tokens_agreeing": f"{agree}/{total}", "answers_identical": f"{identical}/{len(ref.cases)}",
            **({"first_difference": first} if first else {})}


ADVICE = {
    "q8_0": "export --dtype f16 (or bf16) instead of --quantize q8_0",
    "bf16": "export --dtype f16 or f32: bf16 keeps 8 bits of mantissa",
    "f16": "export --dtype f32 (or bf16, whose range is f32's, if f16 overflows on this model)",
}


def judge(result: dict[str, Any]) -> None:
    """Raise ExportError when a target's numbers are not good enough; record the bound it was held to."""
    name, precision = result["target"], result["precision"]
    first = f"; first difference: {result['first_difference']}" if "first_difference" in result else ""
    if result["lossless"]:
        tolerance = result.setdefault("tolerance", LOSSLESS_TOL)
        if result["max_logit_diff"] > tolerance or result["token_agreement"] < 1.0:
            raise ExportError(
                f"{name}: the {precision} export does not compute what the trained model computes: max |logit "
                f"difference| {result['max_logit_diff']:.3g} (tolerance {tolerance:g}), greedy answer tokens "
                f"agreeing {result['tokens_agreeing']}{first}. The written weights are not the trained ones "
                f"(damaged on the way to disk, or from another model); nothing was kept. Export again")
        return
    floor = FLOORS.get(precision, FLOORS["q8_0"])
    result["floor"] = floor
    if result["token_agreement"] < floor:
        raise ExportError(
            f"{name}: the {precision} export agrees with the trained model on {result['token_agreement']:.0%} of "
            f"greedy answer tokens ({result['tokens_agreeing']}), below the floor of {floor:.0%} for {precision}"
            f"{first}. Its answers would differ from the run's: {ADVICE.get(precision, ADVICE['q8_0'])}. "
            f"Nothing was kept")


def raise_structure(name: str, problems: list[str]) -> None:
    if problems:
        shown = "\n  - ".join(problems[:12]) + (f"\n  - ... and {len(problems) - 12} more" if len(problems) > 12
                                                  else "")
        raise ExportError(f"{name}: the export would not read or write text the way the run was trained, so it "
                          f"would answer differently when served:\n  - {shown}\nNothing was kept. This is a bug "
                          f"in the export of this model; export --format hf instead, or pass --no-parity-check "
                          f"to keep it anyway (not recommended)")


# --- the Ollama Modelfile ------------------------------------------------------------------------------

def parse_modelfile(text: str) -> dict[str, Any]:
    """FROM, TEMPLATE, SYSTEM and the stop parameters of a Modelfile (Ollama's syntax: "..." or \"\"\"...\"\"\")."""
    import re

    out: dict[str, Any] = {"from": None, "template": None, "system": None, "stops": []}
    token = re.compile(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER\s+stop)\s+("""(.*?)"""|"((?:[^"\\]|\\.)*)"|(\S+))',
                       re.MULTILINE | re.DOTALL | re.IGNORECASE)
    for m in token.finditer(text):
        key = m.group(1).split()[0].lower()
        value = m.group(3) if m.group(3) is not None else m.group(4) if m.group(4) is not None else m.group(5)
        value = value.replace('\\"', '"')
        if key == "parameter":
            out["stops"].append(value)
        else:
            out[key] = value
    return out


def _gguf_add_bos(file: Path) -> bool:
    from transformers.integrations.gguf.reader import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(file))
    return bool(metadata.get("tokenizer.ggml.add_bos_token"))


def _turn_end(tok: Any) -> str | None:
    """The special token that closes an assistant turn in the chat template (<|im_end|>, <|eot_id|>, ...)."""
    mark = "\x00ANSWER\x00"
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
                                       tokenize=False)
    except Exception:  # noqa: BLE001 - a template that can't render an answer has no turn end to check
        return None
    after = text.split(mark, 1)[-1] if mark in text else ""
    specials = sorted((t.content for t in tok.added_tokens_decoder.values() if t.special and t.content in after),
                      key=after.index)
    return specials[0] if specials else None


def check_modelfile(folder: Path, file: Path, ref: Reference, task: str) -> tuple[list[str], dict[str, Any]]:
    """(problems, record): the Modelfile's template renders each prompt to the training ids, and it stops where
    training stops."""
    from .gotemplate import TemplateError, render

    path = folder / "Modelfile"
    if not path.is_file():
        return ["Modelfile: missing next to the GGUF"], {}
    mf = parse_modelfile(path.read_text())
    tok, problems = ref.tokenizer, []
    record: dict[str, Any] = {"stops": mf["stops"]}
    if mf["from"] != f"./{file.name}":
        problems.append(f"Modelfile FROM {mf['from']!r}, expected ./{file.name}")
    if mf["template"] is None:
        record["template"] = "none: Ollama falls back to the chat template stored in the GGUF (not checked)"
    else:
        bos = [tok.bos_token_id] if _gguf_add_bos(file) and tok.bos_token_id is not None else []
        try:
            for c in ref.cases:
                msgs = c.messages or [{"role": "user", "content": c.prompt}]
                system = mf["system"] if c.messages is not None else None
                # Ollama: .Messages holds the system message too; .Prompt is the last user message
                values = {"System": system, "Prompt": msgs[-1]["content"], "Response": "",
                          "Messages": ([{"Role": "system", "Content": system}] if system else [])
                          + [{"Role": m["role"], "Content": m["content"]} for m in msgs if m["role"] != "system"]}
                rendered = render(mf["template"], values)
                ids = bos + tok(rendered, add_special_tokens=False).input_ids
                if ids != c.ids:
                    problems.append(f"Modelfile TEMPLATE (with SYSTEM) renders prompt {c.prompt[:40]!r} differently: "
                                    f"{_first_difference(c.text, tok.decode(ids))}")
            record["template"] = "renders every prompt to the training token ids"
        except TemplateError as exc:
            record["template"] = f"not checked: {exc}"
    if task != "completion":
        wanted = {tok.convert_ids_to_tokens(i) for i in ref.stops}
        turn_end = _turn_end(tok)
        if turn_end:
            wanted.add(turn_end)
        missing = sorted(s for s in wanted if s not in mf["stops"])
        if missing:
            problems.append(f"Modelfile has no PARAMETER stop for {', '.join(map(repr, missing))}: Ollama would "
                            f"run on past the end of the answer")
    return problems, record


def _loaded(what: str, build: Callable[..., Target], *args: Any) -> Target:
    """A target, or an ExportError saying the export does not load back the way its users would load it."""
    try:
        return build(*args)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the loader says, the export can't be checked
        raise ExportError(f"{what} can't load the export back ({type(exc).__name__}: {str(exc)[:300]}), so it "
                          f"can't be checked against the trained model; nothing was kept. Export --format hf, or "
                          f"pass --no-parity-check to keep it unchecked (not recommended)") from exc


# --- the check -------------------------------------------------------------------------------------------

def check(src: Source, fmt: str, folder: Path, file: Path | None, precision: str,
          log: Log | None = None) -> dict[str, Any]:
    """Run the export against the trained model; raises ExportError on any mismatch. Returns the manifest's
    `parity` section."""
    log = log or (lambda _msg: None)
    t0 = time.perf_counter()
    ref = reference(src, log)
    extra: dict[str, Any] = {}
    problems: list[str] = []
    if fmt == "gguf":
        assert file is not None
        problems, extra["modelfile"] = check_modelfile(folder, file, ref, src.task)
        raise_structure("Modelfile", problems)
        stops = {i for s in extra["modelfile"].get("stops", []) if (i := ref.tokenizer.convert_tokens_to_ids(s))
                 is not None and i != ref.tokenizer.unk_token_id}
        log("parity check: loading the GGUF back with transformers")
        targets: list[Target | str] = [_loaded("transformers' GGUF loader", gguf_target, file, precision, stops,
                                               len(ref.tokenizer))]
        longest = max(len(c.ids) + len(c.answer) for c in ref.cases)
        targets.append(llama_cpp_target(file, precision, n_ctx=longest + 8))
    elif fmt == "adapter":
        targets = [_loaded("peft", adapter_target, folder, src, precision)]
    else:
        targets = [_loaded("transformers", hf_target, folder, src, precision)]
    results: list[dict[str, Any]] = []
    for t in targets:
        if isinstance(t, str):
            results.append({"target": "llama.cpp", "skipped": t})
            continue
        log(f"parity check: {t.name}")
        raise_structure(t.name, structure(ref, t))
        result = compare(ref, t)
        judge(result)
        results.append(result)
    return {"checked": True, "prompts": {"from": ref.prompts_from, "count": len(ref.cases),
                                         "max_new_tokens": 0 if ref.head else MAX_NEW_TOKENS,
                                         "system_prompt": ref.system is not None},
            "structure": {"chat_template": "same" if isinstance(ref.tokenizer.chat_template, str) else "none",
                          "special_tokens": "same", "prompt_token_ids": "same",
                          "stop_token_ids": sorted(ref.stops)},
            "answers": [{"prompt": c.prompt[:200], "trained": ref.tokenizer.decode(c.answer, skip_special_tokens=True)}
                        for c in ref.cases if not ref.head],
            "targets": results, **extra, "seconds": round(time.perf_counter() - t0, 2)}
