"""A tokenizer rebuilt from a GGUF splits text as the original (and llama.cpp) does: the pre-tokenizer named by
`tokenizer.ggml.pre` is restored on conversion, and tunelab's GGUF export writes that name back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tunelab.export.gguf import bpe_pre, tokenizer_metadata, write_gguf
from tunelab.models.gguf_convert import (
    COMPLETE,
    TOKENIZER_FIXED,
    convert_gguf,
    fix_pre_tokenizer,
    gguf_pre_name,
)
from tunelab.models.registry import ALIASES, DEFAULT_MODEL

# digits and numbers with separators, code, emoji, mixed scripts, whitespace runs, contractions, special tokens
CORPUS = [
    "Call 555-123-4567 or +1 (800) 555 0199 by 12/31/2024; pay $1,234,567.89, 3.14159e-10, 10% off, v2.0.1, 0x1F",
    "x =   1\n  y = 22\n    z=333\n\tw\t=\t4444",
    "   123   456   7 8 9  ",
    "def f(x):\n    if x > 10:\n        return [i**2 for i in range(x)]\n\n\treturn None  # done\n",
    "Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨✨",
    "中文测试 2024年3月15日 日本語のテキスト 한국어",
    "العربية ١٢٣ ٤٥ Русский текст 42 हिन्दी पाठ १२३ ½ ² ³",
    "a    b\t\t\tc\n\n\n\nd          \n   \n e   ",
    "I'm sure they'd've said it's O'Neil's; DON'T we'll you're I've",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|><|endoftext|>",
]

# llama.cpp's regexes for `smollm` (llama-vocab.cpp): each digit alone, then gpt2's split; built here from the
# regexes rather than from HF's Digits pre-tokenizer, so the reference is independent of the fix.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _llama_cpp_reference(backend: Any) -> Any:
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    ref = Tokenizer.from_str(backend.to_str())
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.Split(Regex(_GPT2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return ref


def _ids(backend: Any) -> list[list[int]]:
    return [backend.encode(text, add_special_tokens=False).ids for text in CORPUS]


def test_default_model_tokenizer_matches_llama_cpp_smollm() -> None:
    """The packaged SmolLM2 GGUF: transformers' own rebuild (byte-level only) differs from `smollm` on whitespace
    before digits and on non-ASCII numerals; with the pre-tokenizer restored every id is equal."""
    from transformers import AutoTokenizer

    gguf = ALIASES[DEFAULT_MODEL].path()
    pre = gguf_pre_name(gguf)
    assert pre == "smollm"
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)  # metadata only, no weights
    reference = _ids(_llama_cpp_reference(tok.backend_tokenizer))
    as_loaded = _ids(tok.backend_tokenizer)
    differ = {i for i, (a, b) in enumerate(zip(as_loaded, reference, strict=True)) if a != b}
    assert {1, 2, 6} <= differ, differ  # "x =   1": "ĠĠ"+"Ġ"+"1" against "ĠĠĠ"+"1"; Arabic-Indic digits

    assert fix_pre_tokenizer(tok, pre)
    assert _ids(tok.backend_tokenizer) == reference
    assert not fix_pre_tokenizer(tok, pre)  # already right
    assert bpe_pre(json.loads(tok.backend_tokenizer.to_str())) == "smollm"  # what the export writes back
    specials = tok("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).input_ids
    assert specials[0] == tok.convert_tokens_to_ids("<|im_start|>") and specials[-1] == tok.eos_token_id


def _digits_model(path: Path) -> tuple[Any, Any]:
    """A tiny llama whose tokenizer splits digits first (SmolLM2's pre-tokenizer), trained on whitespace runs so
    that byte-level-only splitting would give other ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["x =   1\n    y = 22", "   123   456", "the code is 42", "hello world"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg), tok


def test_conversion_restores_the_pre_tokenizer_and_export_writes_it_back(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model, tok = _digits_model(tmp_path)
    gguf = tmp_path / "digits.gguf"
    write_gguf(model, tok, gguf, ftype="f32", arch="llama", name="digits")
    assert gguf_pre_name(gguf) == "smollm"

    out = convert_gguf(gguf, tmp_path / "converted", quiet=True)
    saved = json.loads((out / "tokenizer.json").read_text())["pre_tokenizer"]
    assert [p["type"] for p in saved["pretokenizers"]] == ["Digits", "ByteLevel"]
    converted = AutoTokenizer.from_pretrained(str(out))
    want = _ids(tok.backend_tokenizer)
    assert _ids(converted.backend_tokenizer) == want
    assert tokenizer_metadata(converted, model.get_input_embeddings().weight.shape[0])["pre"] == "smollm"

    # a cache converted before the fix: byte-level only, no marker key; repaired in place on the next load
    plain = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    plain.backend_tokenizer.save(str(out / "tokenizer.json"))
    assert _ids(AutoTokenizer.from_pretrained(str(out)).backend_tokenizer) != want  # the test can see the bug
    marker = json.loads((out / COMPLETE).read_text())
    del marker[TOKENIZER_FIXED]
    (out / COMPLETE).write_text(json.dumps(marker))
    weights_mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(gguf, out, quiet=True) == out
    assert _ids(AutoTokenizer.from_pretrained(str(out)).backend_tokenizer) == want
    assert json.loads((out / COMPLETE).read_text())[TOKENIZER_FIXED] == "smollm"
    assert (out / "model.safetensors").stat().st_mtime_ns == weights_mtime  # not converted again


@pytest.mark.parametrize("pre", ["gpt-2", "qwen2", None])
def test_other_pre_names_are_left_to_transformers(pre: str | None) -> None:
    class Tok:
        backend_tokenizer = object()

    assert not fix_pre_tokenizer(Tok(), pre)
