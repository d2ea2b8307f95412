"""The engine: a model package, its tokenizers, numpy schedulers and the denoising loop on onnxruntime.

Never imports torch, bpy or zmq.
"""

from .pipeline import GenerationResult, Pipeline, ProgressEvent

__all__ = ["GenerationResult", "Pipeline", "ProgressEvent"]
