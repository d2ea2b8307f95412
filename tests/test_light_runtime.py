"""The runtime never imports torch; `import aigc_bridge` stays light enough for Blender."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_runtime_and_cli_do_not_import_torch():
    loaded = _modules_after("import aigc_bridge.engine, aigc_bridge.cli, aigc_bridge.request")
    assert "onnxruntime" in loaded
    assert not {"torch", "diffusers", "transformers"} & loaded


def test_package_import_is_light():
    loaded = _modules_after("import aigc_bridge, aigc_bridge.request, aigc_bridge.errors")
    assert not {"numpy", "onnxruntime", "torch", "zmq", "tokenizers"} & loaded
