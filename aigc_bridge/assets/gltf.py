"""A small GLB (binary glTF 2.0) writer and reader: a skydome for backdrops, a plane for PBR sets.

Written by hand (about a hundred lines, no dependency) because we need two fixed meshes, embedded PNGs
and one extension; the tests load the results back with Blender's glTF importer.
Frame: glTF is right-handed, +Y up, -Z forward; the panorama's centre is placed at -Z.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from .. import __version__

FLOAT, UINT32 = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, REPEAT, CLAMP_TO_EDGE = 9729, 9987, 10497, 33071
GLB_MAGIC, JSON_CHUNK, BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942


class _Builder:
    """Collects buffer views, accessors, images, samplers and textures; emits one GLB."""

    def __init__(self) -> None:
        self.binary = bytearray()
        self.gltf: dict = {"asset": {"version": "2.0", "generator": f"aigc-bridge {__version__}"},
                           "bufferViews": [], "accessors": [], "images": [], "samplers": [], "textures": []}

    def _view(self, data: bytes, target: int | None = None) -> int:
        self.binary.extend(b"\0" * (-len(self.binary) % 4))
        view: dict = {"buffer": 0, "byteOffset": len(self.binary), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.binary.extend(data)
        self.gltf["bufferViews"].append(view)
        return len(self.gltf["bufferViews"]) - 1

    def accessor(self, array: np.ndarray, kind: str, indices: bool = False) -> int:
        array = np.ascontiguousarray(array, dtype=np.uint32 if indices else np.float32)
        view = self._view(array.tobytes(), ELEMENT_ARRAY_BUFFER if indices else ARRAY_BUFFER)
        acc: dict = {"bufferView": view, "componentType": UINT32 if indices else FLOAT,
                     "count": int(array.shape[0] if kind != "SCALAR" else array.size), "type": kind}
        if kind == "VEC3" and not indices:  # POSITION needs bounds; harmless elsewhere
            acc["min"] = array.min(axis=0).tolist()
            acc["max"] = array.max(axis=0).tolist()
        self.gltf["accessors"].append(acc)
        return len(self.gltf["accessors"]) - 1

    def texture(self, png: bytes, name: str, wrap_s: int = REPEAT, wrap_t: int = REPEAT) -> int:
        self.gltf["images"].append({"bufferView": self._view(png), "mimeType": "image/png", "name": name})
        sampler = {"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": wrap_s, "wrapT": wrap_t}
        if sampler not in self.gltf["samplers"]:
            self.gltf["samplers"].append(sampler)
        self.gltf["textures"].append({"sampler": self.gltf["samplers"].index(sampler),
                                      "source": len(self.gltf["images"]) - 1})
        return len(self.gltf["textures"]) - 1

    def finish(self, name: str, attributes: dict[str, int], indices: int, material: dict) -> bytes:
        g = self.gltf
        g["materials"] = [material]
        g["meshes"] = [{"name": name, "primitives": [{"attributes": attributes, "indices": indices,
                                                       "material": 0}]}]
        g["nodes"] = [{"name": name, "mesh": 0}]
        g["scenes"] = [{"nodes": [0]}]
        g["scene"] = 0
        self.binary.extend(b"\0" * (-len(self.binary) % 4))
        g["buffers"] = [{"byteLength": len(self.binary)}]
        return glb_bytes(g, bytes(self.binary))


def glb_bytes(gltf: dict, binary: bytes) -> bytes:
    """Pack a glTF JSON document and its binary buffer as GLB (JSON padded with spaces, BIN with zeros)."""
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<III", GLB_MAGIC, 2, total) + struct.pack("<II", len(text), JSON_CHUNK) + text
            + struct.pack("<II", len(binary), BIN_CHUNK) + binary)


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """The JSON document and the BIN chunk of a GLB (for tests and tools)."""
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or total != len(data):
        raise ValueError("not a GLB 2.0 file")
    length, kind = struct.unpack_from("<II", data, 12)
    if kind != JSON_CHUNK:
        raise ValueError("the first GLB chunk is not JSON")
    gltf = json.loads(data[20: 20 + length])
    binary = b""
    if 20 + length < total:
        blen, bkind = struct.unpack_from("<II", data, 20 + length)
        if bkind == BIN_CHUNK:
            binary = data[28 + length: 28 + length + blen]
    return gltf, binary


def glb_image(gltf: dict, binary: bytes, texture_index: int) -> bytes:
    """The embedded bytes of texture ``texture_index``."""
    image = gltf["images"][gltf["textures"][texture_index]["source"]]
    view = gltf["bufferViews"][image["bufferView"]]
    return binary[view.get("byteOffset", 0): view.get("byteOffset", 0) + view["byteLength"]]


def skydome_glb(texture_png: bytes, *, radius: float = 50.0, segments: int = 64, rings: int = 32,
                name: str = "skydome") -> bytes:
    """A UV sphere seen from inside: inward triangles and normals, the equirect as an unlit base colour.

    KHR_materials_unlit makes engines show the texture as is (no lighting), metallic 0 / roughness 1 is
    its fallback elsewhere. The texture wraps on u (the seam column is duplicated) and clamps on v.
    """
    v = np.arange(rings + 1) / rings
    u = np.arange(segments + 1) / segments
    uu, vv = np.meshgrid(u, v)
    uu[0, :-1] += 0.5 / segments  # pole vertices sample the middle of their segment
    uu[-1, :-1] += 0.5 / segments
    lam, phi = 2.0 * np.pi * (uu - 0.5), np.pi * (0.5 - vv)
    view = np.stack([np.sin(lam) * np.cos(phi), np.sin(phi), np.cos(lam) * np.cos(phi)], axis=-1)
    view[0] = (0.0, 1.0, 0.0)
    view[-1] = (0.0, -1.0, 0.0)
    positions = (view * np.array([1.0, 1.0, -1.0])).reshape(-1, 3) * radius  # viewer frame -> glTF (-Z forward)
    normals = -positions / radius
    texcoords = np.stack([uu, vv], axis=-1).reshape(-1, 2)
    stride = segments + 1
    triangles = []
    for i in range(rings):
        for j in range(segments):
            a, b = i * stride + j, i * stride + j + 1
            c, d = a + stride, b + stride
            if i > 0:  # (a, d, b) and (a, c, d): counter-clockwise seen from the centre
                triangles.append((a, d, b))
            if i < rings - 1:
                triangles.append((a, c, d))
    builder = _Builder()
    attributes = {"POSITION": builder.accessor(positions, "VEC3"), "NORMAL": builder.accessor(normals, "VEC3"),
                  "TEXCOORD_0": builder.accessor(texcoords, "VEC2")}
    indices = builder.accessor(np.array(triangles).reshape(-1), "SCALAR", indices=True)
    texture = builder.texture(texture_png, f"{name}_equirect", wrap_s=REPEAT, wrap_t=CLAMP_TO_EDGE)
    builder.gltf["extensionsUsed"] = ["KHR_materials_unlit"]
    material = {"name": name, "pbrMetallicRoughness": {"baseColorTexture": {"index": texture},
                                                       "metallicFactor": 0.0, "roughnessFactor": 1.0},
                "extensions": {"KHR_materials_unlit": {}}}
    return builder.finish(name, attributes, indices, material)


def material_glb(base_color_png: bytes, normal_png: bytes, orm_png: bytes, *, size: float = 1.0,
                 name: str = "material") -> bytes:
    """A ``size`` m square facing +Z with the PBR set wired as glTF expects.

    base colour (sRGB), normal (OpenGL +Y), and the ORM image used twice: metallicRoughness (G, B) and
    occlusion (R). UV (0, 0) is the image's top-left corner at the square's top-left.
    """
    s = size / 2
    positions = np.array([(-s, s, 0), (s, s, 0), (s, -s, 0), (-s, -s, 0)], np.float32)
    normals = np.tile(np.array([0.0, 0.0, 1.0], np.float32), (4, 1))
    tangents = np.tile(np.array([1.0, 0.0, 0.0, 1.0], np.float32), (4, 1))  # +u = +X; bitangent = N x T = +Y
    texcoords = np.array([(0, 0), (1, 0), (1, 1), (0, 1)], np.float32)
    builder = _Builder()
    attributes = {"POSITION": builder.accessor(positions, "VEC3"), "NORMAL": builder.accessor(normals, "VEC3"),
                  "TANGENT": builder.accessor(tangents, "VEC4"), "TEXCOORD_0": builder.accessor(texcoords, "VEC2")}
    indices = builder.accessor(np.array([0, 3, 2, 0, 2, 1]), "SCALAR", indices=True)
    base = builder.texture(base_color_png, f"{name}_base_color")
    normal = builder.texture(normal_png, f"{name}_normal")
    orm = builder.texture(orm_png, f"{name}_orm")
    material = {"name": name,
                "pbrMetallicRoughness": {"baseColorTexture": {"index": base},
                                         "metallicRoughnessTexture": {"index": orm},
                                         "metallicFactor": 1.0, "roughnessFactor": 1.0},
                "normalTexture": {"index": normal}, "occlusionTexture": {"index": orm}}
    return builder.finish(name, attributes, indices, material)
