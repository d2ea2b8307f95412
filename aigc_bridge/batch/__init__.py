"""Headless batch generation (docs/batch.md): a TOML job file -> output sets in a folder, with a manifest.

One module per job: ``jobfile`` (read and check the whole file), ``names`` (output names that stay inside
--out), ``templates`` (variables), ``plan`` (units and content keys), ``render`` (engine -> files in memory),
``backends`` / ``ray_backend`` (where images are made), ``outdir`` and ``manifest`` (what is on disk),
``runner`` (the loop), ``blend`` + ``blend_apply`` (the optional Blender step). Nothing here imports bpy,
Ray or onnxruntime until a run needs them.
"""

from .jobfile import load_job_file, parse_job_file
from .runner import BatchOptions, BatchSummary, run_batch
from .spec import Job, JobFile, JobFileError, Problem

__all__ = ["BatchOptions", "BatchSummary", "Job", "JobFile", "JobFileError", "Problem", "load_job_file",
           "parse_job_file", "run_batch"]
