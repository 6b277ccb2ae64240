"""What the tests share: a tiny random-weight model built in the test, tiny data files, the CLI (in this process
or as a real one), run-directory readers and report checks. Test modules import from here, never from each
other."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import yaml

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "my card has not arrived yet where is it",
    "how do I reset my password please help",
    "the capital of France is Paris and of Italy is Rome",
    "card arrival lost or stolen card exchange rate top up",
    "hello world this is a tiny tokenizer for tests 0123456789",
    "user assistant system tool you are a helpful assistant",
] * 20
CLI_ENV = {"COLUMNS": "400", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def build_tiny_model(path: Path, *, seed: int = 0, init_std: float = 0.02) -> Path:
    """Write a 2-layer llama (hidden 64) and a byte-level BPE tokenizer with a ChatML template.

    At the usual init_std the model repeats one token; 0.2 makes greedy answers differ by prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True, initializer_range=init_std)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights on every linear layer: answers differ from the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(out)
    return out


def resumable_config(workdir: Path, tiny_model: Path, name: str, steps: int, save_every: int,
                     **sections: dict[str, Any]) -> Path:
    """A tiny LoRA run's YAML for resume tests: workdir/train.jsonl, no validation split, dropout on (so that its
    RNG must be restored too), a checkpoint every `save_every` steps; `sections` add to the config's own."""
    cfg: dict[str, Any] = {
        "name": name, "output_dir": str(workdir / "runs"), "model": {"base": str(tiny_model)},
        "data": {"train": str(workdir / "train.jsonl"), "val_fraction": 0},
        "peft": {"dropout": 0.1},
        "train": {"max_steps": steps, "save_every": save_every, "batch_size": 2, "learning_rate": 1e-2,
                  "log_every": 1, "threads": 1},
        **sections,
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- the CLI ---------------------------------------------------------------------------------------

@dataclass
class CliResult:
    """What a `tunelab` command did: as subprocess.CompletedProcess names it."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _inside(cwd: Path, env: dict[str, str | None]) -> Iterator[None]:
    """cwd and environment variables (None: unset) for the length of a command; the user modules it imported
    from cwd (e.g. rl.rewards module:function) are forgotten after it, as they would be with its process."""
    old_cwd, old_path, old_modules = os.getcwd(), list(sys.path), set(sys.modules)
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if v is not None}):
        for k in (k for k, v in env.items() if v is None):
            os.environ.pop(k, None)
        os.chdir(cwd)
        try:
            yield
        finally:
            here = str(Path(cwd).resolve())
            for name in set(sys.modules) - old_modules:
                where = getattr(sys.modules[name], "__file__", None)
                if where and str(Path(where).resolve()).startswith(here):
                    del sys.modules[name]
            sys.path[:] = old_path
            os.chdir(old_cwd)


def tunelab_cli(*args: str | Path, cwd: Path, timeout: float = 180, input: str | None = None,
                env: dict[str, str | None] | None = None) -> CliResult:
    """`tunelab ARGS` run in this process (typer's CliRunner): the same command code, exit codes and output,
    without paying for a new Python and torch import each time. `timeout` is for tunelab_process's signature;
    env: variables to set (None: unset) while the command runs."""
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    with _inside(cwd, CLI_ENV | (env or {})):
        r = CliRunner().invoke(app, [str(a) for a in args], input=input)
    stderr = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):  # as a process would print it
        stderr += "".join(traceback.format_exception(r.exception))
    return CliResult(r.exit_code, r.stdout, stderr)


def tunelab_process(*args: str | Path, cwd: Path, timeout: float = 180,
                    input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tunelab ARGS` as a real process: for the smoke tests of the installed command, and for signals."""
    return subprocess.run([sys.executable, "-m", "tunelab.cli.main", *map(str, args)], cwd=cwd,
                          env=os.environ | CLI_ENV, capture_output=True, text=True, timeout=timeout, input=input)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fake_teacher(mode: str, *args: str) -> Iterator[str]:
    """The base URL of tests/data/synth/fake_teacher.py (an OpenAI-compatible fake, over real HTTP) while it runs."""
    script = Path(__file__).parent / "data" / "synth" / "fake_teacher.py"
    proc = subprocess.Popen([sys.executable, str(script), mode, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline().split()[1])}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def teacher_calls(url: str) -> int:
    """How many chat requests the fake teacher has answered."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/calls", timeout=5) as r:
        return int(json.load(r)["calls"])


def wait_up(url: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until a `tunelab serve` process answers /health (or fails with what it printed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("server did not come up")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's package: apt-get install postgresql) on a free port; yields its
    URL. Raises RuntimeError saying what is missing where it can't be started."""
    import glob
    import shutil
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    if not initdb:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    bin_dir = Path(initdb).parent
    root = Path(tempfile.mkdtemp(prefix="tunelab-pg-", dir="/tmp"))
    root.chmod(0o755)
    data, port = root / "data", free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own system user runs it
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr or done.stdout}")

    run(str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=100", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tunelab")
        yield f"postgresql://postgres@127.0.0.1:{port}/tunelab"
    finally:
        with contextlib.suppress(RuntimeError):
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


# --- data ------------------------------------------------------------------------------------------

CHATS = [
    ("hello", "the quick brown fox jumps over the lazy dog"),
    ("where is my card", "my card has not arrived yet"),
    ("how do I reset my password", "reset it from the app please"),
    ("what is the capital of France", "the capital of France is Paris"),
    ("and of Italy", "the capital of Italy is Rome"),
]
LABELED = [
    ("my card has not arrived yet", "card_arrival"), ("where is my card", "card_arrival"),
    ("card arrival please help", "card_arrival"), ("has my card arrived", "card_arrival"),
    ("how do I reset my password", "password_reset"), ("reset my password please", "password_reset"),
    ("password reset help", "password_reset"), ("I need to reset the password", "password_reset"),
    ("my card is lost or stolen", "lost_or_stolen_card"), ("lost card", "lost_or_stolen_card"),
    ("stolen card help", "lost_or_stolen_card"), ("I lost my card", "lost_or_stolen_card"),
    ("exchange rate for my top up", "exchange_rate"), ("what is the exchange rate", "exchange_rate"),
    ("top up exchange rate", "exchange_rate"), ("exchange rate please", "exchange_rate"),
]


def chat_line(user: str, reply: str) -> str:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return json.dumps({"messages": msgs})


def write_chat(path: Path, n: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(chat_line(*CHATS[i % len(CHATS)]) + "\n" for i in range(n)))
    return path


def write_labeled(path: Path) -> Path:
    """LABELED as a banking77-style CSV (text, category)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        w.writerows(LABELED)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One line per row: a dict as JSON, a string as it is (for broken lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


# --- runs ------------------------------------------------------------------------------------------

def config(tiny_model: Path, tmp_path: Path, name: str, data: Path, *overrides: str) -> Any:
    """A quick run's config on the tiny model: no validation split, one thread, no probes (unless overridden)."""
    import tunelab

    return tunelab.load_config(None, [
        f"name={name}", f"output_dir={tmp_path / 'runs'}", f"model.base={tiny_model}", f"data.train={data}",
        "data.val_fraction=0", "train.threads=1", "eval.probes.enabled=false", *overrides])


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def step_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run) if "loss" in r}


# --- the report ------------------------------------------------------------------------------------

IMG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG.findall(page)]


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def self_contained(page: str) -> None:
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()


# --- the loss on the tiny model --------------------------------------------------------------------

CONVERSATIONS = [
    ("hello", "the quick brown fox jumps over the lazy dog"),
    ("where is my card", "my card has not arrived yet"),
    ("how do I reset my password", "reset it from the app please"),
    ("what is the capital of France", "Paris"),
]


def conversation_rows(tokenizer: Any) -> list[dict[str, Any]]:
    """Rows of different lengths, loss on the assistant reply only (prompt tokens carry IGNORE)."""
    from tunelab.data.records import Record
    from tunelab.data.templates import encode_record

    out = []
    for user, reply in CONVERSATIONS:
        rec = Record("t:1", "chat", messages=[{"role": "user", "content": user},
                                              {"role": "assistant", "content": reply}])
        enc = encode_record(rec, tokenizer)
        out.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return out


def tiny_base(tiny_model: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    model.eval()  # no dropout anywhere: both paths must see the same function
    return model


def tiny_lora(tiny_model: Path) -> Any:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so that A and B both get non-zero gradients
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                     init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(tiny_base(tiny_model), cfg)
    model.eval()
    return model


def chat_and_text_rows(tokenizer: Any) -> list[dict[str, Any]]:
    """Chat rows (loss on replies) plus a plain-text row whose every token carries a label."""
    text = tokenizer("the quick brown fox jumps over the lazy dog again", add_special_tokens=False)["input_ids"]
    return [*conversation_rows(tokenizer), {"input_ids": list(text), "labels": list(text)}]


def loss_and_grads(model: Any, batches: list[Any], num_items: Any,
                   label_only: bool) -> tuple[float, dict[str, torch.Tensor]]:
    from tunelab.training.trainer import causal_lm_loss

    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss = causal_lm_loss(model, batch, num_items, label_only)
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None}
    return total, grads


def assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    nonzero = 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        nonzero += bool(a[name].abs().sum() > 0)
    assert nonzero >= len(a) // 2, "most trainable tensors should get a gradient"


def label_tokens(batch: dict[str, torch.Tensor]) -> int:
    from tunelab.data.templates import IGNORE

    return int((batch["labels"][:, 1:] != IGNORE).sum())


def train_conversations(tiny_model: Path, tmp_path: Path, name: str, *extra: str) -> list[dict[str, Any]]:
    """Train on CONVERSATIONS with a constant rate and no dropout, no probes; the logged training-loss rows."""
    import tunelab

    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(chat_line(u, a) for u, a in CONVERSATIONS) + "\n")
    cfg = tunelab.load_config(None, [
        f"name={name}", f"output_dir={tmp_path / 'runs'}", f"model.base={tiny_model}", f"data.train={data}",
        "data.val_fraction=0", "peft.dropout=0", "train.group_by_length=false", "train.warmup_ratio=0",
        "train.learning_rate=1e-2", "train.lr_scheduler=constant", "train.threads=1", "model.precision=fp32",
        "eval.probes.enabled=false", *extra])
    result = tunelab.train(cfg)
    assert result.status == "completed"
    return [row for row in metrics(result.run_dir) if "loss" in row]


def chromium_path() -> str | None:
    """Debian's Chromium (installed by .ci/run); None where it isn't installed."""
    import shutil

    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Playwright (Debian's browser: Playwright downloads none); skips the test,
    saying why, where either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


# --- faults: a training process killed with SIGKILL (tests/e2e/test_fault_kill.py and bench/fault_kill.py) -----------

REPO = Path(__file__).resolve().parents[1]
# `tunelab ARGS` in a process that first arranges its own kill -9 (kill_at); its argv: POINT, then ARGS
KILLED_MAIN = ("import sys; from tests.helpers import kill_at; kill_at(sys.argv.pop(1)); "
               "from tunelab.cli.main import app; app(prog_name='tunelab')")
PLAIN_MAIN = "from tunelab.cli.main import app; app(prog_name='tunelab')"


def kill_at(point: str) -> None:
    """Make this process SIGKILL itself at `point` of a training run, where a kill -9 from outside could land:
    "NAME:half[:N]" while the N-th file (1st by default) whose path ends with /NAME is being written (half of it on
    disk), "NAME:whole[:N]" right after it is written. NAME: a checkpoint's file (adapter_model.safetensors,
    optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json, tunelab-manifest.json), the final adapter
    (adapter/adapter_model.safetensors), or a file tunelab writes atomically (report.json, report.html,
    summary.json: "half" leaves its temporary file cut short and the file itself as it was, as a real kill would)."""
    import signal

    import peft.peft_model
    import transformers.trainer_callback

    import tunelab.atomic

    name, how, *nth = point.split(":")
    left = [int(nth[0]) if nth else 1]

    def hit(path: Any) -> bool:
        if not isinstance(path, str | os.PathLike) or not str(path).endswith(os.sep + name):
            return False
        left[0] -= 1
        return left[0] == 0

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def then_die(write: Any, where: Any) -> Any:  # where(*args, **kwargs) -> the written path
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = write(*args, **kwargs)
            path = where(*args, **kwargs)
            if hit(path):
                if how == "half":
                    os.truncate(path, os.path.getsize(path) // 2)
                die()
            return out
        return wrapped

    torch.save = then_die(torch.save, lambda obj, f, *a, **k: f)
    peft.peft_model.safe_save_file = then_die(peft.peft_model.safe_save_file, lambda t, filename, *a, **k: filename)
    state = transformers.trainer_callback.TrainerState
    state.save_to_json = then_die(state.save_to_json, lambda self, json_path: json_path)
    atomic_write = tunelab.atomic.write_bytes

    def write_bytes(path: str | Path, data: bytes) -> Path:
        if hit(path):
            if how == "half":  # atomic.write_bytes's temporary file, cut short; never renamed
                Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp").write_bytes(data[: len(data) // 2])
            else:
                atomic_write(path, data)
            die()
        return atomic_write(path, data)

    tunelab.atomic.write_bytes = write_bytes


def tunelab_killable(*args: str | Path, cwd: Path, log: Path, point: str | None = None) -> subprocess.Popen[bytes]:
    """`tunelab ARGS` as a process to kill: from outside, or by itself at `point` (kill_at). Output goes to `log`
    (a pipe nobody reads would fill and stop it)."""
    code, pre = (KILLED_MAIN, [point]) if point else (PLAIN_MAIN, [])
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", code, *pre, *map(str, args)], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env=os.environ | CLI_ENV | {"PYTHONPATH": path})


def kill_landed(run: Path, pid: int) -> str:
    """Where the killed training process `pid` was, from its run directory: the phase in progress.json (if that
    process wrote it, not one before it), or the checkpoint it was saving."""
    from tunelab.runs import RunDir, layout
    from tunelab.runs.checkpoint import problem

    if not run.is_dir():
        return "starting (no run directory yet)"
    rd = RunDir(run)
    if not rd.file(layout.SUMMARY).is_file():
        return "opening the run directory"
    try:
        progress = rd.progress() or {}
    except ValueError:
        return "unknown (progress.json unreadable)"
    if progress.get("pid") != pid:
        return "starting (loading the model and data)"
    phase = progress.get("phase", "starting")
    newest = max(rd.checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)
    unfinished = newest is not None and (problem(newest) or not (newest / layout.CHECKPOINT_MANIFEST).is_file())
    if phase == "training" and unfinished:  # the manifest is the last thing a checkpoint gets
        return f"training: saving {newest.name}"
    if phase == "training":
        done = step_losses(run) if rd.metrics_path.is_file() else {}
        return f"training: in step {max([0, *done]) + 1}"
    return phase


def looks_more_finished(run: Path, steps: int) -> list[str]:
    """Ways a run directory left by a killed process looks more finished than it is: "completed" without a model
    that loads or without every step's loss; a model that loads though the run did not complete; a report of a run
    that did not complete, or without its facts; a checkpoint a resume would take that does not load whole."""
    import tunelab
    from tunelab.runs import RunDir, layout

    rd, found = RunDir(run), []
    if not rd.file(layout.SUMMARY).is_file():
        return [f"{n} without summary.json" for n in (layout.REPORT_HTML, layout.ADAPTER) if rd.file(n).exists()]
    completed = rd.status() == "completed"
    try:
        tunelab.load(str(run))
        loads = None
    except Exception as exc:  # a ModelError for an unfinished run; anything else is a half-written model
        loads = f"{type(exc).__name__}: {exc}"
    if completed and loads:
        found.append(f"completed, but its model does not load ({loads})")
    if not completed and not loads:
        found.append(f"status {rd.status()!r}, but it loads as a model")
    if completed and sorted(step_losses(run)) != list(range(1, steps + 1)):
        found.append(f"completed with the losses of steps {sorted(step_losses(run))}")
    if rd.report_html.exists() and not (completed and rd.file(layout.REPORT_JSON).is_file()):
        found.append(f"report.html, but status {rd.status()!r} and report.json {rd.file(layout.REPORT_JSON).exists()}")
    ckpt = rd.last_checkpoint()
    if ckpt is not None:
        from safetensors.torch import load_file

        try:
            load_file(ckpt / "adapter_model.safetensors")
            for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
                torch.load(ckpt / name, weights_only=False)
            json.loads((ckpt / "trainer_state.json").read_text())
        except Exception as exc:
            found.append(f"{ckpt.name} passes as whole, but {type(exc).__name__}: {exc}")
    return found


# --- model families: a tiny random-weight model of each, with its real special tokens and chat template ---------

CHAT_TEMPLATES = Path(__file__).parent / "data" / "chat_templates"  # NOTICE.md there says where each came from
_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 512, "initializer_range": 0.2}


@dataclass(frozen=True)
class Family:
    """A model family as its instruction-tuned checkpoints ship it: the transformers config class and the small
    sizes to build it with, the tokenizer's special tokens, the token that ends an assistant turn, the ids
    generation stops at (generation_config.json), and the chat template file."""

    config_class: str  # in transformers
    config: dict[str, Any]
    specials: tuple[str, ...]  # special tokens, in vocabulary order
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    end_of_turn: str
    stop: tuple[str, ...]  # generation_config.eos_token_id, as tokens
    template: Path
    added: tuple[str, ...] = ()  # added tokens that are not special (decoded like text)


def _gemma(config_class: str, name: str) -> Family:
    """Gemma 2 and 3 ship the same tokens; a sliding window shorter than the tests' prompts."""
    return Family(config_class, {**_TINY, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16,
                                 "tie_word_embeddings": True},
                  ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                  bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", end_of_turn="<end_of_turn>",
                  stop=("<eos>", "<end_of_turn>"), template=CHAT_TEMPLATES / f"{name}.jinja")


FAMILIES: dict[str, Family] = {
    "llama": Family(
        "LlamaConfig", {**_TINY, "tie_word_embeddings": False},
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
         "<|eot_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"),
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None, end_of_turn="<|eot_id|>",
        stop=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), template=CHAT_TEMPLATES / "llama.jinja"),
    "qwen2": Family(
        "Qwen2Config", {**_TINY, "tie_word_embeddings": True},
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, end_of_turn="<|im_end|>",
        stop=("<|im_end|>", "<|endoftext|>"), template=CHAT_TEMPLATES / "qwen2.jinja"),
    "qwen3": Family(
        "Qwen3Config", {**_TINY, "head_dim": 16, "tie_word_embeddings": True},
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, end_of_turn="<|im_end|>",
        stop=("<|im_end|>", "<|endoftext|>"), template=CHAT_TEMPLATES / "qwen3.jinja", added=("<think>", "</think>")),
    "mistral": Family(
        "MistralConfig", {**_TINY, "head_dim": 16, "sliding_window": None, "tie_word_embeddings": False},
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
         "[/TOOL_RESULTS]", "[TOOL_CALLS]"),
        bos="<s>", eos="</s>", pad=None, unk="<unk>", end_of_turn="</s>", stop=("</s>",),
        template=CHAT_TEMPLATES / "mistral.jinja"),
    "gemma2": _gemma("Gemma2Config", "gemma2"),
    "gemma3": _gemma("Gemma3TextConfig", "gemma3"),
    "phi3": Family(
        "Phi3Config", {**_TINY, "tie_word_embeddings": False},
        ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"),
        bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>", end_of_turn="<|end|>",
        stop=("<|end|>", "<|assistant|>", "<|endoftext|>"), template=CHAT_TEMPLATES / "phi3.jinja"),
}


def build_family_model(family: str, path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight model of `family` (a FAMILIES key) to `path`: 2 layers, hidden 64, a byte-level
    BPE tokenizer of about 400 tokens with the family's special tokens, BOS handling and real chat template, and
    the generation config that stops where the family's checkpoints stop. Returns `path`."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    spec = FAMILIES[family]
    tk = Tokenizer(models.BPE(unk_token=spec.unk))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=list(spec.specials),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if spec.bos is not None:  # as the family's own tokenizer: plain text gets a BOS, chat text has it already
        tk.post_processor = processors.TemplateProcessing(single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B",
                                                          special_tokens=[(spec.bos, tk.token_to_id(spec.bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad,
                                  unk_token=spec.unk)
    if spec.added:
        tok.add_tokens(list(spec.added))
    tok.chat_template = spec.template.read_text()
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)

    def ids(*tokens: str | None) -> list[int]:
        return [tok.convert_tokens_to_ids(t) for t in tokens if t is not None]

    cfg = getattr(transformers, spec.config_class)(
        vocab_size=len(tok), bos_token_id=(ids(spec.bos) or [None])[0], eos_token_id=ids(spec.eos)[0],
        pad_token_id=(ids(spec.pad) or [None])[0], **spec.config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    stop = ids(*spec.stop)
    model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, pad_token_id=cfg.pad_token_id,
                                               eos_token_id=stop[0] if len(stop) == 1 else stop)
    model.save_pretrained(path)
    return path


def make_lora_run(run: Path, base: Path, *, seed: int = 1, task: str = "chat", system: str | None = None) -> Path:
    """A completed run directory as `tunelab train` leaves it (config, summary, tokenizer, adapter) around a random,
    far-from-zero LoRA adapter (make_adapter), without training: for tests of what reads finished runs (export)."""
    from transformers import AutoTokenizer

    make_adapter(base, run / "adapter", seed)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(run / "tokenizer")
    cfg = {"name": run.name, "task": task, "model": {"base": str(base)},
           "data": {"train": "data/train.jsonl", "system_prompt": system}, "peft": {"method": "lora", "r": 4}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "summary.json").write_text(json.dumps({"name": run.name, "status": "completed", "task": task}))
    return run
