"""OpenAI's graders, run here: as the reward of GRPO/RLOO (`rl.grader`) and behind `/v1/fine_tuning/alpha/graders/*`.

A grader reads a sampled answer (`sample`: output_text, and output_json when the answer is JSON) and the dataset
row (`item`) through `{{sample.*}}` / `{{item.*}}` templates and gives a reward. What goes wrong while grading one
answer (a python grader raising or timing out, a missing item field, a grader model's unreadable reply) scores that
answer 0 with the error flagged in `metadata.errors`, as OpenAI's graders/run answers; what can be known before
grading (a bad field, a metric or model tunelab can't run) is a ConfigError from `validate` / `check`.

Modules: `checks` (validate, check), `templates` ({{...}} filled in), `grading` (grade, grade_many), which runs
string_check and `text_similarity` itself, `python_grader`, `model_graders` (score_model, label_model) and `multi`;
`reward` (TRL's reward function); `results` (GradeResult and OpenAI's error flags).
"""

from .checks import check, validate
from .grading import grade, grade_many
from .model_graders import API_KEY_ENV, BASE_URL_ENV, parse_label, parse_score
from .python_grader import PYTHON_MEMORY_MB, PYTHON_TIMEOUT
from .results import ERROR_FLAGS, GradeFailure, GraderError, GradeResult, Pair, describe
from .reward import GraderReward, item_column, items_of, pass_threshold, reward_function
from .templates import SAMPLE_FIELDS, missing_item_fields, render, sample_from_text
from .text_similarity import METRICS, similarity

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "ERROR_FLAGS", "METRICS", "PYTHON_MEMORY_MB", "PYTHON_TIMEOUT",
           "SAMPLE_FIELDS", "GradeFailure", "GradeResult", "GraderError", "GraderReward", "Pair", "check", "describe",
           "grade", "grade_many", "item_column", "items_of", "missing_item_fields", "parse_label", "parse_score",
           "pass_threshold", "render", "reward_function", "sample_from_text", "similarity", "validate"]
