"""The ``tiny`` model's text encoder: one fixed vector per word plus one per position.

Wan's cross-attention is blind to token order, so the position vectors are what tells "red circle ... on blue
background" from "blue circle ... on red background".  The tables are drawn once from a fixed seed and then
saved with the model, so loading never depends on the random number generator of the installed torch.
"""

from __future__ import annotations

import torch
from torch import nn

from .vocab import VOCABULARY, tokenize


class WordTextEncoder(nn.Module):
    """Maps prompts of the tiny vocabulary to (batch, max_tokens, dim) embeddings; the empty prompt is all zeros."""

    def __init__(self, dim: int = 32, max_tokens: int = 16, seed: int = 20261122):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.max_tokens = max_tokens
        self.register_buffer("word_table", torch.randn(len(VOCABULARY), dim, generator=gen))
        self.register_buffer("position_table", torch.randn(max_tokens, dim, generator=gen) * 0.5)
        self.index = {w: i for i, w in enumerate(VOCABULARY)}

    @property
    def dtype(self) -> torch.dtype:  # diffusers' DiffusionPipeline.to() asks every component
        return self.word_table.dtype

    @property
    def device(self) -> torch.device:
        return self.word_table.device

    @property
    def dim(self) -> int:
        return self.word_table.shape[1]

    def token_ids(self, prompt: str) -> list[int]:
        ids = [self.index[w] for w in tokenize(prompt)]
        if len(ids) > self.max_tokens:
            raise ValueError(f"prompt {prompt!r} has {len(ids)} words; the tiny model reads at most {self.max_tokens}")
        return ids

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.max_tokens, self.dim, dtype=self.word_table.dtype)
        for row, prompt in enumerate(prompts):
            ids = self.token_ids(prompt)
            if ids:
                out[row, : len(ids)] = self.word_table[ids] + self.position_table[: len(ids)]
        return out
