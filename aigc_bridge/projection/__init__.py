"""Texturing a mesh from its shape: views of the meshes, back-projection into their own UV maps, fill and
padding, and the multi-view loop that drives a generator through them. numpy only: no engine, no bpy.

mesh (the validated mesh), cameras (ring / given cameras), raster (the triangle rasteriser), views (what
a camera sees: depth, normals, facing, UV; the depth image; the textured meshes rendered into a view),
texels (a mesh rasterised into its UV map), bake (a view's image into the texture, with visibility and
the seen-quality record), fill (unseen texels, island padding), loop (the multi-view texturing loop),
shapes (meshes with known geometry for tests and benchmarks).
"""
