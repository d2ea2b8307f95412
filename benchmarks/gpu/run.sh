#!/usr/bin/env bash
# The GPU benchmark, on a machine with an NVIDIA GPU and NO network. Before it: benchmarks/gpu/prepare.sh
# on a networked machine, then carry .gpu-wheels/ over (part by part if transfers are size-limited).
# It installs from those wheels only, checks that onnxruntime sees CUDA, exports SD-Turbo and SD 1.5
# architectures (fp16, GPU fusions, verified against fp32 torch on the GPU) and times them against
# diffusers (fp16, SDPA) at 512x512: SD-Turbo 1 step, SD 1.5 25 steps with guidance.
# Output: $OUT/bench.md (the table) and $OUT/parity.json (each graph's max error), OUT defaults to ./gpu-out.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
wheels=.gpu-wheels
for first in "$wheels"/parts/*.whl.00; do   # join split wheels
  [ -e "$first" ] || continue
  cat "${first%.00}".* > "$wheels/$(basename "${first%.00}")"
done
python -m venv --system-site-packages .gpu-venv          # keeps the image's CUDA torch and transformers
.gpu-venv/bin/python -m pip uninstall -y onnxruntime >/dev/null 2>&1 || true
.gpu-venv/bin/python -m pip install --no-index --find-links "$wheels" --no-deps "$wheels"/*.whl
.gpu-venv/bin/python - <<'PY'
import onnxruntime as ort, torch
assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
assert torch.cuda.is_available()
print("onnxruntime", ort.__version__, ort.get_available_providers(), "torch", torch.__version__,
      torch.cuda.get_device_name())
PY
run() { .gpu-venv/bin/python -m aigc_bridge_export.bench --device cuda --precision fp16 --optimize gpu \
          --work .cache/gpu-bench --reps 5 "$@"; }
run --arch sd-turbo --size 512 --steps 1 --guidance 0 --batch 1 2 4 8 16 --cuda-graph | tee "$OUT/bench-sd-turbo.md"
run --arch sd15 --size 512 --steps 25 --guidance 7.5 --batch 1 4 8 | tee "$OUT/bench-sd15.md"
# DiTs, whole (SD 3.5 Medium 2.5 B + T5-XXL 4.7 B; FLUX.1 schnell 12 B + T5-XXL): not yet run on a GPU machine
run --arch sd35-medium --size 1024 --steps 28 --guidance 4.5 --batch 1 --depth full | tee "$OUT/bench-sd35-medium.md"
run --arch flux-schnell --size 1024 --steps 4 --guidance 0 --batch 1 --depth full | tee "$OUT/bench-flux-schnell.md"
cat "$OUT"/bench-*.md > "$OUT/bench.md"
.gpu-venv/bin/python - "$OUT" <<'PY'
import json, pathlib, sys
parity = {p.parent.name: json.loads(p.read_text())["parity"]
          for p in pathlib.Path(".cache/gpu-bench").glob("*-onnx-*/model.json")}
pathlib.Path(sys.argv[1], "parity.json").write_text(json.dumps(parity, indent=2))
for model, graphs in parity.items():
    for graph, n in graphs.items():
        print(f"{model:32} {graph:28} max|onnx-torch| {n['max_abs_error']:.3e}  limit {n['limit']:.3e}  {n['provider']}")
PY
