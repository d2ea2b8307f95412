"""Assets: what a generated image becomes on disk (writers now; PBR maps, panoramas and provenance later)."""
