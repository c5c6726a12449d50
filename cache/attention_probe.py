"""How much attention each token receives in a block's self-attention, without an N x N matrix.

ProfilingDiT scores token i by the mean attention it receives, a_i = (1/N) sum_j softmax_j(q_j . k / sqrt(d))_i.
We compute it for a sample of queries (all of them when N is small) in chunks, so memory stays at chunk x N per
head, and average over heads.  The probe wraps the block's own attention processor: it recomputes q and k the way
diffusers' WanAttnProcessor does (projections, RMS norms, rotary embedding) and then calls the original processor,
so the block's output is unchanged (the model's adapter computes q and k, ``recording_processor``).
"""

from __future__ import annotations

import torch

from ..pipelines.adapters import adapter_for


def received_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    max_queries: int = 2048,
    chunk: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean attention received per key token (B, N), from (B, N, heads, d) queries and keys."""
    b, n, h, d = query.shape
    if n > max_queries:
        idx = torch.randperm(n, generator=generator)[:max_queries].to(query.device)
        query = query[:, idx]
    q = query.transpose(1, 2).float()  # (B, h, Nq, d)
    k = key.transpose(1, 2).float()  # (B, h, N, d)
    received = torch.zeros(b, n, device=query.device)
    for start in range(0, q.shape[2], chunk):
        scores = torch.softmax(q[:, :, start : start + chunk] @ k.transpose(-1, -2) / d**0.5, dim=-1)
        received += scores.sum(dim=(1, 2))  # over heads and queries
    return received / (h * q.shape[2])


class AttentionProbe:
    """Records the attention one block's self-attention gives each token, while ``enabled``."""

    def __init__(self, original, max_queries: int = 2048):
        self.original = original  # the self-attention's own processor, restored by detach_probes
        self.max_queries = max_queries
        self.enabled = False
        self.records: list[torch.Tensor] = []  # (N,) per recorded call, batch element 0
        self.generator = torch.Generator().manual_seed(0)

    def record(self, query: torch.Tensor, key: torch.Tensor) -> None:
        self.records.append(received_attention(query, key, self.max_queries, generator=self.generator)[0].cpu())


def attach_probes(transformer, max_queries: int = 2048) -> list[AttentionProbe]:
    adapter = adapter_for(transformer)
    probes = []
    for attention in adapter.self_attentions():
        probe = AttentionProbe(attention.processor, max_queries)
        attention.set_processor(adapter.recording_processor(probe.original, probe.record, lambda p=probe: p.enabled))
        probes.append(probe)
    return probes


def detach_probes(transformer, probes: list[AttentionProbe]) -> None:
    for attention, probe in zip(adapter_for(transformer).self_attentions(), probes):
        attention.set_processor(probe.original)
