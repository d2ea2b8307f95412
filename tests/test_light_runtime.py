"""The runtime never imports torch; `import aigc_bridge` stays light enough for Blender."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_generating_an_image_does_not_import_torch(tiny_sd, tmp_path):
    loaded = _modules_after(
        "from aigc_bridge.cli import main\n"
        f"argv = ['generate', 'red', '-o', r'{tmp_path / 'a.png'}', '--model', r'{tiny_sd}', '--steps', '1']\n"
        "assert main(argv) == 0")
    assert "onnxruntime" in loaded and (tmp_path / "a.png").is_file()
    assert not {"torch", "diffusers", "transformers"} & loaded


def test_package_import_is_light():
    loaded = _modules_after("import aigc_bridge, aigc_bridge.request, aigc_bridge.errors")
    assert not {"numpy", "onnxruntime", "torch", "zmq", "tokenizers"} & loaded
