"""The parity check after every export: each format agrees with the trained model and says so in its manifest; a
broken export (another chat template, eos, Modelfile, weight) is refused and leaves nothing behind."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

import tunelab.export.gguf as gguf_export
import tunelab.export.hf as hf_export
from tests.helpers import make_lora_run
from tunelab.cli.export import export_cmd
from tunelab.export import MANIFEST, ExportError, export, read_manifest
from tunelab.export import parity as parity_mod
from tunelab.export.gotemplate import TemplateError, render
from tunelab.export.parity import parse_modelfile

SYSTEM = "Answer in one short sentence."


@pytest.fixture(scope="module")
def run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_run(tmp_path_factory.mktemp("parity") / "bot", tiny_model, system=SYSTEM)


def _parity(out: Path) -> dict[str, Any]:
    manifest = read_manifest(out if out.is_dir() else out.parent)
    assert manifest is not None
    return manifest["parity"]


def _nothing_left(out: Path) -> None:
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


# --- every format passes, and the manifest says how well ---------------------------------------------------

@pytest.mark.parametrize("fmt, kw, lossless", [
    ("hf", {}, True), ("adapter", {}, True), ("gguf", {"dtype": "f32"}, True), ("hf", {"dtype": "f16"}, False),
    ("gguf", {"quantize": "q8_0"}, False)])
def test_each_format_agrees_and_records_it(run: Path, tmp_path: Path, fmt: str, kw: dict[str, str],
                                           lossless: bool) -> None:
    out = export(str(run), fmt, tmp_path / "out", **kw)
    folder = out if out.is_dir() else out.parent
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format"] == fmt and manifest["run"] == str(run)
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {MANIFEST}
    p = manifest["parity"]
    assert p["checked"] and p["prompts"] == {"from": "fixed prompts", "count": 3, "max_new_tokens": 16,
                                             "system_prompt": True}
    first = p["targets"][0]
    assert first["lossless"] is lossless
    if lossless:
        assert first["token_agreement"] == 1.0 and first["answers_identical"] == "3/3"
        assert first["max_logit_diff"] <= first["tolerance"] == parity_mod.LOSSLESS_TOL
    else:  # measured and recorded: rounding moves logits a little, and may flip a near-tie
        assert 0 < first["max_logit_diff"] < 1 and first["floor"] == parity_mod.FLOORS[first["precision"]]
        assert first["floor"] <= first["token_agreement"] <= 1.0
    if fmt == "gguf":
        assert p["modelfile"]["template"] == "renders every prompt to the training token ids"
        assert "llama_cpp" in sys.modules or p["targets"][1]["skipped"].startswith("llama-cpp-python is not")


def test_validation_rows_are_the_prompts(run: Path, tmp_path: Path) -> None:
    import shutil

    own = tmp_path / "with-validation"
    shutil.copytree(run, own)
    (own / "evals").mkdir()
    rows = [{"input": f"where is my card {i}", "reference": "here", "tuned": "x"} for i in range(5)]
    (own / "evals" / "validation.json").write_text(json.dumps({"task": "chat", "examples": rows}))
    p = _parity(export(str(own), "adapter", tmp_path / "out"))
    assert p["prompts"]["from"] == "validation rows" and p["prompts"]["count"] == parity_mod.N_PROMPTS
    assert [a["prompt"] for a in p["answers"]] == [r["input"] for r in rows[:3]]


def test_completion_run_and_its_modelfile(tiny_model: Path, tmp_path: Path) -> None:
    run = make_lora_run(tmp_path / "raw", tiny_model, task="completion")
    p = _parity(export(str(run), "gguf", tmp_path / "out"))
    assert p["prompts"]["system_prompt"] is False and p["targets"][0]["token_agreement"] == 1.0
    assert p["modelfile"]["template"] == "renders every prompt to the training token ids"


def test_classification_head_run(tiny_model: Path, tmp_path: Path) -> None:
    """A head's parity is its label scores: same argmax, logits within the tolerance, for the merge and the adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "head"
    make_lora_run(run, tiny_model, task="classification")
    torch.manual_seed(5)
    head = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=3)
    head.config.pad_token_id = 2
    get_peft_model(head, LoraConfig(task_type="SEQ_CLS", r=4, target_modules="all-linear",
                                    init_lora_weights=False)).save_pretrained(run / "adapter")
    (run / "labels.json").write_text(json.dumps(["card_arrival", "lost_card", "reset_password"]))
    (run / "predictions.json").write_text(json.dumps([{"text": "my card is lost", "label": "lost_card"}]))
    for fmt in ("hf", "adapter"):
        p = _parity(export(str(run), fmt, tmp_path / fmt))
        assert p["prompts"] == {"from": "validation rows", "count": 1, "max_new_tokens": 0, "system_prompt": False}
        assert p["targets"][0]["tokens_agreeing"] == "1/1" and p["targets"][0]["max_logit_diff"] <= 1e-3


# --- broken exports are refused, and leave nothing ----------------------------------------------------------

def _after(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, damage: Any) -> None:
    """Run `damage(out)` on the staged export right after module.name wrote it."""
    real = getattr(module, name)

    def wrapped(src: Any, out: Path, **kw: Any) -> Any:
        got = real(src, out, **kw)
        damage(out)
        return got

    monkeypatch.setattr(module, name, wrapped)


def test_changed_chat_template_is_refused(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def damage(out: Path) -> None:
        f = out / "chat_template.jinja"
        text = f.read_text()
        assert "<|im_start|>assistant" in text
        f.write_text(text.replace("<|im_start|>assistant", "<|im_start|>bot"))

    _after(monkeypatch, hf_export, "export_hf", damage)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("the previous export")
    with pytest.raises(ExportError, match=r"(?s)transformers \(merged\).*chat template at character \d+.*"
                                          r"Nothing was kept.*--no-parity-check"):
        export(str(run), "hf", out, force=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the previous export untouched
    assert not out.with_name("out.partial").exists()


def test_changed_eos_is_refused(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def damage(out: Path) -> None:
        f = out / "tokenizer_config.json"
        f.write_text(json.dumps(json.loads(f.read_text()) | {"eos_token": "<|endoftext|>"}))

    _after(monkeypatch, hf_export, "export_adapter", damage)
    with pytest.raises(ExportError, match=r"eos_token: training '<\|im_end\|>', export '<\|endoftext\|>'"):
        export(str(run), "adapter", tmp_path / "out")
    _nothing_left(tmp_path / "out")


def test_gguf_with_another_eos_is_refused(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = gguf_export.tokenizer_metadata
    monkeypatch.setattr(gguf_export, "tokenizer_metadata", lambda tok, n: real(tok, n) | {"eos": 0})
    with pytest.raises(ExportError, match=r"(?s)transformers \(gguf_file\).*eos_token_id: training 2, export 0"):
        export(str(run), "gguf", tmp_path / "out")
    _nothing_left(tmp_path / "out")


def test_corrupted_merged_weight_is_refused(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file, save_file

    def damage(out: Path) -> None:
        weights = load_file(str(out / "model.safetensors"))
        name = next(k for k in weights if k.endswith("layers.1.mlp.down_proj.weight"))
        weights[name] = weights[name] * 1.5
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})

    _after(monkeypatch, hf_export, "export_hf", damage)
    with pytest.raises(ExportError, match=r"f32 export does not compute what the trained model computes: max \|logit "
                                          r"difference\| .* \(tolerance 0.001\)"):
        export(str(run), "hf", tmp_path / "out")
    _nothing_left(tmp_path / "out")


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('PARAMETER stop "<|im_end|>"\n', ""), r"no PARAMETER stop for '<\|im_end\|>'"),
    (lambda t: t.replace("<|im_start|>assistant\n\"\"\"", "<|im_start|>assistant\"\"\""),
     r"TEMPLATE \(with SYSTEM\) renders prompt 'What is the capital of France\?' differently: at character \d+: "
     r"training '\|im_start\|>assistant\\n', export '\|im_start\|>assistant'"),
    (lambda t: t.replace(f'SYSTEM """{SYSTEM}"""', 'SYSTEM """Be brief."""'), "renders prompt .* differently"),
])
def test_modelfile_that_differs_is_refused(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           change: Any, message: str) -> None:
    real = gguf_export.modelfile
    monkeypatch.setattr(gguf_export, "modelfile", lambda *a, **kw: change(real(*a, **kw)))
    with pytest.raises(ExportError, match=message):
        export(str(run), "gguf", tmp_path / "out")
    _nothing_left(tmp_path / "out")


def test_lossy_export_below_the_floor_is_refused(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(parity_mod.FLOORS, "q8_0", 1.01)  # no export can reach it: the refusal path
    with pytest.raises(ExportError, match=r"q8_0 export agrees with the trained model on \d+% .* below the floor of "
                                          r"101% .*--dtype f16 \(or bf16\) instead of --quantize q8_0"):
        export(str(run), "gguf", tmp_path / "out", quantize="q8_0")
    _nothing_left(tmp_path / "out")


# --- llama.cpp, when llama-cpp-python is there ---------------------------------------------------------------

class _FakeLlama:
    """llama_cpp.Llama's surface the check uses, computed by transformers from the same file: exercises the
    branch where llama-cpp-python is not installed."""

    tokenizer_damage = staticmethod(lambda ids: ids)

    def __init__(self, model_path: str, **kw: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        p = Path(model_path)
        assert kw["logits_all"] and kw["n_ctx"] > 20
        self.tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        self.model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
        self.metadata = {"tokenizer.chat_template": self.tok.chat_template}
        self.eval_logits: list[list[float]] = []

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        assert special and not add_bos
        return self.tokenizer_damage(self.tok(text.decode(), add_special_tokens=False).input_ids)

    def reset(self) -> None:
        self.eval_logits = []

    @torch.no_grad()
    def eval(self, ids: list[int]) -> None:
        self.eval_logits = self.model(torch.tensor([ids])).logits[0].tolist()

    def token_bos(self) -> int:
        return self.tok.bos_token_id

    def token_eos(self) -> int:
        return self.tok.eos_token_id


def test_llama_cpp_branch(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("llama_cpp")
    fake.Llama = _FakeLlama  # type: ignore[attr-defined]
    fake.__version__ = "0.0-test"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    p = _parity(export(str(run), "gguf", tmp_path / "ok"))
    got = p["targets"][1]
    assert got["target"] == "llama.cpp (llama-cpp-python 0.0-test)" and got["token_agreement"] == 1.0

    monkeypatch.setattr(_FakeLlama, "tokenizer_damage", staticmethod(lambda ids: [*ids[:-1], ids[-1] + 1]))
    with pytest.raises(ExportError, match=r"(?s)llama.cpp \(llama-cpp-python 0.0-test\).*token ids differ"):
        export(str(run), "gguf", tmp_path / "bad")
    _nothing_left(tmp_path / "bad")


# --- the command --------------------------------------------------------------------------------------------

def test_cli_reports_parity_and_can_skip_it(run: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(export_cmd)
    runner = CliRunner()
    r = runner.invoke(app, [str(run), "-f", "adapter", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "parity: peft (base + exported adapter) f32: 3/3 answers identical" in " ".join(r.output.split())
    r = runner.invoke(app, [str(run), "-f", "adapter", "-o", str(tmp_path / "b"), "--no-parity-check"])
    assert r.exit_code == 0, r.output
    assert "parity check skipped" in r.output
    assert _parity(tmp_path / "b") == {"checked": False, "reason": "turned off (--no-parity-check)"}


# --- the pieces ---------------------------------------------------------------------------------------------

def test_go_template_rendering() -> None:
    v = {"System": "S", "Prompt": "p",
         "Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "q"}]}
    chatml = ('{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{- range .Messages }}'
              '{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}'
              '<|im_start|>assistant\n')
    assert render(chatml, v) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")
    last = ("{{ range $i, $m := .Messages }}{{ if eq (len (slice $.Messages $i)) 1 }}last:{{ .Content }}{{ end }}"
            "{{ end }}")
    assert render(last, v) == "last:q"
    t = ('{{ if eq .Prompt "x" }}A{{ else if ne .Prompt "p" }}B{{ else }}C{{ end -}}  \n '
         '{{ range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}{{ if and $.System (eq $m.Role "user") }}!{{ end }} '
         '{{ end }}{{/* note */}}{{ len .Messages }}')
    assert render(t, v) == "C0:system 1:user! 2"
    for bad in ("{{ .Prompt | upper }}", "{{ template \"x\" }}", "{{ if .System }}open", '{{ printf "%s" .Prompt }}'):
        with pytest.raises(TemplateError):
            render(bad, v)


def test_parse_modelfile() -> None:
    text = ('FROM ./m.gguf\n\nTEMPLATE """a "quoted" {{ .Prompt }}\nline"""\nPARAMETER stop "<|im_end|>"\n'
            'PARAMETER stop "say \\"end\\""\nSYSTEM """be brief"""\n')
    assert parse_modelfile(text) == {"from": "./m.gguf", "template": 'a "quoted" {{ .Prompt }}\nline',
                                     "system": "be brief", "stops": ["<|im_end|>", 'say "end"']}
