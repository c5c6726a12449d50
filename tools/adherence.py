"""Does a rendered ``tiny`` video show what its prompt says?  An automatic judge of three attributes.

- background colour: the background of our scenes depends on x only (solid or horizontal gradient), so the
  median over (t, y) of each pixel column estimates it robustly while shapes move through; its left quarter
  (the pure colour of a gradient) is matched to the nearest palette colour;
- foreground colour: pixels far from that background are foreground; they are labelled with their nearest
  palette colour, and the prompt's object colours must be the most common foreground labels (the top one for one
  object, the top two for two), each covering a shape-sized area per frame;
- direction: the centroid track of each object's pixels, fitted by a line over the frames, must move mostly
  along the named axis, the named way, by at least a few pixels.

``ditfarm eval-adherence --n 60`` renders held-out prompt/seed pairs (prompts that the
training split never contains) and prints the rate at which each attribute is right.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..pipelines.tiny.scenes import render_scene, sample_scene_spec
from ..pipelines.tiny.vocab import COLOURS, SceneSpec, parse_prompt

PALETTE_NAMES = tuple(COLOURS)
PALETTE = np.asarray([COLOURS[c] for c in PALETTE_NAMES], dtype=np.float32)
FOREGROUND_DISTANCE = 0.3  # RGB distance (frames in [0, 1]) from the background that makes a pixel foreground
MIN_OBJECT_PIXELS_PER_FRAME = 8  # the smallest shape the generator draws covers about 30 px at 32x32
MIN_TRAVEL_PX_PER_FRAME = 0.5


@dataclass
class AdherenceResult:
    prompt: str
    seed: int
    foreground_ok: bool
    direction_ok: bool
    background_ok: bool
    background_seen: str
    foreground_seen: list[str]  # colours of shape-sized foreground areas, most common first
    motion_seen: list[list[float]]  # per object of the prompt: fitted (dy, dx) over the whole video, in pixels


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into PALETTE of the nearest colour of each (..., 3) pixel."""
    return np.argmin(((rgb[..., None, :] - PALETTE) ** 2).sum(-1), axis=-1)


def _direction_of(displacement: np.ndarray, frames: int) -> str | None:
    dy, dx = displacement
    if max(abs(dy), abs(dx)) < MIN_TRAVEL_PX_PER_FRAME * (frames - 1):
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def judge(frames: np.ndarray, prompt: str | SceneSpec, seed: int = -1) -> AdherenceResult:
    """Judge uint8 (T, H, W, 3) frames against a prompt of the tiny grammar."""
    spec = prompt if isinstance(prompt, SceneSpec) else parse_prompt(prompt)
    video = np.asarray(frames, dtype=np.float32) / 255.0
    t, h, w, _ = video.shape
    background = np.median(video.transpose(2, 0, 1, 3).reshape(w, t * h, 3), axis=1)  # (W, 3)
    bg_name = PALETTE_NAMES[int(nearest_colour(np.median(background[: max(1, w // 4)], axis=0)))]
    foreground = np.linalg.norm(video - background[None, None], axis=-1) > FOREGROUND_DISTANCE
    labels = nearest_colour(video)

    counts = np.bincount(labels[foreground], minlength=len(PALETTE_NAMES))
    min_pixels = MIN_OBJECT_PIXELS_PER_FRAME * t * (h * w) / (32 * 32)
    ranked = [PALETTE_NAMES[i] for i in np.argsort(-counts, kind="stable") if counts[i] >= min_pixels]
    top = ranked[: len(spec.objects)]
    colours_ok, directions_ok, motions = [], [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for obj in spec.objects:
        mask = foreground & (labels == PALETTE_NAMES.index(obj.colour))
        colours_ok.append(obj.colour in top)
        present = [k for k in range(t) if mask[k].sum() >= 2]
        if len(present) < max(2, t // 2):
            motions.append([0.0, 0.0])
            directions_ok.append(False)
            continue
        cy = np.array([yy[mask[k]].mean() for k in present])
        cx = np.array([xx[mask[k]].mean() for k in present])
        slope = np.polyfit(np.array(present, dtype=np.float64), np.stack([cy, cx], axis=1), 1)[0]
        displacement = slope * (t - 1)
        motions.append([float(displacement[0]), float(displacement[1])])
        directions_ok.append(_direction_of(displacement, t) == obj.direction)
    return AdherenceResult(
        prompt=spec.prompt,
        seed=seed,
        foreground_ok=all(colours_ok),
        direction_ok=all(directions_ok),
        background_ok=bg_name == spec.background,
        background_seen=bg_name,
        foreground_seen=ranked,
        motion_seen=motions,
    )


def held_out_cases(n: int, seed: int = 12345, two_object_prob: float = 0.0) -> list[tuple[SceneSpec, int]]:
    """n (scene, seed) pairs whose prompts belong to the held-out split (never seen in training)."""
    rng = np.random.default_rng(seed)
    return [(sample_scene_spec(rng, two_object_prob=two_object_prob, held_out=True), 10_000 + i) for i in range(n)]


def summarise(results: list[AdherenceResult]) -> dict:
    n = max(1, len(results))
    return {
        "videos": len(results),
        "foreground_colour": sum(r.foreground_ok for r in results) / n,
        "direction": sum(r.direction_ok for r in results) / n,
        "background_colour": sum(r.background_ok for r in results) / n,
    }


def evaluate(pipe, cases, **sampler) -> list[AdherenceResult]:
    return [judge(pipe.generate(spec.prompt, seed=seed, **sampler), spec, seed) for spec, seed in cases]


def judge_ground_truth(cases, frames: int = 8, height: int = 32, width: int = 32) -> list[AdherenceResult]:
    """The judge applied to the data generator's own videos: the ceiling the model is measured against."""
    out = []
    for spec, seed in cases:
        video = render_scene(spec, np.random.default_rng(seed), frames, height, width).frames
        out.append(judge((video * 255).round().astype(np.uint8), spec, seed))
    return out


def run_command(args) -> int:

    from ..pipelines.loading import load_pipeline  # deferred: torch

    pipe = load_pipeline(args.model)
    cases = held_out_cases(args.n, args.seed, args.two_object_prob)
    start = time.time()
    results = evaluate(pipe, cases, steps=args.steps, guidance_scale=args.guidance_scale)
    summary = summarise(results)
    summary.update(
        model=str(args.model),
        steps=args.steps or pipe.defaults.steps,
        guidance_scale=args.guidance_scale if args.guidance_scale is not None else pipe.defaults.guidance_scale,
        two_object_prob=args.two_object_prob,
        seconds=round(time.time() - start, 1),
        ground_truth=summarise(judge_ground_truth(cases)),
    )
    print("| attribute | right (model) | right (generator's own videos) |\n|---|---|---|")
    for key in ("foreground_colour", "direction", "background_colour"):
        print(f"| {key} | {summary[key]:.1%} | {summary['ground_truth'][key]:.1%} |")
    print(f"{summary['videos']} held-out videos, {summary['steps']} steps, CFG {summary['guidance_scale']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "results": [asdict(r) for r in results]}, indent=2))
    return 0
