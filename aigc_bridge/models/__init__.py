"""Models shipped inside the package. texture-mini (docs/texture-mini.md) is the default: small enough to
commit, trained by the project itself, so the first command works offline with nothing to download.

``AIGC_BRIDGE_MODEL`` changes the default for ``generate``, ``serve`` and ``batch``: a model package folder
(e.g. an exported SD-Turbo, so real work needs no ``--model`` on every command), or ``none`` for no default."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "texture-mini"
ENV_VAR = "AIGC_BRIDGE_MODEL"


def default_model_dir() -> Path | None:
    """The model to use when none is given: ``AIGC_BRIDGE_MODEL``'s folder, else the shipped package (None
    where neither is there, e.g. a checkout before texture-mini was trained). A wrong ``AIGC_BRIDGE_MODEL`` is
    named as such, not reported as a bad model path the user never typed."""
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen.casefold() == "none":
        return None
    if chosen:
        path = Path(chosen).expanduser()
        if not (path / "model.json").is_file():
            from ..errors import AigcError

            raise AigcError("no_model", f"{ENV_VAR}={path} is not a model package (no model.json): point it at "
                            "a folder `aigc-bridge export` made, set it to none, or unset it for texture-mini",
                            "model")
        return path
    path = Path(__file__).with_name(DEFAULT_MODEL)
    return path if (path / "model.json").is_file() else None
