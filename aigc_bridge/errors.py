"""One error type for everything a user can get wrong, so every layer reports code, message and field."""

from __future__ import annotations


class AigcError(Exception):
    """A failure the user can act on: a machine-readable code, a message, and the offending field."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.message} [{self.code}{', field ' + self.field if self.field else ''}]"


class InvalidRequest(AigcError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__("invalid_request", message, field)


class ModelPackageError(AigcError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__("model_package", message, field)


class Cancelled(AigcError):
    def __init__(self, message: str = "the run was cancelled") -> None:
        super().__init__("cancelled", message)
