"""HarmoniCa (Huang et al., arXiv 2410.01723): a learned router that says, per step and unit, compute or reuse.

The router is one logit per (step, unit), P of shape (T, 3N) over the units of ``cache/units.py``; r = sigmoid(P).
It reads no features: at inference unit u computes at step s iff r[s, u] > ``threshold`` (the released code's README:
0.1), a fixed table, so every rank of a gang follows the same schedule by construction; step 0 always computes.
One table serves both CFG branches (the released code batches them under one router).  Training lives in
``tools/train_router.py`` (``ditfarm train-router``).

The router file sits beside the model's cache profile (``harmonica_router.json``) and carries the model's identity
(as the profile does): a router trained on one model is refused by another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...pipelines.adapters import describe_identity, same_model
from ..profile import ProfileMismatchError, expert_of, model_identity
from ..units import UnitPolicy

ROUTER_FILE = "harmonica_router.json"
FORMAT = "ditfarm-harmonica-router/1"


class RouterError(ValueError):
    """No router, or a router that does not fit this model or run."""


@dataclass
class Router:
    """A trained HarmoniCa router: logits (steps, units), and how it was trained."""

    model: dict
    logits: list[list[float]]
    training: dict = field(default_factory=dict)
    format: str = FORMAT
    # the other transformers of a model whose experts take turns (Wan2.2 A14B): component -> that expert's router,
    # over the steps of its own segment; one file holds them all, each checked against its own expert
    experts: dict[str, Router] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """The steps this router's transformer runs: the video's, or its expert's segment."""
        return len(self.logits)

    def for_transformer(self, transformer: torch.nn.Module) -> Router:
        """The router of ``transformer``: this one, or the expert's of its component where this file holds one
        (check_model then refuses a component it does not)."""
        return expert_of(self, transformer)

    def probabilities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.asarray(self.logits, dtype=np.float64)))

    def check_model(self, transformer: torch.nn.Module, ignore: tuple = ()) -> None:
        actual = model_identity(transformer)
        if not same_model(self.model, actual, ignore):
            where = f"router {self.source}" if getattr(self, "source", None) else "the router"
            raise ProfileMismatchError(
                f"{where} was trained on {describe_identity(self.model)}, but this model is "
                f"{describe_identity(actual)}; train one with `ditfarm train-router`"
            )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def to_dict(self) -> dict:
        data = {
            "format": self.format,
            "model": self.model,
            "training": self.training,
            "logits": [[float(f"{v:.6g}") for v in row] for row in self.logits],
        }
        if self.experts:
            data["experts"] = {name: expert.to_dict() for name, expert in self.experts.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Router:
        experts = {name: cls.from_dict(e) for name, e in data.get("experts", {}).items()}
        return cls(model=data["model"], logits=data["logits"], training=data.get("training", {}), experts=experts)

    @classmethod
    def load(cls, path: str | Path) -> Router:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise RouterError(f"no HarmoniCa router at {path}; train one with `ditfarm train-router`") from None
        except json.JSONDecodeError as err:
            raise RouterError(f"{path} is not valid JSON ({err})") from None
        if data.get("format") != FORMAT:
            raise RouterError(
                f"{path} is not a ditfarm HarmoniCa router (format {data.get('format')!r}, want {FORMAT})"
            )
        router = cls.from_dict(data)
        router.source = str(path)
        return router


def router_beside(profile) -> Path:
    """Where the router of a profile lives: beside the profile file."""
    source = getattr(profile, "source", None) if not isinstance(profile, (str, Path)) else profile
    if not source:
        raise RouterError(
            "the harmonica policy reads its router beside the cache profile: pass --profile "
            "PROFILE.json (with harmonica_router.json next to it)"
        )
    return Path(source).with_name(ROUTER_FILE)


@dataclass
class HarmoniCaConfig:
    """HarmoniCa with a trained router; ``threshold`` (tau) is the inference knob: a unit computes where
    sigmoid(logit) > tau."""

    threshold: float
    router: Router


class HarmoniCaPolicy(UnitPolicy):
    name = "harmonica"

    def __init__(self, config: HarmoniCaConfig):
        if not 0 <= config.threshold < 1:
            raise ValueError(f"harmonica's knob is the router threshold tau: 0 <= tau < 1, got {config.threshold}")
        self.config = config
        self.router = config.router

    def schedule(self, num_steps: int, num_units: int) -> np.ndarray:
        probabilities = self.router.probabilities()
        where = f"router {self.router.source}" if getattr(self.router, "source", None) else "the router"
        video_steps = int(self.router.training.get("steps", probabilities.shape[0]))
        if probabilities.shape != (num_steps, num_units):
            trained, here = f"{probabilities.shape[0]}-step videos", f"this video has {num_steps} steps"
            if video_steps != probabilities.shape[0]:  # an expert's router, over its own segment
                trained = f"the {probabilities.shape[0]} steps this expert runs of {video_steps}-step videos"
                here = f"here it runs {num_steps} steps"
            raise RouterError(
                f"{where} was trained for {trained} of {probabilities.shape[1]} units; {here} and {num_units} "
                f"units: train one at these steps or render with --steps {video_steps}"
            )
        table = (probabilities > self.config.threshold).astype(np.int8)
        table[0] = 1
        return table

    def describe(self) -> dict:
        return {
            "policy": self.name,
            "threshold": self.config.threshold,
            "router": getattr(self.router, "source", None),
            "beta": self.router.training.get("beta"),
        }
