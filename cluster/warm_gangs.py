"""Which waiting video a free gang takes: preferably one of the shape and LoRA it rendered last.

A gang that renders the shape it rendered last reuses what it holds for it (compiled graphs of that shape, the
attention buffers' sizes; with a LoRA, the weights already in its adapter slot), so a mixed manifest costs what a
sorted one does.  The choice is made among the videos waiting for a gang: the driver keeps ``WAITING_PER_GANG``
videos per gang waiting beyond those it renders (a bounded window of the manifest), so a free gang has a few
shapes to choose from, and the choice never leaves a gang idle while a video waits:

1. a video passed over ``MAX_PASSES`` times takes the first free gang (no video waits for ever behind others of
   a busier shape);
2. each waiting video, oldest first, takes a free gang whose last video had its shape;
3. every free gang left takes the oldest video left.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..types import RowInputs

MAX_PASSES = 4  # younger videos served before a waiting one, past which it takes the next free gang
WAITING_PER_GANG = 3  # videos the driver keeps waiting per gang, beside those rendering and being stored


def warm_key(row: RowInputs) -> tuple:
    """What a gang keeps warm from one video to the next: the sampler values that size its tensors and graphs
    (frames, height, width) and the LoRA in its adapters.  Steps size nothing a gang keeps (the timestep is one
    value of the graphs' input), so videos of other step counts share their warm gang."""
    sized = ("num_frames", "height", "width")  # None: the model's default, as a value left out
    sampler = tuple(sorted((k, v) for k, v in row.sampler.items() if k in sized and v is not None))
    return sampler, row.extra.get("lora") or ""


@dataclass(eq=False)
class Waiter:
    """A video waiting for a gang."""

    key: tuple | None
    gang: object = None  # the gang it was given
    passed: int = 0  # younger videos served before it


def assign(free: list, waiters: list[Waiter], last_key: dict) -> list[tuple[Waiter, object]]:
    """Pairs (waiter, gang) for the free gangs (``last_key``: the key each gang's last video had); the pairs'
    gangs leave ``free``, their waiters get their gang, and every waiter older than one served counts a pass."""
    pairs = []
    waiting = [w for w in waiters if w.gang is None]

    def give(waiter: Waiter, gang) -> None:
        free.remove(gang)
        waiter.gang = gang
        last_key[id(gang)] = waiter.key
        pairs.append((waiter, gang))
        for older in waiting[: waiting.index(waiter)]:
            if older.gang is None:
                older.passed += 1

    for waiter in waiting:  # 1. overdue: the first free gang
        if free and waiter.passed >= MAX_PASSES:
            give(waiter, free[0])
    for waiter in waiting:  # 2. a gang warm for its shape
        if free and waiter.gang is None:
            gang = next((g for g in free if waiter.key is not None and last_key.get(id(g)) == waiter.key), None)
            if gang is not None:
                give(waiter, gang)
    for waiter in waiting:  # 3. no gang idles while a video waits
        if free and waiter.gang is None:
            give(waiter, free[0])
    return pairs
