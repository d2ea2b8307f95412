"""How one graph runs inside the denoising loop.

The UNet sees the same conditioning at every step; only ``sample`` and ``timestep`` change. On a GPU the
plain ``session.run`` would copy the conditioning to the device at every step, so there we use IO binding:
constant inputs are copied once per call, outputs are allocated on the device, and only the small latents
travel each step (the numpy scheduler runs on the host). With ``cuda_graph`` a second session replays a
captured CUDA graph for one static shape (onnxruntime's ``enable_cuda_graph``), which needs every input and
output at a fixed device address: we keep them in pre-allocated OrtValues and update them in place.
"""

from __future__ import annotations

import numpy as np

from ..errors import AigcError
from .memory import InsufficientMemory, is_allocation_failure

# onnxruntime provider -> the device name its OrtValues use
_DEVICES = {"CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}


def device_of(session) -> str:
    return _DEVICES.get(session.get_providers()[0], "cpu")


def failure(graph: str, exc: Exception) -> AigcError:
    """onnxruntime's untyped error as ours, naming the graph; an allocation the memory limit refused is
    told apart, since the fix is a smaller request, not a bug report."""
    if is_allocation_failure(exc):
        return InsufficientMemory(f"{graph} ran out of memory at this size (the limit this process gives "
                                  "onnxruntime was reached): ask for a smaller image, or generate at the "
                                  f"model's own size and resize the output (target_size) [{str(exc)[:300]}]", graph)
    return AigcError("inference_failed", f"{graph} failed: {exc}", graph)


class GraphRunner:
    """Plain runs: what the CPU wants (binding buys nothing there, the tensors already live in host memory)."""

    def __init__(self, session, name: str) -> None:
        self.session, self.name = session, name
        self._constants: dict[str, np.ndarray] = {}

    def prepare(self, constants: dict[str, np.ndarray]) -> None:
        self._constants = constants

    def __call__(self, feeds: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        try:
            return self.session.run(None, {**self._constants, **feeds}, run_options)
        except Exception as exc:  # onnxruntime's errors are untyped; report the graph that failed
            raise failure(self.name, exc) from None


class BoundGraphRunner(GraphRunner):
    """IO binding: constant inputs copied to the device once per ``prepare``, outputs allocated there."""

    def __init__(self, session, name: str, device: str | None = None) -> None:
        super().__init__(session, name)
        self.device = device or device_of(session)
        self._binding = session.io_binding()
        self._outputs = [o.name for o in session.get_outputs()]

    def prepare(self, constants: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        self._binding.clear_binding_inputs()
        self._constant_values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), self.device, 0)
                                 for k, v in constants.items()}
        for name, value in self._constant_values.items():
            self._binding.bind_ortvalue_input(name, value)

    def __call__(self, feeds: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        import onnxruntime as ort

        try:
            for name, array in feeds.items():
                value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)
                self._binding.bind_ortvalue_input(name, value)
            for name in self._outputs:
                self._binding.bind_output(name, self.device)
            self.session.run_with_iobinding(self._binding, run_options)
            return [value.numpy() for value in self._binding.get_outputs()]
        except Exception as exc:
            raise failure(self.name, exc) from None


class CudaGraphRunner(GraphRunner):
    """Replays a CUDA graph captured on the first run; every call must have the shapes of the first one."""

    def __init__(self, session, name: str) -> None:
        super().__init__(session, name)
        self._binding = session.io_binding()
        self._values: dict[str, object] = {}
        self.shapes: dict[str, tuple[int, ...]] | None = None

    def accepts(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        return self.shapes is None or self.shapes == {k: tuple(v) for k, v in shapes.items()}

    def prepare(self, constants: dict[str, np.ndarray]) -> None:
        self._update(constants)

    def __call__(self, feeds: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        try:
            self._update(feeds)
            if self.shapes is None:  # first run: fix the shapes, bind outputs, let onnxruntime capture
                self.shapes = {k: tuple(v.shape()) for k, v in self._values.items()}
                import onnxruntime as ort

                for output in self.session.get_outputs():
                    shape = self._output_shape(output)
                    value = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0)
                    self._values[output.name] = value
                    self._binding.bind_ortvalue_output(output.name, value)
            self.session.run_with_iobinding(self._binding)
            return [self._values[o.name].numpy() for o in self.session.get_outputs()]
        except AigcError:
            raise
        except Exception as exc:
            raise AigcError("inference_failed", f"{self.name} (CUDA graph) failed: {exc}", self.name) from None

    def _update(self, arrays: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            if name in self._values:
                self._values[name].update_inplace(array)
            else:
                self._values[name] = ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
                self._binding.bind_ortvalue_input(name, self._values[name])

    def _output_shape(self, output) -> list[int]:
        # The UNet's only output has the shape of its `sample` input.
        if output.name == "out_sample":
            return list(self.shapes["sample"])
        raise AigcError("inference_failed", f"no static shape known for output {output.name}", self.name)
