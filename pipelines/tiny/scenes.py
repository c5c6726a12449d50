"""Synthetic training videos for ``tiny``: coloured shapes moving over a static background.

Every video comes with its per-frame foreground mask, which training ignores but the cache profiler's mask check
and the adherence evaluator use as ground truth.  Rendering is plain NumPy and vectorised over pixels, so a
training batch costs milliseconds next to the model's step.

A fixed eighth of all prompts (chosen by a stable hash of the canonical sentence) is held out of training, so
the adherence benchmark can measure the model on prompts it has never seen.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .vocab import COLOURS, DIRECTIONS, SHAPES, ObjectSpec, SceneSpec

HELD_OUT_MODULUS = 8


@dataclass
class SceneVideo:
    """A rendered scene: frames in [0, 1] (T, H, W, 3) float32 and the foreground masks (T, H, W) bool."""

    frames: np.ndarray
    masks: np.ndarray
    object_masks: np.ndarray  # (objects, T, H, W) bool, one per object, front object last
    spec: SceneSpec


def is_held_out(spec: SceneSpec) -> bool:
    """Whether this scene's prompt belongs to the evaluation split that training never sees."""
    return zlib.crc32(spec.prompt.encode()) % HELD_OUT_MODULUS == 0


def sample_scene_spec(rng: np.random.Generator, two_object_prob: float = 0.25, held_out: bool = False) -> SceneSpec:
    """Draw a random scene from the training split (or, with held_out=True, from the evaluation split)."""
    colours = list(COLOURS)
    while True:
        n_obj = 2 if rng.random() < two_object_prob else 1
        picked = rng.choice(len(colours), size=n_obj + 1, replace=False)
        objects = tuple(
            ObjectSpec(colours[picked[i]], SHAPES[rng.integers(len(SHAPES))], list(DIRECTIONS)[rng.integers(4)])
            for i in range(n_obj)
        )
        spec = SceneSpec(objects, background=colours[picked[-1]], gradient=bool(rng.random() < 0.5))
        if is_held_out(spec) == held_out:
            return spec


def background_image(spec: SceneSpec, height: int, width: int) -> np.ndarray:
    """The static background (H, W, 3): a solid colour, or a horizontal gradient from the colour towards grey."""
    colour = np.asarray(COLOURS[spec.background], dtype=np.float32)
    image = np.broadcast_to(colour, (height, width, 3)).copy()
    if spec.gradient:
        ramp = (np.arange(width, dtype=np.float32) / max(width - 1, 1))[None, :, None]
        image = (1 - 0.6 * ramp) * colour + 0.6 * ramp * 0.5
    return image.astype(np.float32)


def shape_mask(shape: str, cy: np.ndarray, cx: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    """Masks (T, H, W) of one shape centred at (cy[t], cx[t])."""
    yy = np.arange(height, dtype=np.float32)[None, :, None] + 0.5 - cy[:, None, None]
    xx = np.arange(width, dtype=np.float32)[None, None, :] + 0.5 - cx[:, None, None]
    if shape == "circle":
        return yy**2 + xx**2 <= radius**2
    if shape == "square":
        half = 0.85 * radius
        return (np.abs(yy) <= half) & (np.abs(xx) <= half)
    if shape == "triangle":  # apex up, base below the centre
        depth = (yy + radius) / (1.8 * radius)
        return (depth >= 0) & (depth <= 1) & (np.abs(xx) <= depth * 1.05 * radius)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _track(obj: ObjectSpec, rng: np.random.Generator, frames: int, height: int, width: int, radius: float):
    scale = min(height, width) / 32.0
    speed = rng.uniform(1.5, 2.2) * scale
    travel = speed * (frames - 1)
    dy, dx = DIRECTIONS[obj.direction]
    t = np.arange(frames, dtype=np.float32)

    def axis(d: int, size: int) -> np.ndarray:
        if d == 0:
            return np.full(frames, rng.uniform(radius, size - radius), dtype=np.float32)
        lo, hi = radius, size - radius - travel
        start = rng.uniform(lo, max(lo, hi))
        return (start + t * speed) if d > 0 else (size - start - t * speed)

    return axis(dy, height), axis(dx, width)


def render_scene(
    spec: SceneSpec, rng: np.random.Generator, frames: int = 8, height: int = 32, width: int = 32
) -> SceneVideo:
    """Render a scene; sizes, speeds and positions are drawn from rng (objects kept apart where possible)."""
    scale = min(height, width) / 32.0
    for _attempt in range(20):
        radii = [rng.uniform(4.0, 6.0) * scale for _ in spec.objects]
        tracks = [_track(o, rng, frames, height, width, r) for o, r in zip(spec.objects, radii)]
        if len(tracks) < 2:
            break
        (ay, ax), (by, bx) = tracks
        if np.min(np.hypot(ay - by, ax - bx)) > radii[0] + radii[1] + 1:
            break
    video = np.broadcast_to(background_image(spec, height, width), (frames, height, width, 3)).copy()
    object_masks = []
    for obj, radius, (cy, cx) in zip(spec.objects, radii, tracks):
        mask = shape_mask(obj.shape, cy, cx, radius, height, width)
        video[mask] = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        object_masks.append(mask)
    object_masks = np.stack(object_masks)
    return SceneVideo(video, object_masks.any(axis=0), object_masks, spec)


def training_batch(rng: np.random.Generator, batch: int, frames: int, height: int, width: int, with_masks=False):
    """A batch of training-split scenes: (videos (B, 3, T, H, W) in [-1, 1], prompts[, masks (B, T, H, W)])."""
    specs = [sample_scene_spec(rng) for _ in range(batch)]
    scenes = [render_scene(s, rng, frames, height, width) for s in specs]
    videos = np.stack([scene.frames for scene in scenes]).transpose(0, 4, 1, 2, 3) * 2.0 - 1.0
    prompts = [s.prompt for s in specs]
    if with_masks:
        return videos, prompts, np.stack([scene.masks for scene in scenes])
    return videos, prompts
