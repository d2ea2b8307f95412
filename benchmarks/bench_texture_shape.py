"""Texture from Shape end to end on the shipped texture-mini: time per view (generation and the view's
geometry and back-projection) and for the bake (fill, padding, PNG) at 1K and 2K textures for a 100k-triangle
mesh, through the same service the sidecar runs; and Blender's side of sending that mesh: extracting the
evaluated mesh (foreach_get), building the request, encoding the frames, and the round trip until a real
sidecar has validated it (its first progress message), goal <= 0.2 s for the Blender side.

    python benchmarks/bench_texture_shape.py [--views 4] [--view-size 128] [--sizes 1024 2048] [--no-blender]

Wall and CPU time of one run each (the machine is shared: compare the ratios within one run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from aigc_bridge.project_request import ArrayInput, MeshInput, ProjectRequest, ViewsInput
from aigc_bridge.projection.shapes import uv_sphere

BLENDER_SIDE = r'''
import json, sys, time
import bpy
import numpy as np
from aigc_bridge.client import Client
from aigc_bridge.protocol import Codec, project_content
from aigc_bridge.project_request import ProjectRequest, ViewsInput
from blender_addon import mesh_arrays
from blender_addon.shape import to_mesh_input
connection = sys.argv[1]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_uv_sphere_add(segments=256, ring_count=196)
obj = bpy.context.object
dg = bpy.context.evaluated_depsgraph_get()
mesh_arrays.extract([obj], depsgraph=dg)  # warm-up (first evaluation)
out = {}
t0 = time.perf_counter()
(arrays,), _ = mesh_arrays.extract([obj], depsgraph=dg)
t1 = time.perf_counter()
request = ProjectRequest("red brick wall", (to_mesh_input(arrays),), views=ViewsInput(count=1, top=False, size=128))
t2 = time.perf_counter()
content, buffers = project_content(request)
frames = Codec(None).encode("project", content, request_key="bench", buffers=buffers)
t3 = time.perf_counter()
out.update(triangles=len(arrays.triangles), extract_s=t1 - t0, request_s=t2 - t1, encode_s=t3 - t2,
           bytes=sum(len(f) for f in frames))
with Client.from_connection_file(connection, timeout=60) as client:
    t4 = time.perf_counter()
    job = client.submit_project(request)
    t5 = time.perf_counter()
    while not job.poll() and not job.done:
        client.poll(0.01)
    t6 = time.perf_counter()
    job.cancel()
    client.poll(0.2)
out.update(submit_s=t5 - t4, validated_s=t6 - t4, blender_side_s=(t1 - t0) + (t2 - t1) + (t5 - t4))
print(json.dumps(out))
'''


def sphere_request(views: int, view_size: int, size: int) -> ProjectRequest:
    mesh = uv_sphere(segments=256, rings=196)  # 99,840 triangles, its UV map fills the texture

    def arr(a, dtype):
        a = np.ascontiguousarray(a, dtype)
        return ArrayInput(dtype, a.shape, a.tobytes())

    return ProjectRequest("red brick wall", (MeshInput("sphere", arr(mesh.positions, "float32"),
                                                       arr(mesh.triangles, "int32"), arr(mesh.uvs, "float32")),),
                          texture_size=size, views=ViewsInput(count=views, top=True, size=view_size))


def engine_side(args) -> None:
    from aigc_bridge.engine import Pipeline
    from aigc_bridge.models import default_model_dir
    from aigc_bridge.projection import service

    pipe = Pipeline.load(default_model_dir())
    for size in args.sizes:
        request = sphere_request(args.views, args.view_size, size)
        c0, t0 = time.process_time(), time.perf_counter()
        prepared = service.prepare(request, pipe)
        baked = service.run(prepared, pipe)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        views = baked.result.views
        gen = [v.generate_s for v in views if v.generated]
        geo = [v.bake_s for v in views]
        rest = wall - sum(gen) - sum(geo)
        print(f"texture {size}: {request.triangle_count:,} triangles, {len(views)} views of {args.view_size} px, "
              f"mode {baked.mode}: total {wall:.1f} s wall ({cpu:.1f} s cpu); per view: generate "
              f"{sum(gen) / max(len(gen), 1):.2f} s, back-projection {sum(geo) / len(geo):.2f} s; "
              f"views' rendering, masks, init images, UV rasterisation, fill, padding and PNG {rest:.1f} s; "
              f"coverage {baked.result.coverage[0]:.1%}")


def blender_side() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BLENDER_USER_RESOURCES": os.path.join(tmp, "user"),
               "MESA_SHADER_CACHE_DIR": os.path.join(tmp, "mesa")}
        connection = os.path.join(tmp, "sidecar.json")
        server = subprocess.Popen([sys.executable, "-m", "aigc_bridge.cli", "serve", "--bind", "tcp://127.0.0.1:0",
                                   "--connection-file", connection], stdout=subprocess.PIPE, text=True, env=env)
        try:
            server.stdout.readline()  # "listening on ..."
            run = subprocess.run([sys.executable, "-c", BLENDER_SIDE, connection], capture_output=True, text=True,
                                 env=env, timeout=600)
            if run.returncode:
                print(run.stderr[-2000:])
                return
            r = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"Blender side, {r['triangles']:,} triangles: extract {r['extract_s'] * 1e3:.0f} ms, request "
                  f"{r['request_s'] * 1e3:.0f} ms, submit (frames to zmq) {r['submit_s'] * 1e3:.0f} ms: "
                  f"{r['blender_side_s'] * 1e3:.0f} ms in all (goal 200 ms); {r['bytes'] / 1e6:.1f} MB; "
                  f"sidecar validated it {r['validated_s'] * 1e3:.0f} ms after submit")
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--view-size", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--no-blender", action="store_true")
    parser.add_argument("--no-engine", action="store_true")
    args = parser.parse_args()
    if not args.no_blender and importlib.util.find_spec("bpy") is not None:
        blender_side()
    if not args.no_engine:
        engine_side(args)


if __name__ == "__main__":
    main()
