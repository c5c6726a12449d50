"""CFG parallelism: a gang of 2 x U ranks runs the two classifier-free-guidance passes at the same time.

Ranks 0..U-1 (the "cond" half) run the conditional pass and ranks U..2U-1 (the "uncond" half) the unconditional
one, each half as a Ulysses group of degree U.  After each step's transformer call, rank r and rank r + U
exchange their (gathered, full-size) predictions with one all-gather in a pair group, so every rank holds both,
combines them with the guidance scale and takes the same scheduler step: the latents stay identical on every rank,
and rank 0 decodes them as usual.

Caches: each branch's state lives on the ranks that run it, since a rank only ever enters its own branch's cache
context.  The decision stays one collective per step for the whole gang: each rank puts its branch's indicator
sums in its half's slot of a vector twice as long (zeros in the other slot) and the fixed-point all-reduce over
the gang hands every rank both branches' sums, summed over each half's U shards, as identical integers.  A rank
decides its branch's next mask from its own slot, so the ranks of a half decide alike by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .collectives import backend_device, fixed_point_all_reduce

BRANCHES = ("cond", "uncond")


@dataclass
class CfgGroups:
    half: int  # 0: the cond half, 1: the uncond half
    half_size: int  # U, the Ulysses degree inside each half
    branch_group: object  # this rank's half (sequence parallelism runs over it)
    pair_group: object  # {r, r + U}: this rank and its counterpart in the other half

    @property
    def branch(self) -> str:
        return BRANCHES[self.half]


def make_cfg_groups(timeout: timedelta) -> CfgGroups:
    """Every rank creates every group, in the same order (torch.distributed requires it)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world < 2 or world % 2:
        raise ValueError(f"CFG parallelism needs an even gang of at least 2 ranks, got {world}")
    u = world // 2
    halves = [dist.new_group(list(range(h * u, (h + 1) * u)), timeout=timeout) for h in (0, 1)]
    pairs = [dist.new_group([r, r + u], timeout=timeout) for r in range(u)]
    half = rank // u
    return CfgGroups(half=half, half_size=u, branch_group=halves[half], pair_group=pairs[rank % u])


class CfgSplit:
    """The loop's GuidanceSplit (pipelines.denoise): this rank's branch, and both branches' predictions."""

    def __init__(self, groups: CfgGroups):
        self.groups = groups
        self.branch = groups.branch

    def exchange(self, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = backend_device(self.groups.pair_group)
        mine = prediction.contiguous().to(device) if device is not None else prediction.contiguous()
        parts = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(parts, mine, group=self.groups.pair_group)  # group rank 0 is the cond half's
        return parts[0].to(prediction.device), parts[1].to(prediction.device)


def make_cfg_cache_reduce(groups: CfgGroups, group=None):
    """The cache's ``reduce`` under CFG parallelism: one fixed-point all-reduce over the gang per step; each rank
    gets back its own half's slot (the other slot, identical everywhere too, is the other branch's)."""

    def reduce(vector: torch.Tensor) -> torch.Tensor:
        n = vector.numel()
        both = torch.zeros(2 * n, dtype=vector.dtype, device=vector.device)
        both[groups.half * n : (groups.half + 1) * n] = vector
        total = fixed_point_all_reduce(both, group)
        return total[groups.half * n : (groups.half + 1) * n]

    return reduce
