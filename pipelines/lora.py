"""LoRAs per video: a diffusers-format LoRA (a ``.safetensors`` file, a folder holding one, or an ``s3://`` URI of
either) loaded into every transformer of a pipeline with diffusers' own LoRA support, and switched per row.

Loading is diffusers': the file is read and converted by the pipeline's LoRA loader (``lora_state_dict``: other
trainers' key layouts become diffusers'; a Wan text-to-video LoRA gains the zero image layers of an
image-to-video transformer), then ``load_lora_adapter`` puts it into each transformer as a named adapter, both
experts of a model whose experts take turns (as diffusers' ``load_into_transformer_2`` does for the second).  A
video with a LoRA activates its adapter at its scale (``set_adapters``); a video without one disables every
adapter, so the base model computes exactly as if none had been loaded.

A pipeline holds a bounded set of loaded LoRAs (``LoraSlots``): switching between them costs no reload, and the one
used least recently is unloaded when another comes.  A LoRA that cannot be used (missing, not safetensors, keys or
shapes that do not fit the model) is refused with one message naming it, remembered, and given again to every
later row that names it, without another attempt.  ``s3://`` LoRAs are fetched once per node into a local cache
(``model_files.fetch_file``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..storage.errors import StorageError
from ..uris import is_s3

CACHE_ENV = "DITFARM_LORA_CACHE"
MAX_LORA_BYTES = 8 * 1024**3  # a LoRA file past this is refused before it is read
DEFAULT_CAPACITY = 4  # LoRAs a pipeline keeps loaded at once
HOTSWAP_RANK = 128  # compiled blocks: the LoRA slot's rank (smaller LoRAs are padded with zeros)
SLOT = "ditfarm_lora"  # compiled blocks: the one adapter the LoRAs take turns in


class LoraError(ValueError):
    """A LoRA that cannot be used with this model, named in the message."""


@dataclass(frozen=True)
class LoraChoice:
    """One video's LoRA: where it is, and the scale its update is applied at."""

    source: str
    scale: float = 1.0

    def validate(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise LoraError(f"lora must be a path or an s3:// URI, got {self.source!r}")
        if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool) or self.scale != self.scale:
            raise LoraError(f"lora_scale must be a number, got {self.scale!r}")


def lora_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ditfarm" / "loras")


def local_lora(source: str) -> Path:
    """A local path to the LoRA at ``source``: the path itself, or this node's copy of an ``s3://`` object or
    prefix (a URI ending in ``.safetensors`` is one file, any other a folder)."""
    if is_s3(source):
        from .model_files import fetch_file, fetch_model  # deferred: pyarrow

        try:
            if source.endswith(".safetensors"):
                return fetch_file(source, lora_cache_dir(), MAX_LORA_BYTES)
            return fetch_model(source.rstrip("/") + "/", lora_cache_dir()).path
        except (StorageError, ValueError) as err:
            raise LoraError(f"LoRA {source}: {err}") from None
    path = Path(source).expanduser()
    if not path.exists():
        raise LoraError(f"LoRA {source} does not exist")
    return path


def lora_file(source: str) -> Path:
    """The ``.safetensors`` file of the LoRA at ``source`` (a folder must hold exactly one, or diffusers' default
    ``pytorch_lora_weights.safetensors``), checked to be a safetensors file."""
    from safetensors import SafetensorError, safe_open  # deferred: safetensors

    path = local_lora(source)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        default = path / "pytorch_lora_weights.safetensors"
        if default.exists():
            found = [default]
        if len(found) != 1:
            what = "no .safetensors file" if not found else f"{len(found)} .safetensors files"
            raise LoraError(f"LoRA {source} is a folder with {what}; name the file")
        path = found[0]
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError) as err:
        raise LoraError(f"LoRA {source} is not a safetensors file ({err})") from None
    return path


def check_fit(state_dict: dict, transformer: torch.nn.Module, source: str) -> None:
    """Every LoRA key names a linear layer of ``transformer`` whose sizes its A and B matrices fit."""
    modules = dict(transformer.named_modules())
    for key, value in state_dict.items():
        if "lora" not in key:
            raise LoraError(f"LoRA {source} holds {key!r}, which is not a LoRA weight")
        name, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        module = modules.get(name)
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            raise LoraError(f"LoRA {source} does not fit this model: it adapts {name!r}, which the model lacks")
        if part.startswith("A.") and value.shape[-1] != weight.shape[1]:
            raise LoraError(
                f"LoRA {source} does not fit this model: {key} reads {value.shape[-1]} features, {name} has "
                f"{weight.shape[1]}"
            )
        if part.startswith("B.") and value.shape[0] != weight.shape[0]:
            raise LoraError(
                f"LoRA {source} does not fit this model: {key} writes {value.shape[0]} features, {name} has "
                f"{weight.shape[0]}"
            )


class LoraSlots:
    """The LoRAs loaded into one pipeline's transformers, least recently used first, at most ``capacity``.

    Eager blocks hold each LoRA as its own adapter and switch with ``set_adapters``.  Compiled blocks
    (``--compile``) would compile their graphs again for every adapter and scale they meet, so there the LoRAs
    take turns in one adapter slot by diffusers' hotswapping (``enable_lora_hotswap``: the slot's rank padded to
    ``HOTSWAP_RANK``, its scaling a tensor): a switch copies the next LoRA's weights into the slot, its scale
    folded into its B matrices, and the base model is the slot at scale 0 (adding exactly nothing).  The first
    LoRA compiles the blocks once more; no switch after it does.  The LoRAs' weights stay in host memory (the
    same bounded set), so a switch reads nothing."""

    def __init__(self, loader, transformers: dict[str, torch.nn.Module], capacity: int = DEFAULT_CAPACITY):
        from .compile import COMPILED_ATTR  # deferred: diffusers

        self.loader = loader  # the diffusers LoRA loader class of the model's pipeline (lora_state_dict)
        self.transformers = transformers
        self.capacity = capacity
        self.loaded: OrderedDict[str, str] = OrderedDict()  # source -> adapter name (eager blocks)
        self.states: OrderedDict[str, tuple[dict, dict | None]] = OrderedDict()  # source -> weights (compiled)
        self.refused: dict[str, str] = {}  # source -> why (given again without another attempt)
        self.loads = 0  # LoRAs read and loaded (a switch between loaded ones adds none)
        self.active: LoraChoice | None = None
        self.hotswap = any(getattr(t, COMPILED_ATTR, None) for t in transformers.values())
        self.slot_filled = False  # compiled blocks: whether the slot's adapter exists yet

    def use(self, choice: LoraChoice | None) -> None:
        """Make the transformers compute with ``choice`` (None: the base model), and mark it in their identity
        (a cache profile measured without it is not theirs)."""
        from .adapters import mark_identity  # deferred: diffusers

        if choice is not None:
            choice.validate()
        if self.hotswap:
            self._swap(choice)
        elif choice is None:
            for transformer in self.transformers.values():
                if getattr(transformer, "_hf_peft_config_loaded", False):
                    transformer.disable_adapters()
        else:
            name = self._load(choice.source)
            for transformer in self.transformers.values():
                transformer.enable_adapters()
                transformer.set_adapters([name], weights=[float(choice.scale)])
        for transformer in self.transformers.values():
            mark_identity(transformer, loras=[] if choice is None else [[choice.source, float(choice.scale)]])
        self.active = choice

    def _state(self, source: str) -> tuple[dict, dict | None]:
        if source in self.states:
            self.states.move_to_end(source)
            return self.states[source]
        state = self._read_once(source)
        while len(self.states) >= self.capacity:
            self.states.popitem(last=False)
        self.states[source] = state
        self.loads += 1
        return state

    def _swap(self, choice: LoraChoice | None) -> None:
        """Compiled blocks: the slot holds ``choice``'s weights at its scale (None: scale 0)."""
        if choice is None and not self.slot_filled:
            return  # nothing was ever loaded: the blocks are the base model's
        source = choice.source if choice is not None else next(reversed(self.states))
        state_dict, metadata = self._state(source)
        scale = 0.0 if choice is None else float(choice.scale)
        scaled = {k: v * scale if ".lora_B." in k else v for k, v in state_dict.items()}
        for transformer in self.transformers.values():
            try:
                if not self.slot_filled:
                    transformer.enable_lora_hotswap(target_rank=HOTSWAP_RANK)
                transformer.load_lora_adapter(
                    dict(scaled), adapter_name=SLOT, metadata=metadata, prefix="transformer", hotswap=self.slot_filled
                )
            except (RuntimeError, ValueError) as err:
                raise LoraError(
                    f"LoRA {source} cannot take the compiled blocks' LoRA slot ({err}); with --compile every LoRA of "
                    f"a run must adapt the layers the first one did, at rank {HOTSWAP_RANK} or less"
                ) from None
        self.slot_filled = True

    def _load(self, source: str) -> str:
        if source in self.loaded:
            self.loaded.move_to_end(source)
            return self.loaded[source]
        state_dict, metadata = self._read_once(source)
        while len(self.loaded) >= self.capacity:
            _, oldest = self.loaded.popitem(last=False)
            for transformer in self.transformers.values():
                transformer.delete_adapters([oldest])
        name = "lora_" + hashlib.sha256(source.encode()).hexdigest()[:12]
        for transformer in self.transformers.values():
            transformer.load_lora_adapter(dict(state_dict), adapter_name=name, metadata=metadata, prefix="transformer")
        self.loaded[source] = name
        self.loads += 1
        return name

    def _read_once(self, source: str) -> tuple[dict, dict | None]:
        """``_read``, except that a LoRA refused once is refused again with the same message, not read again."""
        if source in self.refused:
            raise LoraError(self.refused[source])
        try:
            return self._read(source)
        except LoraError as err:
            self.refused[source] = str(err)
            raise

    def _read(self, source: str) -> tuple[dict, dict | None]:
        path = lora_file(source)
        try:
            state_dict, metadata = self.loader.lora_state_dict(str(path), return_lora_metadata=True)
        except (OSError, ValueError, KeyError) as err:
            raise LoraError(f"LoRA {source} cannot be read as a LoRA: {err}") from None
        expand = getattr(self.loader, "_maybe_expand_t2v_lora_for_i2v", None)
        for transformer in self.transformers.values():
            if expand is not None:
                state_dict = expand(transformer=transformer, state_dict=state_dict)
            check_fit(state_dict, transformer, source)
        return state_dict, metadata


def make_random_lora(
    transformer: torch.nn.Module,
    path: str | Path,
    rank: int = 4,
    seed: int = 0,
    std: float = 0.05,
    targets: tuple[str, ...] = ("attn1.to_q", "attn1.to_v", "ffn.net.0.proj"),
    alpha: float | None = None,
) -> Path:
    """A diffusers-format LoRA file for ``transformer`` with random A and B (a trained LoRA's B is not zero):
    what tests and benchmarks load where no trained LoRA can be downloaded.  ``targets``: the ends of the linear
    layers' names it adapts; ``alpha``: a ``lora_alpha`` in its metadata (scaling alpha / rank), else none
    (diffusers then takes alpha = rank)."""
    from safetensors.torch import save_file  # deferred: safetensors

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(targets):
            out_features, in_features = module.weight.shape
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, in_features, generator=gen) * std
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(out_features, rank, generator=gen) * std
    if not tensors:
        raise ValueError(f"no linear layer of {type(transformer).__name__} ends in {', '.join(targets)}")
    metadata = None
    if alpha is not None:  # as diffusers' save_lora_weights writes a trainer's LoRA config
        adapted = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in tensors})
        config = {"transformer.r": rank, "transformer.lora_alpha": alpha, "transformer.target_modules": adapted}
        metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(config, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path
