"""What one rank of a gang does, independent of how the gang was started (Ray actors or local processes).

A ``RankRenderer`` owns the model copy of its rank: loaded once, sharded for sequence parallelism, with the
cache's indicator all-reduce, then used for many videos.  Per video, only rank 0 encodes the text (the result is
broadcast) and only rank 0 decodes the video: every rank draws the same initial noise from the seed, denoises its
shard, and the shards are gathered inside the transformer.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist

from ..pipelines.compile import compiled_graphs
from ..pipelines.conditioning import Conditioning
from ..pipelines.memory import available_bytes
from ..pipelines.phases import PhaseClock
from ..types import RenderSettings, RowInputs
from ..worker.model import load_model
from ..worker.video import (
    cache_outcome,
    checked_settings,
    decode_video,
    denoise_video,
    encode_text,
    row_images,
    use_row_lora,
)
from .cfg_parallel import CfgSplit, make_cfg_cache_reduce, make_cfg_groups
from .collectives import backend_device, make_cache_reduce
from .messages import EncodedText, RankResult
from .sequence_parallel import SequenceParallelConfig, enable_sequence_parallel


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, src: int = 0, group=None) -> dict[str, torch.Tensor]:
    """Send rank ``src``'s named tensors to every rank (names, shapes and dtypes first, so receivers need not know
    them); they travel on the backend's device and come back on the CPU."""
    meta = [[(name, tuple(t.shape), t.dtype) for name, t in tensors.items()] if tensors is not None else None]
    dist.broadcast_object_list(meta, src=src, group=group)
    device = backend_device(group) or torch.device("cpu")
    if dist.get_rank(group) != src:
        tensors = {name: torch.empty(shape, dtype=dtype) for name, shape, dtype in meta[0]}
    moved = {name: t.to(device) for name, t in tensors.items()}
    for name, _, _ in meta[0]:  # in rank src's order on every rank
        dist.broadcast(moved[name], src=src, group=group)
    return {name: t.cpu() for name, t in moved.items()}


class RankRenderer:
    def __init__(self, rank: int, world: int, settings: RenderSettings):
        self.rank, self.world, self.settings = rank, world, settings
        self.layout = f"Ulysses {world}"
        # only rank 0 encodes text and decodes video: the other ranks load the transformer alone
        loaded = load_model(settings, encode_and_decode=rank == 0, shard=self._shard)
        self.pipe, self.cache = loaded.pipe, loaded.cache
        if world > 1:
            self._wrap_text_encoder()
        # what the gang runs, for the driver to log once per gang
        self.description = f"{world} rank(s), {self.layout}, {loaded.describe(settings)}"

    def _shard(self, pipe, choice):
        """Sequence parallelism over the gang (under CFG parallelism, over each half); the cache's reduce."""
        timeout = timedelta(seconds=self.settings.collective_timeout_s)
        reduce = make_cache_reduce() if self.world > 1 else None
        ulysses, sp_group = self.world, None
        if self.settings.cfg_parallel:
            self.settings.check_guidance_split(pipe.classifier_free_guidance)
            groups = make_cfg_groups(timeout)
            ulysses, sp_group = groups.half_size, groups.branch_group
            pipe.guidance_split = CfgSplit(groups)
            reduce = make_cfg_cache_reduce(groups)
            self.layout = f"2 CFG halves x Ulysses {ulysses}"
        if ulysses > 1:  # every transformer the loop runs (both experts of a two-expert model), in the same order
            for transformer in pipe.transformers().values():
                enable_sequence_parallel(
                    transformer,
                    SequenceParallelConfig(ulysses, attn_type=choice.sp_kernel, long_context=choice.long_context),
                    group=sp_group,
                    timeout=timeout,
                )
        return reduce

    def _wrap_text_encoder(self) -> None:
        """Encode on rank 0 only and broadcast the conditioning to the other ranks."""
        self._encode_on_rank0 = self.pipe.encode_inputs

        def encode_once(prompt, negative_prompt, settings, images=None):
            return self._shared_embeddings(RowInputs(prompt, 0, negative_prompt, extra=images or {}), settings, None)

        self.pipe.encode_inputs = encode_once

    def _gang_available_bytes(self) -> int:
        """The least memory any rank of the gang has free: every rank then refuses or renders a video alike (an
        integer all-reduced, before the video's first broadcast), never one rank alone."""
        available = available_bytes(self.pipe.execution_device)
        if self.world == 1:
            return available
        value = torch.tensor([available], dtype=torch.int64, device=backend_device(None) or torch.device("cpu"))
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return int(value.item())

    def _any_rank_late(self, late: bool) -> bool:
        """True on every rank when any rank's clock passed the video's deadline (one int all-reduced)."""
        flag = torch.tensor([int(late)], dtype=torch.int32, device=backend_device(None) or torch.device("cpu"))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _shared_embeddings(self, row: RowInputs, settings, ahead) -> Conditioning:
        """Rank 0's conditioning of ``row`` (``ahead``: computed beforehand, else encoded now) on every rank,
        whatever named tensors the family's encoding holds.  A row rank 0 cannot encode (an image missing or not
        an image) fails on every rank with rank 0's error: the error is broadcast, no rank waits for tensors."""
        local, error = None, [None]
        if self.rank == 0:
            try:
                encoded = ahead
                if encoded is None:
                    encoded = self._encode_on_rank0(row.prompt, row.negative_prompt, settings, row_images(row))
                local = encoded.to("cpu").flat()
            except ValueError as err:
                error = [str(err)]
        dist.broadcast_object_list(error, src=0)
        if error[0] is not None:
            raise ValueError(error[0])
        return Conditioning.from_flat(broadcast_tensors(local)).to(self.pipe.execution_device)

    def _use_lora(self, row: RowInputs) -> None:
        """Every rank switches to the row's LoRA; where any rank cannot (a LoRA it cannot fetch or read), every
        rank fails the row with that rank's error, before the loop's first collective."""
        error = None
        try:
            use_row_lora(self.pipe, row)
        except ValueError as err:
            error = str(err)
        if self.world > 1:
            errors = [None] * self.world
            dist.all_gather_object(errors, error)
            error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise ValueError(error)

    def encode_text(self, row: RowInputs) -> EncodedText | None:
        """Rank 0, ahead of the video's render (beside another video's loop): the embeddings on the CPU, or None when the row is bad (its render then fails with the error on every rank
        alike)."""
        try:
            self.pipe.check_prompt(row.prompt)
            if row.negative_prompt:
                self.pipe.check_negative_prompt(row.negative_prompt)
            self.pipe.check_images(row_images(row))
            settings = self.pipe.settings(**row.sampler)
            encode = getattr(self, "_encode_on_rank0", None)
            clock = PhaseClock(self.pipe.execution_device)
            with torch.no_grad():
                encoded = encode_text(self.pipe, clock, row, settings, encode)
        except ValueError:  # a bad row (an image that cannot be read, too): its render fails on every rank alike
            return None
        return EncodedText(encoded.to("cpu"), clock.seconds["text"])

    def render(
        self,
        row: RowInputs,
        decode: bool = True,
        embeddings: Conditioning | None = None,
        timeout_s: float | None = None,
    ) -> RankResult:
        """Denoise this rank's shard of one video; rank 0 decodes and returns the frames (``decode=False``: the
        latents instead, for a decode that runs beside the next video's loop).  ``embeddings``
        (rank 0 only): ``encode_text``'s embeddings, computed while the previous video denoised.  Rank 0's
        phases are its VideoPhases (text seconds only where it encoded here)."""
        # Every rank validates, identically and before any collective: a bad row fails on all ranks at once
        # instead of leaving the others waiting for rank 0 in a broadcast.
        settings = checked_settings(self.pipe, row, self._gang_available_bytes())
        clock = PhaseClock(self.pipe.execution_device)
        clock.reset_peak()
        with torch.no_grad():
            if self.world > 1:  # every rank takes part in the broadcast, whether or not rank 0 encoded ahead
                with clock.phase("text") if embeddings is None else nullcontext():
                    embeddings = self._shared_embeddings(row, settings, embeddings)
            elif embeddings is not None:
                embeddings = embeddings.to(self.pipe.execution_device)
            else:
                embeddings = encode_text(self.pipe, clock, row, settings)
            self._use_lora(row)
            # timeout_s: the driver's number, the same on every rank; the ranks vote at every step
            vote = self._any_rank_late if self.world > 1 else None
            latents = denoise_video(self.pipe, clock, row, settings, embeddings, timeout_s, vote)
            frames = decode_video(self.pipe, clock, latents) if self.rank == 0 and decode else None
        cache = cache_outcome(self.pipe)
        return RankResult(
            settings=settings.__dict__,
            masks=cache.masks,
            peak_bytes=cache.peak_bytes,
            skipped_fraction=cache.skipped_fraction,
            knob=cache.knob,
            phases=clock.phases(),
            frames=frames,
            latents=latents if self.rank == 0 and not decode else None,
            compiled_graphs=compiled_graphs() if self.settings.compile else None,
        )
