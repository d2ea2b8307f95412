"""The engine: a model package, its tokenizers, numpy schedulers and the denoising loop on onnxruntime.

Never imports torch, bpy or zmq.
"""

from .conditioning import Noise
from .pipeline import GenerationResult, Pipeline, ProgressEvent

__all__ = ["GenerationResult", "Noise", "Pipeline", "ProgressEvent"]
