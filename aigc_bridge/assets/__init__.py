"""Assets: what a generated image becomes on disk or on the wire (docs/outputs.md).

outputs (the entry point: build_outputs / write_outputs), pbr (maps from an albedo), periodic (wrap-aware
filters), resize (power-of-two resampling, mip chains), panorama (equirect post-processing, cube faces),
gltf (skydome and material GLBs), provenance (the JSON beside every set), colour (colour-space ids),
seams (tiling metrics), writers (PNG/EXR encoders, atomic multi-file writes). numpy, Pillow and openexr
only: never the engine, never bpy.
"""
