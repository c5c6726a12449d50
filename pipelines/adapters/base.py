"""What a transformer family tells the rest of ditfarm about its insides, and the registry that finds it.

The contract (one subclass of ``TransformerAdapter`` per family, registered by transformer class):

- ``blocks()``: the repeated blocks, in order: what block caches hook, what is compiled, what a profile counts;
  ``block_io()``: which of a block's inputs and outputs are the video tokens the caches track, and which other
  streams (a joint block's text tokens) they carry along.
- ``units(block)``: a block's units by role (``UNIT_ROLES``: self-attention, cross-attention, feed-forward),
  the modules unit caches (BAC, HarmoniCa) hook one by one.
- ``self_attentions()`` and ``attention_processor(attend)``: where self-attention is computed and how: the
  processor projects queries, keys and values as the model does (norms, rotary embedding) and hands them to
  ``attend(query, key, value)``.  Sequence parallelism passes a sharded attention; the profiler's probe passes
  one that records the attention map and then computes the model's own.
- ``token_count(latent_shape)`` and ``sharded_forward(rank, world, gather)``: how the model's token sequence is
  split over a gang (contiguous shards of the patch sequence, with its rotary embedding) and gathered back.
- ``heads()``: attention heads (a Ulysses degree must divide them); ``patch_size()``: latent cells per token;
  ``recording_processor(original, record, active)``: the attention probe's hook on a self-attention;
  ``identity()``: what a cache profile or a router trained on this model records to refuse another.

Modelled on cache-dit's ``BlockAdapter`` registry and diffusers' ``_cp_plan`` (a model declaring its split).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

UNIT_ROLES = ("self_attention", "cross_attention", "feed_forward")

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (B, S, heads, D) each -> same
Gather = Callable[[torch.Tensor], torch.Tensor]  # this rank's shard of the sequence (dim 1) -> the whole sequence


class BlockIO:
    """How a block's call and its result carry its token streams.  The first stream is the video's: caches track
    it (residuals, indicators, forecasts).  Any others (the text tokens a joint-attention block updates beside the
    video's) are carried along: where a cache skips the block, it adds their last residual.  This one is a block
    that takes the video tokens first (or as ``hidden_states``) and returns them alone (Wan's)."""

    def inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        return (args[0] if args else kwargs["hidden_states"],)

    def outputs(self, output) -> tuple[torch.Tensor, ...]:
        return (output,)

    def result(self, streams: tuple[torch.Tensor, ...]):
        return streams[0]


class JointBlockIO(BlockIO):
    """A block that takes (video, text) as its first two arguments (or as ``hidden_states`` and
    ``encoder_hidden_states``) and returns them as a (video, text) pair (CogVideoX's, HunyuanVideo's)."""

    def inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        video = args[0] if args else kwargs["hidden_states"]
        text = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
        return video, text

    def outputs(self, output) -> tuple[torch.Tensor, ...]:
        return tuple(output)

    def result(self, streams: tuple[torch.Tensor, ...]):
        return tuple(streams)


class TransformerAdapter(ABC):
    """One family's answers (see the module docstring); ``transformer`` is the loaded model.  ``blocks`` and
    ``units`` are what every cache needs; a family that leaves the others out renders without sequence
    parallelism or profiling, and says so by name when they are asked for."""

    family = "transformer"

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer

    @abstractmethod
    def blocks(self) -> list[torch.nn.Module]: ...

    @abstractmethod
    def units(self, block: torch.nn.Module) -> dict[str, torch.nn.Module]: ...

    def block_io(self) -> BlockIO:
        """How its blocks take and return their token streams (``BlockIO``: the video's alone by default)."""
        return BlockIO()

    def self_attentions(self) -> list[torch.nn.Module]:
        raise self._unsupported("where its self-attention is (sequence parallelism, the attention probe)")

    def attention_processor(self, attend: Attend):
        raise self._unsupported("how its self-attention computes queries, keys and values (sequence parallelism)")

    def token_count(self, latent_shape: tuple[int, ...]) -> int:
        raise self._unsupported("how many tokens a latent video makes (sequence parallelism)")

    def sharded_forward(self, rank: int, world: int, gather: Gather) -> Callable:
        raise self._unsupported("how its token sequence is split over a gang (sequence parallelism)")

    def heads(self) -> int:
        raise self._unsupported("how many attention heads it has (sequence parallelism)")

    def patch_size(self) -> tuple[int, int, int]:
        """Latent frames, rows and columns per token: how a latent video becomes the token sequence."""
        raise self._unsupported("how a latent video becomes tokens (the profiler)")

    def recording_processor(self, original, record, active):
        """``original``'s self-attention processor that, while ``active()``, first hands each call's (query, key)
        to ``record``."""
        raise self._unsupported("how to watch its self-attention (the profiler's attention probe)")

    def _unsupported(self, what: str) -> TypeError:
        return TypeError(f"the {self.family} model adapter does not say {what}")

    # -- shared -----------------------------------------------------------------------------------------------
    def unit_modules(self) -> list[torch.nn.Module]:
        """Every block's units in order: block 0's in ``UNIT_ROLES`` order, then block 1's, ..."""
        modules = []
        for i, block in enumerate(self.blocks()):
            units = self.units(block)
            missing = [role for role in UNIT_ROLES if units.get(role) is None]
            if missing:
                raise TypeError(
                    f"block {i} of {self.family} has no {', '.join(missing)} unit; unit caches need all of "
                    f"{', '.join(UNIT_ROLES)}"
                )
            modules += [units[role] for role in UNIT_ROLES]
        return modules

    def identity(self) -> dict:
        """What a cache profile or a router trained on this transformer must match: its class, block count and a
        hash of its architecture config (private keys like paths left out), and what makes the same architecture
        compute otherwise: which component of its folder it is (``transformer`` or a second expert's
        ``transformer_2``), the LoRAs applied to it (source and scale) and its weights' quantization.  The
        loader marks the last three on the module (``mark_identity``)."""
        config = {k: v for k, v in dict(self.transformer.config).items() if not k.startswith("_")}
        text = json.dumps(config, sort_keys=True, default=list)
        marks = getattr(self.transformer, IDENTITY_ATTR, {})
        return {
            "class": type(self.transformer).__name__,
            "num_blocks": len(self.blocks()),
            "config_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
            **{key: marks.get(key, default) for key, default in IDENTITY_DEFAULTS.items()},
        }


#: Where a loader marks what the config does not say (``mark_identity``), and what an unmarked model is.
IDENTITY_ATTR = "_ditfarm_identity"
IDENTITY_DEFAULTS = {"component": "transformer", "loras": [], "quantization": None}


def mark_identity(transformer: torch.nn.Module, **marks) -> None:
    """Record on ``transformer`` which component it is, its LoRAs ([[source, scale], ...]) or its quantization."""
    unknown = set(marks) - set(IDENTITY_DEFAULTS)
    if unknown:
        raise ValueError(f"not an identity mark: {', '.join(sorted(unknown))}")
    setattr(transformer, IDENTITY_ATTR, {**getattr(transformer, IDENTITY_ATTR, {}), **marks})


def same_model(recorded: dict, actual: dict, ignore: tuple[str, ...] = ()) -> bool:
    """Whether an identity recorded with a profile or router is ``actual``'s (but for the keys in ``ignore``); a
    key the record lacks (one written before the key existed) means its default: the plain first transformer."""
    kept = lambda identity: {k: v for k, v in {**IDENTITY_DEFAULTS, **identity}.items() if k not in ignore}  # noqa: E731
    return kept(recorded) == kept(actual)


def describe_identity(identity: dict) -> str:
    """An identity as a sentence names it: the architecture, then whatever differs from a plain transformer."""
    identity = {**IDENTITY_DEFAULTS, **identity}
    text = f"{identity['class']} with {identity['num_blocks']} blocks (config hash {identity['config_hash']}"
    if identity["component"] != IDENTITY_DEFAULTS["component"]:
        text += f", component {identity['component']}"
    if identity["loras"]:
        text += ", LoRAs " + ", ".join(f"{source} x{scale:g}" for source, scale in identity["loras"])
    if identity["quantization"]:
        text += f", {identity['quantization']} weights"
    return text + ")"


_ADAPTERS: dict[type, type[TransformerAdapter]] = {}


def register_adapter(transformer_class: type):
    """Class decorator: the adapter for ``transformer_class`` and its subclasses."""

    def register(adapter_class: type[TransformerAdapter]) -> type[TransformerAdapter]:
        _ADAPTERS[transformer_class] = adapter_class
        return adapter_class

    return register


def adapter_for(transformer: torch.nn.Module) -> TransformerAdapter:
    """The adapter of ``transformer``'s family (the nearest registered class in its MRO)."""
    for cls in type(transformer).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls](transformer)
    known = ", ".join(sorted(c.__name__ for c in _ADAPTERS)) or "none"
    raise TypeError(
        f"ditfarm has no adapter for {type(transformer).__name__} (it knows: {known}); a model family "
        "needs one in ditfarm.pipelines.adapters"
    )
