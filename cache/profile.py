"""A model's cache profile: what the profiler learned about each block, tied to the model it was measured on.

Per block: the relative change of its residual between adjacent steps over a whole sampling run (the U-shaped curve
that tells when caching is safe) and its foreground attention ratio R_attn (ProfilingDiT: the share of foreground
tokens among the tokens this block attends to most), from which blocks are classed foreground or background.

The profile stores a hash of the transformer's config; using it with another model is refused, because block
classes and change curves of one architecture say nothing about another.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..pipelines.adapters import adapter_for, describe_identity, same_model

FORMAT = "ditfarm-cache-profile/1"
FOREGROUND, BACKGROUND = "foreground", "background"


class ProfileMismatchError(ValueError):
    """A profile measured on one model used with another."""


def model_identity(transformer: torch.nn.Module) -> dict:
    """Class name, block count and a hash of the architecture config (the model's adapter says which)."""
    return adapter_for(transformer).identity()


def expert_of(measured, transformer: torch.nn.Module):
    """What ``measured`` (a profile or a router: one file per model, with ``experts`` by component for a model
    whose experts take turns) holds for ``transformer``: the expert's own entry, named by the file, or ``measured``
    itself (whose check_model then refuses a component it was not measured on)."""
    expert = measured.experts.get(model_identity(transformer).get("component", "transformer"))
    if expert is None:
        return measured
    expert.source = getattr(measured, "source", None)
    return expert


@dataclass
class BlockProfile:
    index: int
    r_attn: float  # foreground attention ratio, averaged over calibration videos, steps and frames
    block_class: str  # FOREGROUND or BACKGROUND
    change: list[float]  # mean relative L1 change of the block residual from step s-1 to s (entry 0 is NaN)


@dataclass
class CacheProfile:
    model: dict
    blocks: list[BlockProfile]
    r_attn_threshold: float
    calibration: dict = field(default_factory=dict)
    mask_iou: float | None = None  # foreground mask vs ground truth, where the model's data generator knows it
    ertacache: dict | None = None  # ERTACache's calibration (cache/policies/ertacache.py, `ditfarm calibrate`)
    bac: dict | None = None  # BAC's per-unit similarity and volatility (cache/policies/bac.py, `ditfarm calibrate`)
    format: str = FORMAT
    # the other transformers of a model whose experts take turns (Wan2.2 A14B): component -> that expert's own
    # profile, measured on the steps it runs; one file holds them all, each checked against its own expert
    experts: dict[str, CacheProfile] = field(default_factory=dict)

    def for_transformer(self, transformer: torch.nn.Module) -> CacheProfile:
        """The profile of ``transformer``: this one, or the expert's of its component where this file holds one
        (check_model then refuses a component it does not)."""
        return expert_of(self, transformer)

    def for_transformers(self, transformers: dict[str, torch.nn.Module]) -> dict[str, CacheProfile]:
        """Per component of a loaded model (``pipe.transformers()``), the profile of that transformer, each checked
        against it (ProfileMismatchError names a component this file holds no profile of)."""
        profiles = {}
        for name, transformer in transformers.items():
            profiles[name] = self.for_transformer(transformer)
            profiles[name].check_model(transformer)
        return profiles

    @property
    def foreground_blocks(self) -> list[int]:
        return [b.index for b in self.blocks if b.block_class == FOREGROUND]

    @property
    def background_blocks(self) -> list[int]:
        return [b.index for b in self.blocks if b.block_class == BACKGROUND]

    def check_model(self, transformer: torch.nn.Module, source: str | None = None, ignore: tuple = ()) -> None:
        """Refuse a profile measured on another model (named by the file it was loaded from, where known);
        ``ignore``: identity keys left to another check (a cache's LoRAs are checked per video)."""
        source = source or (f"profile {self.source}" if getattr(self, "source", None) else "profile")
        actual = model_identity(transformer)
        if not same_model(self.model, actual, ignore):
            raise ProfileMismatchError(
                f"{source} was measured on {describe_identity(self.model)}, but this model is "
                f"{describe_identity(actual)}; profile this model with `ditfarm profile` first"
            )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1, allow_nan=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CacheProfile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"cache profile {path} does not exist") from err
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a ditfarm cache profile (format {data.get('format')!r}, want {FORMAT})")
        profile = cls.from_dict(data)
        profile.source = str(path)  # not a field: names the file in errors, never saved
        return profile

    @classmethod
    def from_dict(cls, data: dict) -> CacheProfile:
        data = dict(data)
        data["blocks"] = [BlockProfile(**b) for b in data["blocks"]]
        data["experts"] = {name: cls.from_dict(e) for name, e in data.get("experts", {}).items()}
        return cls(**data)
