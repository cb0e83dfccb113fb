"""Box-shaped error answers of the emulator.

Handlers raise :class:`BoxApiError` (API and upload endpoints) or :class:`OAuthError`
(the token endpoint); the app's error middleware turns them into the exact bodies Box sends
(``components.schemas.ClientError`` and ``OAuth2Error`` in Box's OpenAPI spec). Nothing else
ever reaches a client: an unexpected exception is logged and answered as a Box 500 body.
"""

from __future__ import annotations

from typing import Any

HELP_URL = "https://developer.box.com/guides/api-calls/permissions-and-errors/common-errors/"

# Box's default messages, by code, where handlers give none.
_MESSAGES = {
    "bad_request": "Bad Request",
    "not_found": "Not Found",
    "method_not_allowed": "Method Not Allowed",
    "item_name_in_use": "Item with the same name already exists",
    "rate_limit_exceeded": "Request rate limit exceeded, please try again later",
    "internal_server_error": "Internal Server Error",
    "unavailable": "Unavailable",
    "storage_limit_exceeded": "Account storage limit reached",
    "file_size_limit_exceeded": "File size exceeds the folder owner's file size limit",
    "access_denied_insufficient_permissions": "Access denied - insufficient permission",
    "precondition_failed": "The resource has been modified. Please retrieve the resource again and retry",
    "session_expired": "The upload session has expired",
    "length_required": "Length Required",
    "request_entity_too_large": "Request Entity Too Large",
}


class BoxApiError(Exception):
    """An error answer in Box's ``ClientError`` shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str | None = None,
        *,
        context_info: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message or _MESSAGES.get(code, code.replace("_", " ").capitalize())
        self.context_info = context_info
        self.headers = headers or {}
        super().__init__(f"{status} {code}: {self.message}")

    def body(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "error", "status": self.status, "code": self.code}
        if self.context_info is not None:
            body["context_info"] = self.context_info
        body.update(help_url=HELP_URL, message=self.message, request_id=request_id)
        return body


def param_error(status: int, code: str, reason: str, name: str, message: str) -> BoxApiError:
    """A parameter error with Box's ``context_info.errors[]`` detail (as real Box sends)."""
    return BoxApiError(
        status,
        code,
        "Bad Request" if status == 400 else None,
        context_info={"errors": [{"reason": reason, "name": name, "message": message}]},
    )


def missing(name: str) -> BoxApiError:
    return param_error(400, "bad_request", "missing_parameter", name, f"'{name}' is required")


def invalid(name: str, value: object, status: int = 400, code: str = "bad_request") -> BoxApiError:
    return param_error(status, code, "invalid_parameter", name, f"Invalid value '{value}'. '{name}' is invalid")


class OAuthError(Exception):
    """An error answer of the token endpoint (``OAuth2Error``: ``error`` + ``error_description``)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}")

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}
