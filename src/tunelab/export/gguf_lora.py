"""A PEFT LoRA adapter as a llama.cpp LoRA adapter (GGUF, `general.type = adapter`), for llama.cpp's runtime LoRA.

llama.cpp adds `scale * B(A x)` beside each frozen weight, unmerged, on any base file (quantized ones too), with
`scale = alpha / rank` when the file gives an alpha and the adapter's own scale otherwise. Each tensor's PEFT
scaling (alpha/r, alpha/sqrt(r) for rsLoRA, per-module ranks and alphas) is folded into its B matrix and no alpha is
written, so every PEFT variant of plain LoRA comes out exact. What llama.cpp's LoRA can't express (DoRA's
magnitudes, modules trained in full, LoRA biases, adapters on embeddings) is refused with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .gguf import ARCHITECTURES, permute_qk
from .source import ExportError

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


def _load_weights(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    path = adapter_dir / "adapter_model.safetensors"
    if path.is_file():
        return load_file(str(path))
    if (adapter_dir / "adapter_model.bin").is_file():
        import torch

        state = torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise ExportError(f"{adapter_dir}: no adapter_model.safetensors (nor adapter_model.bin)")


def _scaling(cfg: dict[str, Any], module: str) -> float:
    """PEFT's scaling for one module: its rank and alpha (per-module patterns, matched as PEFT matches them), rsLoRA
    or not."""
    from peft.utils.other import get_pattern_key

    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    r = ranks.get(get_pattern_key(ranks.keys(), module), cfg["r"])
    alpha = alphas.get(get_pattern_key(alphas.keys(), module), cfg.get("lora_alpha", r))
    return float(alpha) / (r ** 0.5 if cfg.get("use_rslora") else r)


def check_lora(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's config when llama.cpp's runtime LoRA can run it exactly, else an ExportError saying why."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{adapter_dir}: a {cfg.get('peft_type')} adapter; llama.cpp runs LoRA adapters only: "
                          f"serve it with --engine torch")
    unsupported = [what for what, on in (("DoRA", cfg.get("use_dora")), ("LoRA biases", cfg.get("lora_bias")),
                                         ("modules trained in full (modules_to_save)", cfg.get("modules_to_save")),
                                         ("activated LoRA", cfg.get("alora_invocation_tokens")),
                                         ("QALoRA", cfg.get("use_qalora")))
                   if on]
    if unsupported:
        raise ExportError(f"{adapter_dir}: the adapter has {', '.join(unsupported)}, which llama.cpp's runtime "
                          f"LoRA can't apply: serve it with --engine torch, or export the run merged")
    return cfg


def write_lora_gguf(adapter_dir: Path, model_config: Any, path: Path) -> Path:
    """Write `adapter_dir` (PEFT) as a llama.cpp LoRA GGUF at `path`, for a base of `model_config`."""
    import gguf
    import numpy as np

    cfg = check_lora(adapter_dir)
    arch = ARCHITECTURES.get(model_config.model_type)
    if arch is None:
        raise ExportError(f"llama.cpp LoRA adapters are written for {', '.join(ARCHITECTURES)}; the base is "
                          f"{model_config.model_type!r}: serve it with --engine torch")
    n_layers = model_config.num_hidden_layers
    name_map = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), n_layers)
    n_head = model_config.num_attention_heads
    n_kv = getattr(model_config, "num_key_value_heads", None) or n_head
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in _load_weights(adapter_dir).items():
        m = _KEY.match(key)
        if m is None:
            raise ExportError(f"{adapter_dir}: weight {key!r} is not a LoRA A/B matrix; llama.cpp can't apply it: "
                              f"serve the adapter with --engine torch")
        pairs.setdefault(m["module"], {})[m["ab"]] = np.asarray(value, dtype=np.float32)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_name(adapter_dir.name)
    # no adapter.lora.alpha: each B below carries its module's scaling, so llama.cpp's scale is the adapter's own
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ExportError(f"{adapter_dir}: {module} has lora_{'A' if 'A' not in ab else 'B'} missing: the "
                              f"adapter file is damaged; copy it again")
        name = name_map.get_name(module)
        if name == "output" and getattr(model_config, "tie_word_embeddings", False):
            raise ExportError(f"{adapter_dir}: a LoRA on {module!r}, the output layer this base shares with its "
                              f"embeddings; llama.cpp can't apply it: serve the adapter with --engine torch")
        if name is None or name == "token_embd":
            raise ExportError(f"{adapter_dir}: a LoRA on {module!r}, which llama.cpp's {arch} LoRA can't take: "
                              f"serve the adapter with --engine torch")
        a, b = ab["A"], ab["B"] * _scaling(cfg, module)
        if arch == "llama" and module.endswith("q_proj"):
            b = permute_qk(b, n_head, n_head)
        elif arch == "llama" and module.endswith("k_proj"):
            b = permute_qk(b, n_head, n_kv)
        w.add_tensor(f"{name}.weight.lora_a", np.ascontiguousarray(a))
        w.add_tensor(f"{name}.weight.lora_b", np.ascontiguousarray(b))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
