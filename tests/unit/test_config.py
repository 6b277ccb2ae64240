"""Config: YAML + overrides -> TunelabConfig, errors with file:line and suggestions, generated docs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from tests.helpers import tunelab_cli
from tunelab.config import ConfigError, TunelabConfig, apply_overrides, dump_config, load_config
from tunelab.config.reference import json_schema, markdown_reference

ROOT = Path(__file__).resolve().parents[2]
STARTERS = sorted(Path(str(resources.files("tunelab.config").joinpath("starters"))).glob("*.yaml"))
REPO_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "configs").rglob("*.yml"))
SECTIONS = ("model", "data", "peft", "train", "eval", "classification")


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def config_error(path: Path | None, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# --- defaults and loading -------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    cfg = load_config()
    assert isinstance(cfg, TunelabConfig)
    assert cfg.name == "run"
    assert cfg.task == "chat"
    assert cfg.train.epochs == "auto"
    assert cfg.train.learning_rate == "auto"
    assert cfg.data.format == "auto"
    assert cfg.peft.method == "lora"


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "task: completion\n", "support-bot.yaml"))
    assert cfg.name == "support-bot"
    assert cfg.task == "completion"
    assert load_config(write(tmp_path, "name: given\n", "other.yaml")).name == "given"


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "# nothing here\n"))
    assert cfg.train.seed == 42 and cfg.model.max_length == 512


def test_values_from_yaml_are_typed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, (
        "train:\n"
        "  epochs: 3\n"
        "  learning_rate: 2e-4\n"   # PyYAML reads this as a string; it must still become a float
        "  early_stopping:\n"
        "    patience: 2\n"
        "peft:\n"
        "  target_modules: [q_proj, v_proj]\n"
    )))
    assert cfg.train.epochs == 3
    assert cfg.train.learning_rate == pytest.approx(2e-4)
    assert cfg.train.early_stopping.patience == 2
    assert cfg.peft.target_modules == ["q_proj", "v_proj"]


# --- errors ---------------------------------------------------------------------------------------


def test_misspelled_key_names_key_line_and_suggestion(tmp_path: Path) -> None:
    p = write(tmp_path, (
        "name: demo\n"
        "train:\n"
        "  epochs: 2\n"
        "  learning_rat: 1e-4\n"
    ))
    msg = config_error(p)
    assert f"{p}:4" in msg
    assert "train.learning_rat" in msg
    assert "Did you mean 'train.learning_rate'?" in msg


def test_misspelled_nested_and_top_level_keys_all_reported(tmp_path: Path) -> None:
    p = write(tmp_path, (
        "modle:\n"
        "  base: x\n"
        "train:\n"
        "  early_stopping:\n"
        "    patiense: 3\n"
    ))
    msg = config_error(p)
    lines = msg.splitlines()
    assert any(f"{p}:1" in line and "'modle'" in line and "'model'" in line for line in lines), msg
    assert any(f"{p}:5" in line and "train.early_stopping.patiense" in line
               and "train.early_stopping.patience" in line for line in lines), msg


def test_bad_value_names_key_value_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, (
        "train:\n"
        "  batch_size: 4\n"
        "  epochs: -3\n"
    ))
    msg = config_error(p)
    assert f"{p}:3" in msg
    assert "train.epochs" in msg
    assert "-3" in msg
    assert "greater than 0" in msg


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, (
        "task: chatt\n"
        "peft:\n"
        "  r: 0\n"
        "data:\n"
        "  val_fraction: 1.5\n"
    ))
    msg = config_error(p)
    assert f"{p}:1: task = 'chatt'" in msg
    assert f"{p}:3: peft.r = 0" in msg
    assert f"{p}:5: data.val_fraction = 1.5" in msg


def test_union_tags_are_not_part_of_the_key(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, "train:\n  learning_rate: fast\n"))
    assert "train.learning_rate = 'fast'" in msg
    assert "constrained" not in msg and "literal[" not in msg


def test_invalid_yaml_gives_its_line(tmp_path: Path) -> None:
    p = write(tmp_path, "train:\n  epochs: 3\n   bad: [1, 2\n")
    msg = config_error(p)
    assert msg.startswith(f"{p}:")
    assert "not valid YAML" in msg


def test_non_mapping_config_and_missing_file(tmp_path: Path) -> None:
    assert "must be a mapping" in config_error(write(tmp_path, "- a\n- b\n"))
    msg = config_error(tmp_path / "nope.yaml")
    assert "not found" in msg and "tunelab init" in msg


# --- overrides ------------------------------------------------------------------------------------


def test_dotted_overrides_apply(tmp_path: Path) -> None:
    p = write(tmp_path, "train:\n  learning_rate: 3e-4\n  epochs: 1\n")
    cfg = load_config(p, ["train.learning_rate=1e-4", "train.epochs=5", "model.max_length=128",
                          "train.early_stopping.patience=4", "peft.method=dora"])
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.train.epochs == 5
    assert cfg.model.max_length == 128
    assert cfg.train.early_stopping.patience == 4
    assert cfg.peft.method == "dora"


def test_override_with_nested_dict_value() -> None:
    cfg = load_config(None, ["data.columns={text: text, label: category}", "task=classification"])
    assert cfg.data.columns == {"text": "text", "label": "category"}
    assert cfg.task == "classification"


def test_override_list_and_null_values() -> None:
    cfg = load_config(None, ["peft.target_modules=[q_proj, k_proj]", "data.validation=null",
                             "name=my run"])
    assert cfg.peft.target_modules == ["q_proj", "k_proj"]
    assert cfg.data.validation is None
    assert cfg.name == "my run"


def test_override_value_may_contain_equals() -> None:
    cfg = load_config(None, ["data.system_prompt=answer with a=b"])
    assert cfg.data.system_prompt == "answer with a=b"


def test_override_errors() -> None:
    assert "not key=value" in config_error(None, ["train.learning_rate"])
    msg = config_error(None, ["train.learning_rat=1e-4"])
    assert "train.learning_rat" in msg and "Did you mean 'train.learning_rate'?" in msg
    msg = config_error(None, ["train.epochs=-3"])
    assert "train.epochs = -3" in msg
    assert "is not a section" in config_error(None, ["name=x", "name.sub=1"])


def test_apply_overrides_is_plain_nested_dict_update() -> None:
    data = {"train": {"epochs": 1}}
    assert apply_overrides(data, ["train.seed=7", "a.b.c=x"]) == {
        "train": {"epochs": 1, "seed": 7}, "a": {"b": {"c": "x"}}}


def test_dump_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.learning_rate=1e-4", "data.columns={text: t, label: l}", "name=rt"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


# --- starters and shipped configs -----------------------------------------------------------------


def test_starters_are_shipped() -> None:
    assert {p.stem for p in STARTERS} >= {"chat", "classification", "completion"}


@pytest.mark.parametrize("path", STARTERS, ids=lambda p: p.name)
def test_starter_config_parses(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task == path.stem
    assert cfg.data.train


def test_classification_starter_maps_banking77_columns() -> None:
    cfg = load_config(next(p for p in STARTERS if p.stem == "classification"))
    assert cfg.data.columns == {"text": "text", "label": "category"}


def test_repository_configs_are_shipped() -> None:
    assert REPO_CONFIGS, "configs/ should hold the shipped recipes"


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_config_parses(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, TunelabConfig)
    assert (ROOT / cfg.data.train).exists(), f"{path}: data.train {cfg.data.train} is not in the repository"


# --- generated reference and schema ---------------------------------------------------------------


def test_every_field_is_documented() -> None:
    ref = markdown_reference()
    rows = [line for line in ref.splitlines() if line.startswith("| `")]
    assert rows
    for row in rows:
        meaning = row.rsplit("|", 2)[-2].strip()
        assert meaning, f"undocumented key: {row}"
    for key in ("train.learning_rate", "train.early_stopping.patience", "data.columns", "peft.r",
                "classification.mode", "eval.compare_base", "model.max_length", "name"):
        assert f"| `{key}` |" in ref
    for section in SECTIONS:
        assert f"## {section}" in ref


def test_config_reference_command_matches_generator() -> None:
    done = tunelab_cli("config", "reference", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    generated = markdown_reference()
    assert done.stdout.rstrip("\n") == generated.rstrip("\n")


def test_docs_config_md_is_up_to_date() -> None:
    docs = ROOT / "docs" / "config.md"
    assert docs.is_file(), "docs/config.md is missing: `tunelab config reference > docs/config.md`"
    generated = markdown_reference()
    assert docs.read_text().rstrip("\n") == generated.rstrip("\n"), (
        "docs/config.md is stale: regenerate it with `tunelab config reference > docs/config.md`")


def test_json_schema_is_valid_json_with_sections() -> None:
    schema = json.loads(json_schema())
    assert schema["type"] == "object"
    assert set(SECTIONS) <= set(schema["properties"])
    assert schema.get("additionalProperties") is False
    defs = schema["$defs"]
    assert "learning_rate" in defs["TrainConfig"]["properties"]
    assert defs["TrainConfig"].get("additionalProperties") is False
    assert defs["DataConfig"]["properties"]["format"]["description"]


def test_bad_override_names_the_override_not_the_file(tmp_path) -> None:  # noqa: ANN001
    import pytest

    from tunelab.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, ["train.learning_rat=1e-4"])
    assert "command-line override 'train.learning_rat=1e-4'" in str(exc.value)
    assert "Did you mean 'train.learning_rate'?" in str(exc.value)


# --- rules across fields --------------------------------------------------------------------------


def test_a_setting_the_method_does_not_read_is_refused_at_its_line(tmp_path: Path) -> None:
    p = write(tmp_path, "method: dpo\ntrain:\n  packing: false\n  epochs: 2\nrl:\n  num_generations: 8\n")
    msg = config_error(p)
    assert f"{p}:3: train.packing is not used by method dpo" in msg and "applies to method sft" in msg
    assert f"{p}:6: rl.num_generations is not used by method dpo" in msg and "grpo, rloo" in msg
    assert "epochs" not in msg  # every method reads it


def test_defaults_written_out_whole_read_back_for_every_method(tmp_path: Path) -> None:
    """A run's config.yaml holds every setting, most at their defaults: it must load again (resume, reports)."""
    for method in ("sft", "reward", "dpo", "kto", "orpo", "cpo", "simpo", "grpo", "rloo"):
        cfg = load_config(None, [f"method={method}"])
        again = load_config(write(tmp_path, dump_config(cfg), f"{method}.yaml"))
        assert again.method == method and again.model_dump() == cfg.model_dump()


@pytest.mark.parametrize(("overrides", "key", "says"), [
    (["train.save_every=3"], "train.save_every", "needs train.eval_every"),
    (["train.eval_every=2", "train.save_every=3"], "train.save_every", "must be a multiple of train.eval_every=2"),
    (["train.monitor=accuracy"], "train.monitor", "needs task: classification"),
    (["train.monitor=token_f1", "task=classification"], "train.monitor", "scores generated answers"),
    (["train.monitor=token_f1", "data.val_fraction=0"], "train.monitor", "needs validation data"),
    (["train.early_stopping.patience=2", "data.val_fraction=0"], "train.early_stopping.patience",
     "watches the validation data"),
    (["method=grpo", "train.eval_every=5"], "train.eval_every", "once, after training"),
    (["method=grpo", "rl.max_completion_tokens=600"], "rl.max_completion_tokens", "no room for a prompt"),
    (["method=grpo", "rl.rewards=[numeric, format]", "rl.reward_weights=[1.0]"], "rl.reward_weights",
     "one weight per reward"),
    (["method=kto", "preference.loss_type=ipo"], "preference.loss_type", "not used by method kto"),
])
def test_settings_that_only_work_together(overrides: list[str], key: str, says: str) -> None:
    msg = config_error(None, overrides)
    assert says in msg and key in msg
    culprit = next(o for o in reversed(overrides) if o.startswith(key))
    assert msg.startswith(f"command-line override '{culprit}'")


def test_rules_hold_for_configs_built_in_code() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="train.packing is not used by method grpo"):
        TunelabConfig.model_validate({"method": "grpo", "train": {"packing": False}})
    assert TunelabConfig.model_validate({"method": "grpo", "rl": {"num_generations": 8}}).rl.num_generations == 8


def test_defaults_are_read_from_the_schema() -> None:
    from tunelab.config import default

    assert default("model.max_length") == TunelabConfig().model.max_length
    assert default("eval.probes.max_new_tokens") == TunelabConfig().eval.probes.max_new_tokens
