"""The exporter's one error type: what failed, and the field (option, file) at fault."""

from __future__ import annotations

from aigc_bridge.errors import AigcError


class ExportError(AigcError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__("export_failed", message, field)
