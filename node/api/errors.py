"""Errors of the HTTP API in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``.

Clients written for OpenAI (the official SDKs) map the status code to an
exception class and read ``error.message``; keeping both exact is what makes
them usable against Mosaic unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec


@dataclass
class ApiError(Exception):
    """An error answered to the HTTP client; raised where bad input enters."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> bytes:
        return msgspec.json.encode(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def unauthorized() -> ApiError:
    return ApiError(401, "Incorrect or missing API key: send `Authorization: Bearer <token>`.",
                    "invalid_request_error", None, "invalid_api_key")


def not_found(path: str) -> ApiError:
    return ApiError(404, f"Unknown endpoint {path[:200]!r}.", "invalid_request_error", None, "unknown_url")


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model {model[:256]!r} does not exist in this network (see GET /v1/models).",
                    "invalid_request_error", "model", "model_not_found")


def method_not_allowed(method: str) -> ApiError:
    return ApiError(405, f"Method {method} not allowed here.", "invalid_request_error", None, "method_not_allowed")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body exceeds {limit} bytes.", "invalid_request_error", None, "request_too_large")


# Protocol ErrorCode (what the coordinator / a remote expert said) -> HTTP status and OpenAI type.
_BY_CODE: dict[str, tuple[int, str]] = {
    "bad_request": (400, "invalid_request_error"),
    "too_large": (413, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "busy": (503, "server_overloaded"),
    "unavailable": (503, "server_error"),
    "timeout": (504, "timeout"),
    "cancelled": (503, "server_error"),
    "internal": (500, "server_error"),
}


def from_code(code: str, message: str) -> ApiError:
    status, kind = _BY_CODE.get(code, (500, "server_error"))
    return ApiError(status, message, kind, "model" if code == "not_found" else None,
                    "model_not_found" if code == "not_found" else code,
                    retry_after=1.0 if code == "busy" else None)
