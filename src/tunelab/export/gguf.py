"""`--format gguf`: one GGUF file for llama.cpp / Ollama, and a Modelfile next to it.

Written with the `gguf` package's GGUFWriter, following llama.cpp's convert_hf_to_gguf.py for the
architectures below: the same tensor names, the same Q/K row permutation for llama (and Mistral, which
llama.cpp runs as llama), Gemma's norms stored as 1 + weight, 1-D tensors kept in f32, the hyperparameters
llama.cpp reads (Gemma's soft-capping and sliding window), and the tokenizer stored as metadata (a GGUF
carries no tokenizer.json).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.records import Message
from .source import ExportError, Log, Source

# model_type -> llama.cpp architecture. Each loads back in transformers (`from_pretrained(gguf_file=...)`),
# which is how the export is checked.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                 "gemma3_text": "gemma3"}
# Gemma's RMSNorm scales by (1 + weight), llama.cpp's by the stored weight: its converter adds the 1.
NORM_PLUS_ONE = frozenset({"gemma2", "gemma3"})
# llama.cpp fixes which Gemma layers use the sliding window (llama-model.cpp set_swa_pattern): every n-th layer
# is global, the others slide; and Gemma 3's sliding layers always use rope base 10000.
SWA_PERIOD = {"gemma2": 2, "gemma3": 6}
GEMMA3_LOCAL_ROPE_BASE = 10000.0
# The layer counts llama.cpp takes for the 27B Gemmas, the only ones it scales attention by hidden/heads.
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def supported_text() -> str:
    return ", ".join(f"{k} ({v})" for k, v in ARCHITECTURES.items())


# --- tensors ---------------------------------------------------------------------------------------

def permute_qk(w: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's rotary layout for Q/K rows (convert_hf_to_gguf.py LlamaModel.permute): HF keeps the two
    rotary halves of each head apart, llama.cpp interleaves them. transformers' GGUF loader undoes it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _rope_params(cfg: Any) -> dict[str, dict[str, Any]]:
    """Rope parameters by layer type ("all" when one set serves every layer, as in most models)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if not isinstance(params, dict):
        return {"all": {}}
    if params and all(isinstance(v, dict) for v in params.values()):
        return params  # Gemma 3: full_attention / sliding_attention
    return {"all": params}


def _rope_theta(cfg: Any) -> float:
    params = _rope_params(cfg)
    chosen = params.get("full_attention") or params.get("all") or {}
    theta = chosen.get("rope_theta")
    return float(theta if theta is not None else getattr(cfg, "rope_theta", 10000.0))


def head_dim(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _check_gemma(cfg: Any, arch: str) -> None:
    """What llama.cpp assumes of a Gemma rather than reads from the file: refused where this model differs."""
    how = "use --format hf, then llama.cpp's convert_hf_to_gguf.py"
    hd = head_dim(cfg)
    scalar = getattr(cfg, "query_pre_attn_scalar", hd)
    big = cfg.num_hidden_layers == GEMMA_27B_LAYERS[arch] and scalar == cfg.hidden_size // cfg.num_attention_heads
    if scalar != hd and not big:
        raise ExportError(f"query_pre_attn_scalar is {scalar} where head_dim is {hd}: llama.cpp scales attention "
                          f"by 1/sqrt(head_dim) for {arch}, so this model would compute something else there; {how}")
    period = SWA_PERIOD[arch]
    want = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(cfg.num_hidden_layers)]
    layer_types = list(getattr(cfg, "layer_types", None) or want)
    if layer_types != want or not getattr(cfg, "sliding_window", None):
        raise ExportError(f"llama.cpp runs {arch} with a sliding window on all layers but every {period}th; this "
                          f"model's layer_types are {layer_types} (sliding_window "
                          f"{getattr(cfg, 'sliding_window', None)}); {how}")
    if arch == "gemma3":
        local = _rope_params(cfg).get("sliding_attention", {}).get("rope_theta", GEMMA3_LOCAL_ROPE_BASE)
        if float(local) != GEMMA3_LOCAL_ROPE_BASE:
            raise ExportError(f"the sliding layers' rope_theta is {local}; llama.cpp fixes it at 10000 for gemma3; "
                              f"{how}")
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            raise ExportError(f"attn_logit_softcapping is set ({cfg.attn_logit_softcapping}), which llama.cpp's "
                              f"gemma3 doesn't do; {how}")


def check_supported(src: Source, cfg: Any) -> str:
    """The llama.cpp architecture for this model, or an ExportError saying what is supported."""
    if src.labels:
        raise ExportError(f"{src.run} has a classification head ({len(src.labels)} labels), which llama.cpp "
                          f"can't run: GGUF export supports causal LMs of these architectures: "
                          f"{supported_text()}. Use --format hf (AutoModelForSequenceClassification)")
    arch = ARCHITECTURES.get(cfg.model_type)
    if arch is None:
        vision = " (Gemma 3 with its vision tower: only the text model is supported)" \
            if cfg.model_type == "gemma3" else ""
        raise ExportError(f"GGUF export supports these architectures (model_type): {supported_text()}; "
                          f"this model is {cfg.model_type!r}{vision}. Use --format hf, then llama.cpp's "
                          f"convert_hf_to_gguf.py on the result")
    for layers, params in _rope_params(cfg).items():
        rope_type = params.get("rope_type", "default")
        if rope_type not in (None, "default"):
            where = "" if layers == "all" else f" ({layers} layers)"
            raise ExportError(f"rope scaling {rope_type!r}{where} is not supported by tunelab's GGUF export (only "
                              f"the default rope); use --format hf, then llama.cpp's convert_hf_to_gguf.py")
    if getattr(cfg, "use_sliding_window", False):
        raise ExportError("sliding-window attention is not supported by tunelab's GGUF export; use --format hf")
    if arch in SWA_PERIOD:
        _check_gemma(cfg, arch)
    return arch


def _tensor_type(name: str, data: Any, ftype: str) -> tuple[Any, Any]:
    """(array, raw GGML type or None) for one tensor, as llama.cpp's converter stores it."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    data = data.astype(np.float32)
    if data.ndim <= 1 or name.endswith("_norm.weight") or ftype == "f32":
        return data, None  # norms and biases stay f32: they are tiny and quantizing them costs accuracy
    if ftype == "q8_0":
        try:
            return quants.quantize(data, Q.Q8_0), Q.Q8_0
        except quants.QuantError:  # a row length not a multiple of 32: f16, as llama.cpp does
            return data.astype(np.float16), None
    if ftype == "bf16":
        return quants.quantize(data, Q.BF16), Q.BF16
    return data.astype(np.float16), None


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def _tensors(model: Any, arch: str) -> list[tuple[str, Any]]:
    """(GGUF name, float32 numpy array) for every weight, Q/K permuted for llama."""
    import gguf

    cfg = model.config
    n_layers = cfg.num_hidden_layers
    name_map = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), n_layers)
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    out = []
    for hf_name, t in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output.weight
        base, _, suffix = hf_name.rpartition(".")
        name = name_map.get_name(base)
        if name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name!r} ({arch}); this model has a layer llama.cpp's "
                              f"{arch} architecture doesn't know: use --format hf")
        data = t.detach().to("cpu").float().numpy()
        if arch in NORM_PLUS_ONE and hf_name.endswith("norm.weight"):
            data = data + 1.0
        if arch == "llama" and base.endswith("q_proj"):
            data = permute_qk(data, n_head, n_head)
        elif arch == "llama" and base.endswith("k_proj"):
            data = permute_qk(data, n_head, n_kv)
        out.append((f"{name}.{suffix}", data))
    return out


# --- tokenizer -------------------------------------------------------------------------------------

def _split_names() -> dict[str, str]:
    """Split regex -> llama.cpp pre-tokenizer name, for the byte-level BPE tokenizers transformers
    rebuilds from a GGUF (so a file written with one of these names loads back the same)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # older transformers: no split table, plain gpt2 only
        return {}
    names: dict[str, str] = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        names.setdefault(regex, name)
    return names


def _is_byte_level(p: dict[str, Any], *, regex: bool) -> bool:
    return p.get("type") == "ByteLevel" and bool(p.get("use_regex", True)) == regex and not p.get("add_prefix_space")


def bpe_pre(tok_json: dict[str, Any]) -> str:
    """The `tokenizer.ggml.pre` name for this tokenizer's pre-tokenizer: it picks the split regex
    llama.cpp applies before the merges, so it has to describe what the HF tokenizer really does."""
    pre = tok_json.get("pre_tokenizer") or {}
    norm = tok_json.get("normalizer")
    # NFC (Qwen2's) is left out, as llama.cpp's own converter does: text is almost always NFC already.
    if norm and norm.get("type") != "NFC":
        raise ExportError(f"this tokenizer has a {norm.get('type')} normalizer, which a GGUF byte-level BPE "
                          f"tokenizer can't express; use --format hf")
    if _is_byte_level(pre, regex=True):
        return "gpt-2"  # llama.cpp spells it with a dash (llama-vocab.cpp); "gpt2" is refused
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if steps and len(steps) == 2 and _is_byte_level(steps[1], regex=True) and steps[0].get("type") == "Digits" \
            and steps[0].get("individual_digits"):
        return "smollm"  # llama.cpp's name for "each digit alone, then gpt2"
    if steps and len(steps) == 2 and _is_byte_level(steps[1], regex=False) and steps[0].get("type") == "Split":
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        name = _split_names().get(pattern or "")
        if name:
            return name
    raise ExportError(f"tokenizer pre-tokenizer {json.dumps(pre)[:200]} has no llama.cpp equivalent tunelab "
                      f"knows; use --format hf, then llama.cpp's convert_hf_to_gguf.py")


def adds_bos_eos(tok: Any) -> tuple[bool, bool]:
    """Whether the tokenizer adds a BOS / an EOS to plain text (what llama.cpp then adds to every prompt)."""
    plain, full = tok("a", add_special_tokens=False).input_ids, tok("a").input_ids
    return (len(full) > len(plain) and full[0] == tok.bos_token_id,
            len(full) > len(plain) and full[-1] == tok.eos_token_id)


def tokenizer_metadata(tok: Any, n_vocab: int) -> dict[str, Any]:
    """What llama.cpp's converter writes for a gpt2-style (byte-level BPE) tokenizer."""
    from gguf import TokenType

    tj = json.loads(tok.backend_tokenizer.to_str())
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ExportError(f"GGUF export supports byte-level BPE (gpt2-style) tokenizers; this one is "
                          f"{model.get('type')!r}{' with byte fallback' if model.get('byte_fallback') else ''}. "
                          f"Use --format hf, then llama.cpp's convert_hf_to_gguf.py")
    pre = bpe_pre(tj)
    vocab = tok.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise ExportError(f"the tokenizer has {max(vocab.values()) + 1} tokens but the model's embedding only "
                          f"{n_vocab} rows")
    by_id = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows no token uses: llama.cpp's converter pads the same way
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    add_bos, add_eos = adds_bos_eos(tok)
    return {
        "pre": pre, "tokens": tokens, "types": types, "merges": merges,
        "bos": tok.bos_token_id, "eos": tok.eos_token_id, "unk": tok.unk_token_id, "pad": tok.pad_token_id,
        "add_bos": add_bos, "add_eos": add_eos,
        "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None,
    }


# --- the file --------------------------------------------------------------------------------------

# general.name values transformers' GGUF loader takes for an architecture (modeling_gguf_pytorch_utils.py
# load_gguf_checkpoint: a llama file named "mistral" is loaded as a "mistral" architecture that gguf-py doesn't know).
LOADER_ARCHITECTURE_NAMES = frozenset({"mistral"})


def general_name(name: str) -> str:
    """The `general.name` written for a model called `name`: a name the loader would read as an architecture gets a
    suffix, so a run called "mistral" still loads back."""
    return f"{name}-gguf" if name.strip().lower() in LOADER_ARCHITECTURE_NAMES else name


def write_gguf(model: Any, tok: Any, path: Path, *, ftype: str, arch: str, name: str, log: Log | None = None) -> None:
    import gguf

    log = log or (lambda _msg: None)
    cfg = model.config
    n_vocab = model.get_input_embeddings().weight.shape[0]
    meta = tokenizer_metadata(tok, n_vocab)
    hd = head_dim(cfg)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(general_name(name))
    w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[ftype]))
    if ftype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(n_vocab)
    w.add_rope_dimension_count(hd)
    if hd != cfg.hidden_size // cfg.num_attention_heads or arch in SWA_PERIOD:  # else llama.cpp takes hidden/heads
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch in SWA_PERIOD:  # what llama.cpp's Gemma2Model / Gemma3Model write
        w.add_sliding_window(cfg.sliding_window)
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        if getattr(cfg, "final_logit_softcapping", None) is not None:
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(meta["pre"])
    w.add_token_list(meta["tokens"])
    w.add_token_types(meta["types"])
    w.add_token_merges(meta["merges"])
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                     ("pad", w.add_pad_token_id)):
        if meta[key] is not None:
            add(meta[key])
    w.add_add_bos_token(meta["add_bos"])
    w.add_add_eos_token(meta["add_eos"])
    w.add_add_space_prefix(False)
    if meta["chat_template"]:
        w.add_chat_template(meta["chat_template"])

    tensors = _tensors(model, arch)
    log(f"writing {len(tensors)} tensors ({ftype}) to {path.name}")
    for tname, data in tensors:
        arr, raw = _tensor_type(tname, data, ftype)
        if raw is None:
            w.add_tensor(tname, arr)
        else:
            w.add_tensor(tname, arr, raw_dtype=raw)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
    except BaseException:
        with contextlib.suppress(Exception):  # closed now: an open file keeps its disk space (a full disk: all of it)
            w.close()
        raise
    w.close()


# --- Ollama ----------------------------------------------------------------------------------------

# What the chat template is rendered with to find its pieces: plain words, which no template trims or escapes.
_SYS, _U1, _A1, _U2, _A2, _U3 = ("TunelabSystemZq", "TunelabUserOneZq", "TunelabAnswerOneZq", "TunelabUserTwoZq",
                                 "TunelabAnswerTwoZq", "TunelabUserThreeZq")
Render = Callable[[list[Message]], str]  # a conversation -> the prompt text that ends in the generation prompt


@dataclass(frozen=True)
class ChatFormat:
    """A chat template as the text it renders: `pre`; each user message between user_open and user_close, each
    assistant message between assistant_open and assistant_close; then `generation`. The system prompt goes
    between system_open and system_close at `place`: "head" (before the first message, in place of `pre` when
    given), "first" or "last" (at the start of the first or the last user message)."""

    pre: str
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str
    generation: str
    place: str
    system_open: str
    system_close: str

    def default_system(self) -> str | None:
        """The system text the template puts in when none is given (Qwen2's, SmolLM2's), "" for a template whose
        system block stays with nothing in it (Llama 3.1's dates), None where it writes no system block."""
        framing = len(self.system_open) + len(self.system_close)
        if self.place != "head" or len(self.pre) < framing or not (
                self.pre.startswith(self.system_open) and self.pre.endswith(self.system_close)):
            return None
        return self.pre[len(self.system_open):len(self.pre) - len(self.system_close)]


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def _split(text: str, *marks: str) -> list[str] | None:
    """`text` cut at each mark in turn (each found exactly once, in this order), or None."""
    pieces = []
    for mark in marks:
        if text.count(mark) != 1:
            return None
        head, text = text.split(mark)
        pieces.append(head)
    return [*pieces, text]


def _formats(render: Render, render_open: Render) -> list[ChatFormat]:
    """The ways the rendered text can be cut into a ChatFormat (most templates allow exactly one); `render_open`
    renders without the generation prompt. Each is checked by rendering it before it is used."""
    three = _split(render([_user(_U1), _assistant(_A1), _user(_U2)]), _U1, _A1, _U2)
    with_system = _split(render([{"role": "system", "content": _SYS}, _user(_U1), _assistant(_A1), _user(_U2)]),
                         _U1, _A1, _U2)
    if three is None or with_system is None:
        return []
    head, user_then_assistant, assistant_then_user, tail = three
    user_close = render_open([_user(_U1)]).rpartition(_U1)[2]  # what follows a user message that ends the text
    assistant_close = render_open([_user(_U1), _assistant(_A1)]).rpartition(_A1)[2]
    if not (user_then_assistant.startswith(user_close) and tail.startswith(user_close)
            and assistant_then_user.startswith(assistant_close)):
        return []
    user_open = assistant_then_user[len(assistant_close):]
    if not head.endswith(user_open):
        return []
    pre = head[:len(head) - len(user_open)]
    parts = dict(pre=pre, user_open=user_open, user_close=user_close,
                 assistant_open=user_then_assistant[len(user_close):], assistant_close=assistant_close,
                 generation=tail[len(user_close):])
    found = []
    for i, piece in enumerate(with_system):  # the system text sits inside one of the pieces around the messages
        before, mark, after = piece.partition(_SYS)
        if not mark:
            continue
        if i == 0 and after.endswith(user_open):
            found.append(ChatFormat(**parts, place="head", system_open=before,
                                    system_close=after[:len(after) - len(user_open)]))
        if i == 0 and before.startswith(pre + user_open):
            found.append(ChatFormat(**parts, place="first", system_open=before[len(pre + user_open):],
                                    system_close=after))
        if i == 2 and before.startswith(assistant_close + user_open):
            found.append(ChatFormat(**parts, place="last", system_open=before[len(assistant_close + user_open):],
                                    system_close=after))
    return found


def _join(parts: list[str]) -> str:
    """Literal text and {{ actions }} as one template; between two actions a line break that the first one's `-}}`
    trims, for a template people can read that renders nothing more."""
    parts = [p for p in parts if p]
    out = []
    for i, p in enumerate(parts):
        if p.startswith("{{") and i + 1 < len(parts) and parts[i + 1].startswith("{{"):
            p = p[:-2].rstrip() + " -}}\n"
        out.append(p)
    text = "".join(out)
    return "{{-" + text[2:] if text.startswith("{{ ") else text


def go_template(f: ChatFormat) -> str:
    """The ChatFormat in Ollama's template language (.System, .Messages with the system message among them)."""
    system = [f.system_open, "{{ $.System }}", f.system_close]
    if f.place == "head" and f.default_system() == "":
        head = [f.system_open, "{{ .System }}", f.system_close]  # the same text with or without a system prompt
    elif f.place == "head":
        head = ["{{ if .System }}", f.system_open, "{{ .System }}", f.system_close,
                *(["{{ else }}", f.pre] if f.pre else []), "{{ end }}"]
    else:
        head = [f.pre]
    in_user: list[str] = []
    if f.place == "first":  # the user message right after the system message (Ollama puts that one first)
        in_user = ["{{ if and $.System (le $i 1) }}", *system, "{{ end }}"]
    elif f.place == "last":
        in_user = ["{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}", *system, "{{ end }}"]
    return _join([*head, "{{ range $i, $m := .Messages }}",
                  '{{ if eq .Role "user" }}', f.user_open, *in_user, "{{ .Content }}", f.user_close,
                  '{{ else if eq .Role "assistant" }}', f.assistant_open, "{{ .Content }}", f.assistant_close,
                  "{{ end }}", "{{ end }}", f.generation])


def ollama_values(system: str | None, messages: list[Message]) -> dict[str, Any]:
    """What Ollama gives a template for a chat: .System, and .Messages with the system message first."""
    msgs = ([{"Role": "system", "Content": system}] if system else []) + [
        {"Role": m["role"], "Content": m["content"]} for m in messages if m["role"] != "system"]
    return {"System": system, "Messages": msgs, "Prompt": messages[-1]["content"], "Response": ""}


# Conversations a derived template must render exactly as the chat template does before it is written.
_CHECKS = [[_user(_U1)], [_user(_U1), _assistant(_A1), _user(_U2)],
           [_user(_U1), _assistant(_A1), _user(_U2), _assistant(_A2), _user(_U3)]]


def _renders_the_same(template: str, render: Render) -> bool:
    from .gotemplate import TemplateError
    from .gotemplate import render as go_render

    for system in (None, _SYS):
        for conv in _CHECKS:
            full = ([{"role": "system", "content": system}] if system else []) + conv
            try:
                if go_render(template, ollama_values(system, full)) != render(full):
                    return False
            except TemplateError:
                return False
    return True


def _renderer(tok: Any, strip_bos: bool, gen: bool) -> Render:
    """The training prompt text (render_chat, as every tunelab prompt is built), less the BOS that llama.cpp adds
    itself when the GGUF says so."""
    from ..data.templates import render_chat

    bos = tok.bos_token if strip_bos and tok.bos_token else ""

    def render(messages: list[Message]) -> str:
        text = str(render_chat(tok, messages, add_generation_prompt=gen, tokenize=False))
        if bos and not text.startswith(bos):
            raise ValueError("no BOS")
        return text[len(bos):]
    return render


def chat_format(tok: Any, add_bos: bool = False) -> tuple[ChatFormat, str] | None:
    """(format, Ollama template) of the tokenizer's chat template, checked by rendering both; None where its text
    can't be cut into the pieces Ollama's template language can express."""
    if not isinstance(getattr(tok, "chat_template", None), str):
        return None
    render, render_open = _renderer(tok, add_bos, True), _renderer(tok, add_bos, False)
    try:
        for f in _formats(render, render_open):
            template = go_template(f)
            if "{{" not in "".join(vars(f).values()) and _renders_the_same(template, render):
                return f, template
    except Exception:  # noqa: BLE001 - a template that refuses the probe conversations has no format to derive
        return None
    return None


def system_as_rendered(tok: Any, f: ChatFormat, system: str, add_bos: bool = False) -> str:
    """`system` as the chat template writes it into the prompt (Llama 3 trims it): Ollama writes SYSTEM as it is,
    so the Modelfile gets the text training saw."""
    text = _renderer(tok, add_bos, True)([{"role": "system", "content": system}, _user(_U1)])
    before = f.system_open if f.place == "head" else f.pre + f.user_open + f.system_open
    after = (f.system_close + f.user_open if f.place == "head" else f.system_close) + _U1 + f.user_close + f.generation
    if len(text) >= len(before) + len(after) and text.startswith(before) and text.endswith(after):
        return text[len(before):len(text) - len(after)]
    return system


class _BareTemplate:
    """A chat template without its tokenizer, rendered as the tokenizer renders it (for modelfile() callers that
    have only the template)."""

    added_tokens_decoder: dict[int, Any] = {}

    def __init__(self, chat_template: str, **special_tokens: str | None) -> None:
        self.chat_template, self.special_tokens = chat_template, special_tokens
        self.bos_token = special_tokens.get("bos_token")

    def apply_chat_template(self, conversation: list[Message], *, tokenize: bool = False,
                            add_generation_prompt: bool = False, **kw: Any) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template([conversation], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, **self.special_tokens, **kw)
        return rendered[0]


def template_default_system(chat_template: str | None) -> str | None:
    """The system message the chat template puts in when none is given (SmolLM2's, Qwen2's), or None."""
    got = chat_format(_BareTemplate(chat_template)) if chat_template else None
    return (got[0].default_system() or None) if got else None


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def turn_end(tok: Any) -> str | None:
    """The special token the chat template closes an assistant turn with (<end_of_turn>, </s>, <|im_end|>...)."""
    mark = "\x00ANSWER\x00"
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
                                       tokenize=False)
    except Exception:  # noqa: BLE001 - a template that can't render an answer has no turn end
        return None
    after = text.split(mark, 1)[1] if isinstance(text, str) and mark in text else ""
    specials = [t.content for t in tok.added_tokens_decoder.values() if t.special and t.content in after]
    return min(specials, key=after.index) if specials else None


def stop_tokens(model: Any, tok: Any) -> list[str]:
    """What generation stops at: the model's eos ids (generation config, config, tokenizer) and the turn end."""
    ids: list[int] = []
    for got in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                getattr(model.config, "eos_token_id", None), tok.eos_token_id):
        for i in [got] if isinstance(got, int) else list(got or []):
            if int(i) not in ids:
                ids.append(int(i))
    tokens = [t for t in tok.convert_ids_to_tokens(ids) if t is not None]
    end = turn_end(tok)
    return tokens + [end] if end and end not in tokens else tokens


def _turn_markers(tok: Any, f: ChatFormat) -> list[str]:
    """The special tokens that close an answer or open the next user turn: where an answer has ended even when the
    model writes past its end-of-turn token (<|im_end|> and <|im_start|>, <|eot_id|> and <|start_header_id|>)."""
    text = f.assistant_close + f.user_open
    found = [t.content for t in tok.added_tokens_decoder.values() if t.special and t.content and t.content in text]
    return sorted(found, key=text.index)


def modelfile(gguf_name: str, *, chat_template: str | None = None, task: str, system: str | None,
              eos_token: str | None, extra_stops: list[str] | None = None, tokenizer: Any = None,
              add_bos: bool = False) -> str:
    """An Ollama Modelfile: `ollama create NAME -f Modelfile` next to the .gguf. Its TEMPLATE is derived from the
    chat template (`tokenizer`'s, or `chat_template` alone) by rendering it: the prompt Ollama builds is the one the
    model was trained on; add_bos: the GGUF adds the BOS itself, so the template leaves it out. `extra_stops`: more
    stop tokens (stop_tokens)."""
    if tokenizer is None and chat_template is not None:
        tokenizer = _BareTemplate(chat_template, eos_token=eos_token)
    lines = [f"FROM ./{gguf_name}", ""]
    stops: list[str] = []
    if task == "completion" or not isinstance(getattr(tokenizer, "chat_template", None), str):
        lines += ['TEMPLATE """{{ .Prompt }}"""']  # tunelab prompts such a model with the text as it is
        system = None
    elif (derived := chat_format(tokenizer, add_bos)) is not None:
        f, template = derived
        lines += ["TEMPLATE " + _quote(template)]
        stops += _turn_markers(tokenizer, f)
        if system is None:
            system = f.default_system() or None
        elif system:
            system = system_as_rendered(tokenizer, f, system, add_bos)
    else:
        lines += ["# No TEMPLATE: tunelab could not translate this chat template into Ollama's template language;",
                  "# Ollama falls back to the chat template stored in the GGUF, or write a TEMPLATE for it here."]
    if task != "completion":
        stops += [s for s in dict.fromkeys([eos_token, *(extra_stops or [])]) if s and s not in stops]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    if system:
        lines += ["SYSTEM " + _quote(system)]
    return "\n".join(lines) + "\n"


# --- the export ------------------------------------------------------------------------------------

def gguf_filename(src: Source, ftype: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", src.name).strip("-.") or "model"
    return f"{stem}.{ftype}.gguf"


def export_gguf(src: Source, out: Path, *, dtype: str = "f16", quantize: str | None = None,
                log: Log | None = None) -> Path:
    from .hf import load_merged, system_prompt, write_card

    log = log or (lambda _msg: None)
    ftype = quantize.lower() if quantize else dtype
    from transformers import AutoConfig

    arch = check_supported(src, AutoConfig.from_pretrained(src.resolved.path))  # before the slow load
    model, tok = load_merged(src, log)
    path = out / gguf_filename(src, ftype)
    write_gguf(model, tok, path, ftype=ftype, arch=arch, name=src.name, log=log)
    (out / "Modelfile").write_text(modelfile(path.name, tokenizer=tok, task=src.task, system=system_prompt(src),
                                             eos_token=tok.eos_token, extra_stops=stop_tokens(model, tok),
                                             add_bos=adds_bos_eos(tok)[0]))
    stem = out.name.removesuffix(".partial")
    usage = (f"llama.cpp:\n\n```sh\nllama-cli -m {stem}/{path.name} -cnv\nllama-server -m {stem}/{path.name}\n```\n\n"
             f"Ollama (the Modelfile sets the chat template, stop tokens and system prompt):\n\n"
             f"```sh\ncd {stem} && ollama create {path.name.split('.')[0].lower()} -f Modelfile\n"
             f"ollama run {path.name.split('.')[0].lower()}\n```\n\n"
             f"transformers:\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
             f"model = AutoModelForCausalLM.from_pretrained(\"{stem}\", gguf_file=\"{path.name}\")\n"
             f"tokenizer = AutoTokenizer.from_pretrained(\"{stem}\", gguf_file=\"{path.name}\")\n```")
    write_card(out, src, "gguf", f"`{path.name}`, {ftype}, llama.cpp architecture `{arch}`", usage)
    return path
