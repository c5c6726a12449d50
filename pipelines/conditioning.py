"""A video's encoded conditioning: what its prompt (and, under guidance, its negative prompt) became, as named
tensors per classifier-free-guidance branch.

The names are the keyword arguments the family's transformer takes (``encoder_hidden_states``, and where the
family has them an attention mask, pooled text, image embeddings), so the loop passes a branch as it is and a gang
broadcasts any family's conditioning alike (``flat`` / ``from_flat``), without knowing what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BRANCH_SEPARATOR = "/"


@dataclass(frozen=True)
class Conditioning:
    """``cond``: the conditional branch's tensors by name; ``uncond``: the unconditional branch's (None: the video
    runs without classifier-free guidance, one transformer pass per step)."""

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None = None

    @classmethod
    def of_text(cls, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None = None) -> Conditioning:
        """Text embeddings alone, as most families' transformers take them (``encoder_hidden_states``)."""
        uncond = None if negative_prompt_embeds is None else {"encoder_hidden_states": negative_prompt_embeds}
        return cls({"encoder_hidden_states": prompt_embeds}, uncond)

    def branch(self, name: str) -> dict[str, torch.Tensor]:
        if name == "cond":
            return self.cond
        if name == "uncond" and self.uncond is not None:
            return self.uncond
        raise ValueError(f"this conditioning has no {name!r} branch")

    def with_shared(self, tensors: dict[str, torch.Tensor]) -> Conditioning:
        """The same conditioning with ``tensors`` (what an image became: condition latents, image embeddings) in
        every branch: both CFG passes read them."""
        uncond = None if self.uncond is None else {**self.uncond, **tensors}
        return Conditioning({**self.cond, **tensors}, uncond)

    def to(self, device) -> Conditioning:
        return self.map(lambda t: t.to(device))

    def map(self, fn) -> Conditioning:
        def each(tensors):
            return None if tensors is None else {k: (fn(v) if v is not None else None) for k, v in tensors.items()}

        return Conditioning(each(self.cond), each(self.uncond))

    def flat(self) -> dict[str, torch.Tensor]:
        """Every tensor under ``<branch>/<name>`` (what a gang broadcasts); a None tensor is left out."""
        out = {}
        for branch, tensors in (("cond", self.cond), ("uncond", self.uncond)):
            for name, tensor in (tensors or {}).items():
                if tensor is not None:
                    out[f"{branch}{BRANCH_SEPARATOR}{name}"] = tensor
        return out

    @classmethod
    def from_flat(cls, tensors: dict[str, torch.Tensor]) -> Conditioning:
        branches: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            branch, _, name = key.partition(BRANCH_SEPARATOR)
            branches.setdefault(branch, {})[name] = tensor
        return cls(branches.get("cond", {}), branches.get("uncond"))
