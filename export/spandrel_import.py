"""Import spandrel (the library that detects and builds super-resolution architectures from .pth files)
without requiring torchvision.

spandrel imports torchvision at import time for two architectures only, LaMa (inpainting) and RestoreFormer
(face restoration), neither of them an upscaler. Where torchvision is missing or broken (PyPI's torchvision
does not import beside a CPU-only torch build: "operator torchvision::nms does not exist"), a placeholder
module stands in for ``torchvision.transforms.functional``; calling it (only those two architectures do)
raises an error that says to install torchvision. Every upscaler architecture is unaffected.
"""

from __future__ import annotations

import sys
import types


def _needs_torchvision(*_args, **_kwargs):
    raise ImportError("this spandrel architecture needs torchvision, which is not installed (or does not "
                      "import beside this torch build): pip install torchvision matching your torch")


def _placeholder() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # a half-imported broken build
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(NEAREST="nearest", BILINEAR="bilinear")
    functional.rotate = functional.normalize = _needs_torchvision
    root.transforms, transforms.functional = transforms, functional
    root.__aigc_placeholder__ = True
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def import_spandrel():
    """The spandrel module; raises ImportError with the install command when it is missing."""
    placeholder = False
    if "spandrel" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # missing (ImportError) or a build that does not match torch (RuntimeError)
            _placeholder()
            placeholder = True
    try:
        import spandrel
    except ImportError as exc:
        if exc.name in ("spandrel", "einops"):
            raise ImportError(f"upscaler export needs spandrel ({exc.name} is missing): "
                              "pip install 'aigc-bridge[export]'", name=exc.name) from None
        raise
    finally:
        if placeholder:  # spandrel holds what it imported; others must still see that torchvision is absent
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]
    return spandrel
