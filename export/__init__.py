"""The exporter: a diffusers text-to-image pipeline becomes an aigc-bridge ONNX model package.

Installed as ``aigc_bridge_export`` (the ``export`` extra: torch, diffusers, transformers, onnx). The
runtime never imports it.
"""
