"""aigc-bridge: local text-to-image for Blender and game-engine asset workflows.

Kept light on purpose: the Blender add-on imports the client part of this package inside Blender,
so nothing heavy (onnxruntime, numpy) is imported here.
"""

__version__ = "0.1.0"
