"""OpenAI's grader objects (reinforcement fine-tuning, `POST /v1/fine_tuning/alpha/graders/*`), field for field as
the official `openai` client types them, plus what can be checked without running anything: template syntax,
the multi grader's formula, a python grader's source compiling. What tunelab can run (metrics, models) is checked
by `tunelab.graders.check`; running them is `tunelab.graders.grade`.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from .base import Section

# {{ item.a.b }}, {{ sample.output_json.x[0] }}: a namespace and a JSON-path-like tail of keys and indices
TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
TEMPLATE_PATH = re.compile(r"^(item|sample)((?:\.[^.\[\]\s{}]+|\[\d+\])*)$")
PATH_PART = re.compile(r"\.([^.\[\]\s{}]+)|\[(\d+)\]")


def template_paths(text: str) -> list[tuple[str, list[str | int]]]:
    """Every {{ namespace.path }} in a template as (namespace, keys); ValueError on one that isn't item/sample."""
    out: list[tuple[str, list[str | int]]] = []
    for expr in TEMPLATE.findall(text):
        m = TEMPLATE_PATH.match(expr)
        if not m:
            raise ValueError(f"template {{{{{expr}}}}}: a variable is item.<field> or sample.<field> (nested with "
                             "dots, e.g. {{item.answer}}, {{sample.output_json.score}}); the only namespaces are "
                             "item and sample")
        keys: list[str | int] = [int(i) if i else k for k, i in PATH_PART.findall(m.group(2))]
        out.append((m.group(1), keys))
    return out


# --- the multi grader's formula: arithmetic over sub-grader names, parsed with ast and walked, never eval'd ------

FORMULA_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
    "sqrt": math.sqrt, "log": math.log}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a**b}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}
FORMULA_HELP = "+ - * / ^ (power), parentheses, numbers, the sub-graders' names and " + ", ".join(FORMULA_FUNCTIONS)


def parse_formula(text: str, names: set[str]) -> ast.Expression:
    """calculate_output, checked: only arithmetic, the allowed functions and the given names; ValueError if not."""
    try:
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")  # ^ is power, binding as tightly as **
    except SyntaxError as exc:
        raise ValueError(f"calculate_output {text!r} is not a formula ({exc.msg}); it may use {FORMULA_HELP}") from None
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FORMULA_FUNCTIONS or node.keywords:
                raise ValueError(f"calculate_output {text!r}: {ast.unparse(node.func)}(...) is not allowed; it may "
                                 f"use {FORMULA_HELP}")
        elif isinstance(node, ast.Name):
            if id(node) not in called and node.id not in names:
                raise ValueError(f"calculate_output {text!r}: {node.id!r} is not one of the graders "
                                 f"({', '.join(sorted(names)) or 'none'})")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ValueError(f"calculate_output {text!r}: {node.value!r} is not a number")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise ValueError(f"calculate_output {text!r}: operator {type(node.op).__name__} is not allowed; it "
                                 f"may use {FORMULA_HELP}")
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                raise ValueError(f"calculate_output {text!r}: operator {type(node.op).__name__} is not allowed")
        elif not isinstance(node, ast.Expression | ast.Load | ast.operator | ast.unaryop):
            raise ValueError(f"calculate_output {text!r}: {type(node).__name__} is not allowed; it may use "
                             f"{FORMULA_HELP}")
    return tree


def evaluate_formula(tree: ast.Expression, values: dict[str, float]) -> float:
    """A parsed formula's value; math errors (division by zero, log of a negative) raise ArithmeticError or
    ValueError."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)  # parse_formula allows nothing else
            return float(FORMULA_FUNCTIONS[node.func.id](*(walk(a) for a in node.args)))
        raise ValueError(f"{type(node).__name__} in a formula")  # parse_formula refused it already

    return float(walk(tree))


def _check_templates(*texts: str) -> None:
    for t in texts:
        template_paths(t)


def _defines_grade(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == "grade":
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "grade" for t in targets):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any((a.asname or a.name) == "grade" for a in node.names):
            return True
    return False


# --- message inputs of the model graders ---------------------------------------------------------------------


class InputText(Section):
    type: Literal["input_text"]
    """Always input_text."""

    text: str
    """The text; may hold templates."""

    prompt_cache_breakpoint: dict[str, Any] | None = None
    """Accepted as OpenAI's client types it; tunelab ignores it."""


class OutputText(Section):
    type: Literal["output_text"]
    """Always output_text: text the model said earlier."""

    text: str
    """The text; may hold templates."""


class InputImage(Section):
    type: Literal["input_image"]
    """Always input_image."""

    image_url: str
    """The image's URL (or data URL); may hold templates."""

    detail: str | None = None
    """high, low or auto (the default)."""


class AudioData(Section):
    data: str
    """Base64-encoded audio."""

    format: Literal["mp3", "wav"]
    """The audio's format."""


class InputAudio(Section):
    type: Literal["input_audio"]
    """Always input_audio."""

    input_audio: AudioData
    """The audio."""


ContentPart = Annotated[InputText | OutputText | InputImage | InputAudio, Field(discriminator="type")]


class GraderMessage(Section):
    role: Literal["user", "assistant", "system", "developer"]
    """Who says it; developer is sent as system to servers that don't know it."""

    content: str | ContentPart | list[ContentPart]
    """Text, or content parts (input_text, output_text, input_image, input_audio); may hold templates."""

    type: Literal["message"] | None = None
    """Always message, when given."""

    @model_validator(mode="after")
    def _templates(self) -> GraderMessage:
        parts = self.content if isinstance(self.content, list) else [self.content]
        _check_templates(*(p if isinstance(p, str) else getattr(p, "text", "") for p in parts))
        return self


class SamplingParams(Section):
    max_completions_tokens: int | None = Field(None, gt=0)
    """Most tokens the grader model may write (OpenAI's spelling)."""

    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    """Reasoning effort, for reasoning models that take it."""

    seed: int | None = None
    """Sampling seed."""

    temperature: float | None = Field(None, ge=0)
    """Sampling temperature."""

    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus sampling mass."""


# --- the graders ---------------------------------------------------------------------------------------------


class StringCheckGrader(Section):
    """Compares input with reference: eq, ne (exact, case-sensitive), like (input contains reference), ilike
    (contains, case-insensitive); reward 1 or 0."""

    type: Literal["string_check"]
    """Always string_check."""

    name: str
    """The grader's name."""

    input: str
    """The text checked, usually {{sample.output_text}}."""

    reference: str
    """The text it is checked against, usually {{item.<field>}}."""

    operation: Literal["eq", "ne", "like", "ilike"]
    """eq, ne, like (contains) or ilike (contains, ignoring case)."""

    @model_validator(mode="after")
    def _templates(self) -> StringCheckGrader:
        _check_templates(self.input, self.reference)
        return self


class TextSimilarityGrader(Section):
    """Scores input against reference with a similarity metric, from 0 to 1."""

    type: Literal["text_similarity"]
    """Always text_similarity."""

    name: str
    """The grader's name."""

    input: str
    """The text graded, usually {{sample.output_text}}."""

    reference: str
    """The text it is graded against."""

    evaluation_metric: Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3",
                               "rouge_4", "rouge_5", "rouge_l"]
    """The metric; tunelab.graders.check says which of them run here."""

    @model_validator(mode="after")
    def _templates(self) -> TextSimilarityGrader:
        _check_templates(self.input, self.reference)
        return self


class PythonGrader(Section):
    """Runs `grade(sample, item) -> float` from `source`, in a separate Python process."""

    type: Literal["python"]
    """Always python."""

    name: str
    """The grader's name."""

    source: str
    """Python source defining grade(sample, item) that returns a number."""

    image_tag: str | None = None
    """OpenAI's sandbox image; tunelab runs the source with its own Python and ignores it."""

    @model_validator(mode="after")
    def _compiles(self) -> PythonGrader:
        try:
            tree = ast.parse(self.source, filename=f"<python grader {self.name}>")
        except SyntaxError as exc:
            raise ValueError(f"the source does not compile: {exc.msg} at line {exc.lineno}") from None
        if not _defines_grade(tree):
            raise ValueError("the source defines no grade(sample, item) function at its top level")
        return self


class ScoreModelGrader(Section):
    """A model reads the messages in `input` and gives a score within `range`."""

    type: Literal["score_model"]
    """Always score_model."""

    name: str
    """The grader's name."""

    model: str
    """A tunelab reward-model run directory, or a model name on the server at TUNELAB_GRADER_BASE_URL."""

    input: list[GraderMessage]
    """The messages sent to the model; may hold templates."""

    range: list[float] | None = None
    """The lowest and highest score, [0, 1] when not given."""

    sampling_params: SamplingParams | None = None
    """How the grader model samples its reply."""

    @model_validator(mode="after")
    def _range(self) -> ScoreModelGrader:
        if self.range is not None and (len(self.range) != 2 or not self.range[0] < self.range[1]):
            raise ValueError(f"range {self.range} must be two numbers, the lower first")
        if not self.input:
            raise ValueError("input holds no messages")
        return self


class LabelModelGrader(Section):
    """A model picks one of `labels`; reward 1 when it is one of `passing_labels` (inside a multi grader only)."""

    type: Literal["label_model"]
    """Always label_model."""

    name: str
    """The grader's name."""

    model: str
    """A model name on the server at TUNELAB_GRADER_BASE_URL."""

    input: list[GraderMessage]
    """The messages sent to the model; may hold templates."""

    labels: list[str]
    """The labels the model chooses from."""

    passing_labels: list[str]
    """The labels that pass; a subset of labels."""

    @model_validator(mode="after")
    def _labels(self) -> LabelModelGrader:
        if not self.labels:
            raise ValueError("labels is empty")
        stray = [x for x in self.passing_labels if x not in self.labels]
        if stray:
            raise ValueError(f"passing_labels {stray} are not among labels {self.labels}")
        if not self.input:
            raise ValueError("input holds no messages")
        return self


SubGrader = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
                      Field(discriminator="type")]


class MultiGrader(Section):
    """Several graders, combined by the formula in calculate_output."""

    type: Literal["multi"]
    """Always multi."""

    name: str
    """The grader's name."""

    graders: dict[str, SubGrader]
    """The graders by the names the formula uses ({name: grader}); one grader object alone is named by its name."""

    calculate_output: str
    """The reward from the graders' rewards, e.g. (name + email) / 2: + - * / ^, parentheses, numbers, min, max,
    abs, floor, ceil, exp, sqrt, log."""

    @model_validator(mode="before")
    @classmethod
    def _one_grader(cls, data: Any) -> Any:
        # OpenAI's client types `graders` as one grader object, its guide as a mapping: both are accepted
        if isinstance(data, dict) and isinstance(data.get("graders"), dict) and "type" in data["graders"]:
            one = data["graders"]
            return {**data, "graders": {str(one.get("name")): one}}
        return data

    @model_validator(mode="after")
    def _formula(self) -> MultiGrader:
        if not self.graders:
            raise ValueError("graders is empty")
        parse_formula(self.calculate_output, set(self.graders))
        return self


Grader = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader,
                   Field(discriminator="type")]
GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")  # label_model: inside multi
