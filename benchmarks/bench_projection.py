"""Texturing from shape, the geometry alone: time per view and for the bake, at 1K and 2K textures, for a
100k-triangle mesh; the numpy rasteriser side by side with an Embree ray caster (embreex, if installed);
and Blender's time to turn a 100k-triangle object into arrays (bpy, if installed).

The mesh is a UV sphere of 99,840 triangles whose UV map fills the texture (every texel is a surface
point: the worst case for the bake). Views are 512 x 512 (SD 1.5's size). A view's geometry is what the
loop does around one generation: render the view (depth, normals, UVs), its depth image and edge trust,
the seen-quality mask and the init image (the texture so far, filled and padded, rendered into the view),
then the back-projection of the generated image into the texture. The bake is what follows the last
view: filling unseen texels and padding the islands. The UV rasterisation (once per mesh and size) is
shown on its own. Every figure is the best of --rounds; the machine is shared, so compare the ratios.

    python benchmarks/bench_projection.py [--rounds 3] [--view 512] [--sizes 1024 2048] [--no-blender]
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

from aigc_bridge.projection.bake import TextureState, bake_view, sample_view
from aigc_bridge.projection.cameras import ring_cameras
from aigc_bridge.projection.fill import fill_unseen, pad
from aigc_bridge.projection.loop import LoopOptions, Projection, _view_request, texture_meshes
from aigc_bridge.projection.raster import boxes_from_points, edge_coefficients, rasterize
from aigc_bridge.projection.shapes import uv_sphere
from aigc_bridge.projection.texels import texel_map
from aigc_bridge.projection.views import edge_ramp, render_view


class Timing(float):
    """Seconds of wall time (the float) with the process CPU time beside it (``.cpu``): on a shared machine
    the wall time includes waiting for a core; numpy runs these on one thread, so the CPU time is about
    what an idle machine's wall time would be."""

    cpu: float

    def __str__(self) -> str:
        return f"{self * 1e3:8.0f} ms wall {self.cpu * 1e3:7.0f} ms cpu"


def best(fn, rounds: int) -> tuple[Timing, object]:
    """The best of ``rounds`` calls, wall and CPU separately."""
    times, cpu, result = [], [], None
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    timing = Timing(min(times))
    timing.cpu = min(cpu)
    return timing, result


def total(timings) -> Timing:
    out = Timing(sum(timings))
    out.cpu = sum(t.cpu for t in timings)
    return out


def numpy_visibility(mesh, camera):
    """The part of render_view an Embree ray cast would replace: which triangle each pixel sees, and where."""
    corners = camera.to_camera(mesh.positions)[mesh.triangles]
    x, y, _ = camera.project(corners)
    boxes = boxes_from_points(x, y, camera.width, camera.height)
    coef = edge_coefficients(corners, pinhole=True, ids=mesh.welded)
    volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2]))
    rx, ry = camera.pixel_rays()
    frags = rasterize(coef, boxes, rx, ry, orientation=np.sign(volume))
    depth = volume[frags.triangle] / frags.weights.sum(axis=1)
    zbuf = np.full(camera.width * camera.height, np.inf)
    np.minimum.at(zbuf, frags.pixel, depth)
    win = depth <= zbuf[frags.pixel]
    ids = np.full(camera.width * camera.height, -1)
    ids[frags.pixel[win]] = frags.triangle[win]
    return ids


def embree_rows(mesh, camera, rounds: int) -> list[tuple[str, float]] | None:
    if importlib.util.find_spec("embreex") is None:
        return None
    from embreex.mesh_construction import TriangleMesh
    from embreex.rtcore_scene import EmbreeScene

    def build():
        scene = EmbreeScene()
        TriangleMesh(scene, mesh.positions.astype(np.float32), mesh.triangles)
        return scene

    build_s, scene = best(build, rounds)
    rx, ry = camera.pixel_rays()
    gx, gy = np.meshgrid(rx, ry)
    directions = (np.stack([gx, gy, -np.ones_like(gx)], -1) @ camera.rotation).reshape(-1, 3).astype(np.float32)
    origins = np.broadcast_to(camera.position.astype(np.float32), directions.shape).copy()
    scene.run(origins, directions, output=1)  # first call warms up
    cast_s, hits = best(lambda: scene.run(origins, directions, output=1), rounds)
    ours = numpy_visibility(mesh, camera)
    agree = float((hits["primID"] == ours).mean())
    note = Timing(float("nan"))
    note.cpu = float("nan")
    return [("embree BVH build (once per mesh)", build_s), ("embree primary rays, one view", cast_s),
            (f"  (pixels where both see the same triangle: {agree:.4%})", note)]


BLENDER_SCRIPT = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import bpy
from blender_addon import mesh_arrays
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_uv_sphere_add(segments=256, ring_count=196)
obj = bpy.context.object
obj.modifiers.new("Bevel", "BEVEL").width = 0.0  # a modifier on the stack: the evaluated mesh is its own copy
times = []
for _ in range(int(sys.argv[2])):
    depsgraph = bpy.context.evaluated_depsgraph_get()
    started = time.perf_counter()
    (arrays,), _ = mesh_arrays.extract([obj], depsgraph=depsgraph)
    times.append(time.perf_counter() - started)
times.sort()
print(json.dumps({"triangles": len(arrays.triangles), "best_s": times[0], "median_s": times[len(times) // 2]}))
"""


def blender_row(rounds: int) -> dict | None:
    if importlib.util.find_spec("bpy") is None:
        return None
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "BLENDER_USER_RESOURCES": home}
        done = subprocess.run([sys.executable, "-c", BLENDER_SCRIPT, repo, str(max(rounds, 5))], env=env,
                              capture_output=True, text=True, timeout=600)
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_size(mesh, cameras, size: int, rounds: int) -> None:
    camera = cameras[1]
    print(f"\ntexture {size} x {size}")
    map_s, texels = best(lambda: texel_map(mesh, size), rounds)
    projection = Projection.prepare([mesh], cameras, size)
    options = LoopOptions("bench", texture_size=size)
    image = np.full((camera.height, camera.width, 3), 0.5, np.float32)
    # The state after the first view, so that the second has something to keep and something to repaint.
    first = render_view([mesh], cameras[0])
    bake_view(projection.states[0], sample_view(projection.texels[0], 0, first, image), repaint_below=0.7)
    state = projection.states[0]

    def geometry():
        v = render_view([mesh], camera)
        return v, edge_ramp(v)

    geo_s, (view, ramp) = best(geometry, rounds)
    req_s, _ = best(lambda: _view_request(projection, view, ramp, options, 1), rounds)

    def back_project():
        copy = TextureState(texels, state.colour_sum.copy(), state.weight_sum.copy(), state.quality.copy())
        return bake_view(copy, sample_view(texels, 0, view, image, ramp), repaint_below=0.7)

    bp_s, repainted = best(back_project, rounds)
    parts = [("render view + depth-edge trust", geo_s), ("depth image, repaint mask, init image", req_s),
             (f"back-projection ({repainted:,} texels repainted)", bp_s)]
    fill_s, filled = best(lambda: fill_unseen(mesh, texels, state.colours(), state.seen), rounds)
    pad_s, _ = best(lambda: pad(texels, filled), rounds)

    def instant(*, size, **_):
        return np.full((size[1], size[0], 3), 0.5, np.float32)

    loop_s, result = best(lambda: texture_meshes([mesh], cameras, instant, options), 1)
    print(f"  {'UV rasterisation (once per mesh and size)':<58} {map_s}  ({texels.count:,} texels)")
    for label, seconds in parts:
        print(f"  per view: {label:<48} {seconds}")
    print(f"  {'per view, all geometry':<58} {total([t for _, t in parts])}")
    print(f"  {'bake: fill unseen texels':<58} {fill_s}  ({int((~state.seen).sum()):,} unseen after one view)")
    print(f"  {'bake: pad islands':<58} {pad_s}")
    print(f"  {'bake: fill + pad':<58} {total([fill_s, pad_s])}")
    print(f"  {'whole loop, 9 views, instant generator':<58} {loop_s}  "
          f"({loop_s / len(cameras) * 1e3:.0f} ms wall per view incl. set-up and bake; "
          f"coverage {result.coverage[0]:.2%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--view", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--no-blender", action="store_true")
    args = parser.parse_args()

    mesh = uv_sphere(segments=256, rings=196)
    cameras = ring_cameras([mesh.positions], count=8, elevation_deg=15.0, top=True, width=args.view,
                           height=args.view)
    print(f"mesh: {len(mesh.triangles):,} triangles; views {args.view} x {args.view}; best of {args.rounds}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")

    camera = cameras[1]
    render_s, _ = best(lambda: render_view([mesh], camera), args.rounds)
    vis_s, _ = best(lambda: numpy_visibility(mesh, camera), args.rounds)
    rows = [("numpy rasteriser: pixel -> triangle, one view", vis_s),
            ("render_view (+ depth, positions, normals, facing, UV)", render_s)]
    embree = embree_rows(mesh, camera, args.rounds)
    missing = Timing(float("nan"))
    missing.cpu = float("nan")
    rows += embree if embree else [("embree: embreex not installed (pip install embreex to compare)", missing)]
    for label, seconds in rows:
        print(f"  {label:<58} {seconds}" if seconds == seconds else f"  {label}")
    if embree:
        print(f"  numpy / embree, pixel -> triangle per view: {vis_s / embree[1][1]:.1f}x wall, "
              f"{vis_s.cpu / embree[1][1].cpu:.1f}x cpu")

    for size in args.sizes:
        bench_size(mesh, cameras, size, args.rounds)

    if not args.no_blender:
        row = blender_row(args.rounds)
        if row is None:
            print("\nBlender: bpy not installed")
        else:
            print(f"\nBlender: evaluated mesh -> arrays, {row['triangles']:,} triangles: best "
                  f"{row['best_s'] * 1e3:.0f} ms, median {row['median_s'] * 1e3:.0f} ms (goal <= 200 ms)")


if __name__ == "__main__":
    main()
