"""Frames the shipped tiny model renders with every cache policy, one rank and two, kept as the reference that
moving code must not change.

    python tests/reference_frames.py        # rewrite tests/data/reference_frames.npz (only on purpose)

The test (tests/test_reference_frames.py) renders the same videos and compares them with the stored ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REFERENCE_FILE = Path(__file__).parent / "data" / "reference_frames.npz"
PROMPT = "red circle moving left on blue background"
SEED = 3
WORLDS = (1, 2)


def render_each_policy(rank: int, world: int) -> dict:
    """On one rank of a local gang: every policy's video (frames on rank 0) and compute masks, at the knobs the
    references were made with: ditfarm's global defaults (tiny's card now chooses its own, which the same code
    renders at other knobs)."""
    from ditfarm.cache.presets import DEFAULT_KNOBS
    from ditfarm.choices import POLICIES
    from ditfarm.cluster.render_sp import render_on_rank

    rendered = {}
    for policy in POLICIES:
        result = render_on_rank(rank, world, "tiny", PROMPT, SEED, {}, policy, DEFAULT_KNOBS.get(policy))
        rendered[policy] = {"frames": result.frames, "masks": result.masks}
    return rendered


def render_all() -> dict[tuple[int, str], dict]:
    """{(world, policy): {"frames", "masks"}} rendered now, rank 0's frames for each gang size."""
    from ditfarm.cluster.local import run_local_gang

    renders = {}
    for world in WORLDS:
        ranks = run_local_gang(render_each_policy, world, timeout_s=120.0)
        for policy, result in ranks[0].items():
            renders[(world, policy)] = result
            for other in ranks[1:]:
                assert other[policy]["masks"] == result["masks"], f"ranks disagree on {policy} at sp {world}"
    return renders


def key(world: int, policy: str) -> str:
    return f"sp{world}_{policy}"


def save(renders: dict, path: Path = REFERENCE_FILE) -> None:
    arrays = {}
    for (world, policy), result in renders.items():
        arrays[key(world, policy) + "_frames"] = result["frames"]
        arrays[key(world, policy) + "_masks"] = np.array(json.dumps(result["masks"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load(path: Path = REFERENCE_FILE) -> dict[tuple[int, str], dict]:
    from ditfarm.choices import POLICIES

    stored = np.load(path)
    return {
        (world, policy): {
            "frames": stored[key(world, policy) + "_frames"],
            "masks": json.loads(str(stored[key(world, policy) + "_masks"])),
        }
        for world in WORLDS
        for policy in POLICIES
    }


if __name__ == "__main__":
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    save(render_all())
    print(f"wrote {REFERENCE_FILE}", file=sys.stderr)
