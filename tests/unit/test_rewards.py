"""rl.rewards strings -> reward functions: each built-in, user functions, and names that don't exist."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tunelab import rewards
from tunelab.config import ConfigError, load_config


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


PROMPTS: list[Any] = [[{"role": "user", "content": "q"}]] * 3


def test_exact_strips_and_handles_chat_completions() -> None:
    f = rewards.build(["exact"], None)[0]
    assert f(PROMPTS, [" Paris\n", chat("Paris"), "paris"], answer=["Paris", "Paris ", "Paris"]) == [1.0, 1.0, 0.0]
    assert f(PROMPTS[:1], ["x"], answer=[None]) == [0.0]  # no reference answer: nothing to match


def test_numeric_compares_final_numbers() -> None:
    f = rewards.build(["numeric"], None)[0]
    completions = ["so 36 + 36 = 72\n#### 72", "the answer is 72.0", "#### 1,000", "#### 71", "no number"]
    answers = ["48 + 24 = 72\n#### 72", "72", "1000", "#### 72", "5"]
    assert f(PROMPTS, completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert f(PROMPTS[:1], [chat("#### 5")], answer=["#### 5"]) == [1.0]


def test_format_wants_a_final_hash_line() -> None:
    f = rewards.build(["format"], None)[0]
    texts = ["work\n#### 72", "#### 72\n", "#### 72 apples", "the answer: 72", "#### -3.5", "#### 1,200"]
    assert f(PROMPTS, texts) == [1.0, 1.0, 0.5, 0.0, 1.0, 1.0]
    assert f.__name__ == "format"


def test_regex_and_length() -> None:
    regex = rewards.build([r"regex:\bParis\b"], None)[0]
    assert regex(PROMPTS[:2], ["in Paris.", "Parisian"]) == [1.0, 0.0]

    class Tok:  # one token per word
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": list(range(len(text.split())))}

    length = rewards.build(["length:4"], Tok())[0]
    assert length(PROMPTS, ["a b c d", "a b", "a b c d e f g h i j"]) == [1.0, 0.5, 0.0]
    # TRL passes the sampled token ids: they are counted, not re-tokenised
    assert length(PROMPTS[:1], ["ignored"], completion_ids=[[1, 2, 3, 4, 5]]) == [0.75]


def test_module_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_rewards.py").write_text(
        "def short(prompts, completions, **kwargs):\n    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    f = rewards.build(["my_rewards:short"], None)[0]
    assert f(PROMPTS[:2], ["hi", "a long one"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="no function 'missing'"):
        rewards.build(["my_rewards:missing"], None)
    with pytest.raises(ConfigError, match="can't import module 'no_such_module_xyz'"):
        rewards.build(["no_such_module_xyz:f"], None)


@pytest.mark.parametrize("spec", ["numerc", "length:0", "length:abc", "regex:(", "./no/such/dir"])
def test_bad_names_say_what_is_valid(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        rewards.build([spec], None)
    assert spec.split(":")[0] in str(err.value) or spec in str(err.value)
    if spec in ("numerc", "./no/such/dir"):
        assert "exact, numeric, format" in str(err.value)


def test_directory_that_is_not_a_reward_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a tunelab run"):
        rewards.check([str(tmp_path)])
    (tmp_path / "config.yaml").write_text("method: sft\n")
    (tmp_path / "summary.json").write_text('{"status": "completed"}')
    with pytest.raises(ConfigError, match="method: sft run, not a reward model"):
        rewards.check([str(tmp_path)])


def test_weights_must_match() -> None:
    with pytest.raises(ConfigError, match="reward_weights"):  # checked with the config, before anything loads
        load_config(None, ["method=grpo", "rl.rewards=[numeric, format]", "rl.reward_weights=[1.0]"])
    with pytest.raises(ConfigError, match="empty"):
        rewards.check([])


def test_reward_model_run_scores_each_answer(tiny_model: Path, tmp_path: Path) -> None:
    """A reward-model run (method: reward, full fine-tuning layout) gives one scalar per prompt + answer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "rm"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(run / "tokenizer")
    (run / "config.yaml").write_text(f"method: reward\nmodel:\n  base: {tiny_model}\n")
    (run / "summary.json").write_text('{"status": "completed"}')
    (run / "labels.json").write_text('["reward"]')  # a reward run's head has one output, as training saves it

    f = rewards.build([str(run)], None)[0]
    scores = f(PROMPTS[:2], [chat("the capital of France is Paris"), chat("hello")])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores) and scores[0] != scores[1]
    # batched with padding or one at a time: the same score
    assert f(PROMPTS[:1], [chat("hello")])[0] == pytest.approx(scores[1], abs=1e-4)


def test_a_reward_run_without_its_head_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("method: reward\n")
    (tmp_path / "summary.json").write_text('{"status": "completed"}')
    with pytest.raises(ConfigError, match="no reward head"):
        rewards.check([str(tmp_path)])
