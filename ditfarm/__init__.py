"""ditfarm: render many videos with video diffusion transformers, cheaper.

The public face is small on purpose:

    import ditfarm
    pipe = ditfarm.load_pipeline("tiny")
    frames = pipe.generate("red circle moving left on blue background", seed=0)   # uint8 (T, H, W, 3)
    ditfarm.write_mp4(frames, "out.mp4", upscale=8)

    for row in ditfarm.render(["red circle moving left on blue background"], out="s3://bucket/run"):
        print(row["status"], row["uri"])          # rows as videos finish; ditfarm.read_results(out) later

Names are imported lazily so that ``import ditfarm`` (and ``ditfarm --help``) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_pipeline": "ditfarm.pipelines.loading",
    "write_mp4": "ditfarm.pipelines.video_io",
    "read_mp4": "ditfarm.pipelines.video_io",
    "render": "ditfarm.jobs.api",
    "read_results": "ditfarm.jobs.results",
    "render_manifest": "ditfarm.jobs.driver",
    "RenderSettings": "ditfarm.types",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ditfarm' has no attribute {name!r}")
