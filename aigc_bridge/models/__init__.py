"""Models shipped inside the package. texture-mini (docs/texture-mini.md) is the default: small enough to
commit, trained by the project itself, so the first command works offline with nothing to download."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "texture-mini"


def default_model_dir() -> Path | None:
    """The shipped default model package, or None in a checkout where it has not been trained yet."""
    path = Path(__file__).with_name(DEFAULT_MODEL)
    return path if (path / "model.json").is_file() else None
