"""texture-mini: the small text-to-texture model aigc-bridge trains itself, from procedural data.

``python -m aigc_bridge_export.texture_mini.train --out DIR --seed 0`` runs the whole loop (data,
tokenizer, VAE, UNet + text encoder, diffusers pipeline, ONNX package, evaluation); docs/texture-mini.md
is the model card.
"""
