"""`--format gguf`: one GGUF file for llama.cpp / Ollama, and a Modelfile next to it.

Written with the `gguf` package's GGUFWriter, following llama.cpp's convert_hf_to_gguf.py for the
architectures below: the same tensor names, the same Q/K row permutation for llama, 1-D tensors kept
in f32, and the tokenizer stored as metadata (a GGUF carries no tokenizer.json).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from .source import ExportError, Log, Source

# model_type -> llama.cpp architecture. Both load back in transformers (`from_pretrained(gguf_file=...)`),
# which is how the export is checked.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}


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


def _rope_theta(cfg: Any) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(cfg, "rope_theta", 10000.0))


def check_supported(src: Source, cfg: Any) -> str:
    """The llama.cpp architecture for this model, or an ExportError saying what is supported."""
    if src.labels:
        raise ExportError(f"{src.run} has a classification head ({len(src.labels)} labels), which llama.cpp "
                          f"can't run: GGUF export supports causal LMs of these architectures: "
                          f"{supported_text()}. Use --format hf (AutoModelForSequenceClassification)")
    arch = ARCHITECTURES.get(cfg.model_type)
    if arch is None:
        raise ExportError(f"GGUF export supports these architectures (model_type): {supported_text()}; "
                          f"this model is {cfg.model_type!r}. Use --format hf, then llama.cpp's "
                          f"convert_hf_to_gguf.py on the result")
    params = getattr(cfg, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    if rope_type not in (None, "default"):
        raise ExportError(f"rope scaling {rope_type!r} is not supported by tunelab's GGUF export (only the "
                          f"default rope); use --format hf, then llama.cpp's convert_hf_to_gguf.py")
    if getattr(cfg, "use_sliding_window", False):
        raise ExportError("sliding-window attention is not supported by tunelab's GGUF export; use --format hf")
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
    probe = "a"
    plain, full = tok(probe, add_special_tokens=False).input_ids, tok(probe).input_ids
    return {
        "pre": pre, "tokens": tokens, "types": types, "merges": merges,
        "bos": tok.bos_token_id, "eos": tok.eos_token_id, "unk": tok.unk_token_id, "pad": tok.pad_token_id,
        "add_bos": len(full) > len(plain) and full[0] == tok.bos_token_id,
        "add_eos": len(full) > len(plain) and full[-1] == tok.eos_token_id,
        "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None,
    }


# --- the file --------------------------------------------------------------------------------------

def write_gguf(model: Any, tok: Any, path: Path, *, ftype: str, arch: str, name: str, log: Log | None = None) -> None:
    import gguf

    log = log or (lambda _msg: None)
    cfg = model.config
    n_vocab = model.get_input_embeddings().weight.shape[0]
    meta = tokenizer_metadata(tok, n_vocab)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
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
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // cfg.num_attention_heads:  # llama.cpp assumes hidden/heads otherwise
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)

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

CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""

LLAMA3_TEMPLATE = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""


def template_family(chat_template: str | None) -> str | None:
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        return "chatml"
    if "<|start_header_id|>" in chat_template and "<|eot_id|>" in chat_template:
        return "llama3"
    return None


def template_default_system(chat_template: str | None) -> str | None:
    """A default system message the chat template inserts when none is given (SmolLM2's does), so Ollama,
    which has no such logic in its template, gets it as SYSTEM."""
    if not chat_template or "!= 'system'" not in chat_template:
        return None
    m = re.search(r"'<\|im_start\|>system\n(.*?)<\|im_end\|>", chat_template, re.DOTALL)
    return m.group(1) if m else None


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(gguf_name: str, *, chat_template: str | None, task: str, system: str | None,
              eos_token: str | None) -> str:
    """An Ollama Modelfile: `ollama create NAME -f Modelfile` next to the .gguf."""
    lines = [f"FROM ./{gguf_name}", ""]
    family = None if task == "completion" else template_family(chat_template)
    stops: list[str] = []
    if task == "completion":
        lines += ['TEMPLATE """{{ .Prompt }}"""']
    elif family == "chatml":
        lines += ["TEMPLATE " + _quote(CHATML_TEMPLATE)]
        stops += ["<|im_end|>", "<|im_start|>"]
    elif family == "llama3":
        lines += ["TEMPLATE " + _quote(LLAMA3_TEMPLATE)]
        stops += ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    else:
        lines += ["# No TEMPLATE: this chat template is not one tunelab translates (ChatML, Llama 3); Ollama",
                  "# falls back to the chat template stored in the GGUF, or write a TEMPLATE for it here."]
    if eos_token and eos_token not in stops and task != "completion":
        stops.append(eos_token)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    if system is None and family == "chatml":
        system = template_default_system(chat_template)
    if system and task != "completion":
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
    (out / "Modelfile").write_text(modelfile(path.name, chat_template=tok.chat_template
                                             if isinstance(tok.chat_template, str) else None,
                                             task=src.task, system=system_prompt(src), eos_token=tok.eos_token))
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
