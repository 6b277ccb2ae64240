"""Request bodies of the OpenAI API subset tunelab serves, and OpenAI's error shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Bounds on what one request may ask for (docs/security.md lists them with the rest): the body itself is at most
# ServeSettings.max_body_bytes, prompt + max_tokens at most the model's context, prompts x n at most --max-batch.
MAX_N = 16  # choices per prompt
MAX_STOPS = 4  # stop sequences, as OpenAI
MAX_STOP_CHARS = 256  # each: the engine holds back text that may start one, checking every token
MAX_MESSAGES = 2048  # messages in one chat request
MAX_PROMPTS = 16  # prompts in one completions request
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


class APIError(Exception):
    """An error the client gets in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None, logged: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.recorded = False  # already in the request log and metrics
        # what the request log keeps when `message` echoes what the client sent (content is logged only with
        # --log-content)
        self.logged = logged

    def log_text(self, log_content: bool) -> str:
        return self.message if log_content or self.logged is None else self.logged

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    # clients send fields we don't use (user, metadata, ...): ignore them, but refuse ones that change
    # the answer in ways we can't honour (see `unsupported`)
    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_defaults(cls, data: Any) -> Any:
        """OpenAI's API takes null for "use the default"; some clients send every field that way."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in ("stop", "seed")}
        return data

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence is at most {MAX_STOP_CHARS} characters")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> list[tuple[str, Any]]:
        """Fields set to values that would need features this server doesn't have."""
        bad = []
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                bad.append((name, getattr(self, name)))
        extra = self.model_extra or {}
        for name in ("logprobs", "top_logprobs", "tools", "functions", "tool_choice", "logit_bias", "echo",
                     "suffix", "response_format"):
            value = extra.get(name)
            if value not in (None, False, 0, {}, [], "auto", "none") and not (
                    name == "response_format" and isinstance(value, dict) and value.get("type") == "text"):
                bad.append((name, value))
        if extra.get("best_of") not in (None, 1):
            bad.append(("best_of", extra["best_of"]))
        return bad


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            if any(p.type != "text" for p in self.content):
                kinds = sorted({p.type for p in self.content if p.type != "text"})
                raise APIError(400, f"only text content is supported, got {', '.join(kinds)}", param="messages")
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(COMPLETIONS_MAX_TOKENS, ge=1)


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_:-]*$")
    path: str = Field(min_length=1, max_length=4096)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    rating: Literal["up", "down"]
    correction: str | None = None
    comment: str | None = None
