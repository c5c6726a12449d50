"""Loading a model for rendering, the same in the driver's process and on every gang rank: the pipeline at the
run's precision, its attention kernels, the caller's sharding (sequence or CFG parallelism, on gang ranks), its
compiled blocks, and its cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..cache import enable
from ..cache.engine import Reduce, identity_reduce
from ..cache.presets import choose_knob, config_for
from ..pipelines.attention import AttentionChoice, apply_attention, choose_attention
from ..pipelines.compile import compile_blocks
from ..pipelines.loading import load_pipeline
from ..pipelines.quantize import quantize_blocks
from ..types import RenderSettings

log = logging.getLogger(__name__)

# Called after the attention kernels are chosen and before the blocks are compiled: shards the model and returns
# the reduce every rank's cache decisions go through (None: decisions stay local).
Shard = Callable[[object, AttentionChoice], "Reduce | None"]


@dataclass
class LoadedModel:
    pipe: object  # the pipeline (a VideoPipelineMixin)
    cache: object  # its cache engine, or None
    attention: AttentionChoice

    def describe(self, settings: RenderSettings) -> str:
        compiled = f"blocks compiled ({settings.compile})" if settings.compile else "blocks eager"
        weights = f"{settings.quantize} weights; " if settings.quantize else ""
        return f"{self.pipe.transformer.dtype}; {weights}{self.attention.describe()}; {compiled}"


def load_model(settings: RenderSettings, encode_and_decode: bool = True, shard: Shard | None = None) -> LoadedModel:
    """The model of ``settings`` ready to render: loaded, its attention chosen, sharded by ``shard`` (gang ranks),
    its blocks compiled (``settings.compile``) and its cache enabled, on each of its transformers.  ``encode_and_decode=False``: the
    transformer alone (gang ranks other than 0)."""
    pipe = load_pipeline(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        encode_and_decode=encode_and_decode,
        offload_text_encoder=settings.offload_text_encoder,
        offload_experts=settings.offload_experts,
    )
    choice = choose_attention(settings.device, pipe.transformer.dtype)
    transformers = list(pipe.transformers().values())  # two where experts take turns: each alike
    for transformer in transformers:
        apply_attention(transformer, choice)
    reduce = shard(pipe, choice) if shard is not None else None
    if settings.quantize:  # the blocks' weights, before they are compiled (LoRAs load on top, per row)
        for transformer in transformers:
            quantize_blocks(transformer, settings.quantize)
    if settings.compile:  # after sharding (its processor is part of a block), before the cache's hooks
        for transformer in transformers:
            compile_blocks(transformer, backend=settings.compile)
    cache = enable(
        pipe, config_for(pipe, settings.cache, settings.cache_knob, settings.profile), reduce=reduce or identity_reduce
    )
    pipe.cache_knob = choose_knob(settings.cache, settings.cache_knob, pipe.cache_settings)
    return LoadedModel(pipe, cache, choice)
