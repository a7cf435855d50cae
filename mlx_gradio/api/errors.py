"""A refused API request: its HTTP status and the sentence, shaped as the OpenAI API shapes errors."""

from __future__ import annotations

from dataclasses import dataclass, field

ANTHROPIC_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                   503: "overloaded_error"}


@dataclass
class ApiError(Exception):
    """A request that cannot be served as asked; `kind` and `code` are OpenAI's error `type` and `code`."""

    status: int
    message: str
    kind: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def anthropic_body(self) -> dict:
        """The body Anthropic's API answers with (its SDK picks the exception by status)."""
        kind = ANTHROPIC_KINDS.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def openai_body(self) -> dict:
        """The body OpenAI's API answers with, which its SDK turns into the matching exception."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    """400: a field is missing, of the wrong type or out of range."""
    return ApiError(400, message, param=param, code="invalid_value" if param else None)


def unknown_model(name: object) -> ApiError:
    """404: no model on this machine goes by that id."""
    return ApiError(404, f"The model {name!r} is not on this machine; GET /v1/models lists the ones that are.",
                    code="model_not_found", param="model")


def unauthorized(message: str) -> ApiError:
    """401: no API key, or one that is not (or no longer) valid."""
    return ApiError(401, message, kind="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def too_many(retry_after_s: int, message: str) -> ApiError:
    """429: the API is serving as many requests as it takes; try again after `retry_after_s`."""
    return ApiError(429, message, kind="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry_after_s)})
