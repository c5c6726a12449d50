"""``--lora`` / ``--lora-scale`` for the commands that measure a model for its caches (``profile``, ``calibrate``,
``train-router``): a profile, calibration or router measured with a LoRA applied records it in its model identity,
and fits the rows that render with that LoRA (``cache/lora_check.py``)."""

from __future__ import annotations


def add_lora_options(parser) -> None:
    parser.add_argument("--lora", help="measure with this LoRA applied (a path or s3:// URI): for rows that use it")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="the LoRA's scale (default 1)")


def apply_lora(pipe, args) -> str | None:
    """Apply ``args.lora`` at ``args.lora_scale`` to ``pipe``; the error message naming it, or None."""
    if not getattr(args, "lora", None):
        return None
    try:
        pipe.use_lora(args.lora, args.lora_scale)
    except ValueError as err:
        return str(err)
    return None
