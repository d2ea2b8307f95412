"""Evaluation of text-to-texture models (texture-mini's model card numbers), with the runtime only:
colour adherence, pattern adherence, tileability and diversity on prompts kept out of training.

``run_eval(model_dir) -> dict`` and ``format_report(dict) -> str``; ``main(argv)`` is the
``aigc-bridge eval --model DIR`` command (also ``python -m aigc_bridge.evaluation.run``).
"""

from .run import eval_prompts, format_report, main, run_eval

__all__ = ["eval_prompts", "format_report", "main", "run_eval"]
