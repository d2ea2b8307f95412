# The two commands a newcomer runs: `make demo` (generate a texture) and `make test`. Each sets itself up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := demo-out

.PHONY: demo test lint bench gpu clean addon

# One environment, in two layers: the runtime (all `make demo` needs: no torch), then the dev/test extras on top
# (CPU torch 2.13, found by pip on our machines; numpy<2 from the start, since bpy needs it).
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu]' 'numpy<2'
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps 'spandrel==0.4.2'  # without torchvision: see pyproject's test extra
	touch $@

# A tileable PBR texture set from the embedded model (texture-mini, docs/texture-mini.md), upscaled to 256 px.
demo: $(VENV)/.runtime
	@mkdir -p $(DEMO)
	$(VENV)/bin/aigc-bridge generate "weathered red brick wall" -o $(DEMO)/wall.png --seed 1 --pbr --target-size 256

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

# The Blender extension zips, one per platform and Blender line (dist/aigc_bridge-VERSION-LINE-PLATFORM.zip), each
# with the sidecar runtime as wheels: downloads them into build/wheels (kept; ~260 MB for all eight), builds the
# runtime wheel, builds and validates every zip with Blender's own extension builder from the bpy wheel
# (docs/blender.md). Writes only under build/ and dist/. ADDON_ARGS="--platform linux-x64" builds fewer.
addon: $(VENV)/.installed
	$(PY) blender_addon/build.py $(ADDON_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_runtime.py

# Swap the CPU onnxruntime for the CUDA build (never both: they install the same module).
gpu: $(VENV)/.installed
	$(PY) -m pip uninstall -y onnxruntime
	$(PY) -m pip install onnxruntime-gpu

clean:
	rm -rf $(DEMO) .pytest_cache
