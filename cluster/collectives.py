"""Collectives with the properties the cache decision needs: every rank gets bit-identical results.

The indicator sums of the cache engine are reduced in fixed point: each float64 sum is scaled by 2^20, rounded
to int64 and summed with one all-reduce.  Integer addition is exact and associative, so whatever order the
backend adds the ranks' contributions in, every rank receives the same integers, and the policy, a pure function
of them, makes the same decision everywhere.  (Two ranks reducing floats can differ in the last bit; a threshold
test on such floats can then split the gang, and a rank that skips a block while another runs it hangs both.)
Resolution 2^-20 ~ 1e-6 of the L1 sums (themselves sums over thousands of values) is far below any threshold;
the range, 2^43 ~ 8.8e12 per sum, is far above them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

FIXED_POINT_SCALE = 2.0**20


def backend_device(group=None) -> torch.device | None:
    """The device a collective's tensors must live on: NCCL takes only CUDA tensors (this rank's device), gloo
    takes CPU or CUDA.  ``None``: whatever device the tensor is on will do."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def to_fixed_point(vector: torch.Tensor) -> torch.Tensor:
    """A rank's float sums as the int64 it contributes to the reduce."""
    return torch.round(vector.double() * FIXED_POINT_SCALE).to(torch.int64)


def from_fixed_point(ints: torch.Tensor) -> torch.Tensor:
    """The reduced integers as the float64 the policy decides on (a pure function: same bits in, same bits out)."""
    return ints.double() / FIXED_POINT_SCALE


def fixed_point_all_reduce(vector: torch.Tensor, group=None) -> torch.Tensor:
    """Sum a float vector across the group exactly (in int64 fixed point); returns float64, same on every rank,
    on the vector's own device (the engine's sums may sit on the CPU while the backend is NCCL)."""
    ints = to_fixed_point(vector)
    ints = ints.to(backend_device(group) or ints.device)
    dist.all_reduce(ints, op=dist.ReduceOp.SUM, group=group)
    return from_fixed_point(ints.to(vector.device))


def make_cache_reduce(group=None):
    """The ``reduce`` for ditfarm.cache.enable under sequence parallelism: one all-reduce per step."""

    def reduce(vector: torch.Tensor) -> torch.Tensor:
        return fixed_point_all_reduce(vector, group)

    return reduce


def all_gather_sequence(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """Concatenate every rank's shard along ``dim`` (the token dimension), in rank order."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)
