"""Refuse a broken model folder at load, naming the file and the problem, before anything renders.

A folder copied by hand or half-synced from a bucket fails in many ways that diffusers reports late or obscurely
(a KeyError deep in ``from_pretrained``, a shape error in the first step, garbage from a truncated shard).  The
checks read only JSON and the safetensors headers (a few KB per file), never the tensors:

- every component the folder's family needs (its ``DiffusersLayout``) is named in ``model_index.json`` and has
  its folder;
- each config parses;
- each safetensors file is whole: its header parses and the file holds every byte the header promises;
- the weights match the config: the model is built from its config on the ``meta`` device (no memory) and
  every parameter's name and shape is compared with the headers.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAX_LISTED = 3  # mismatching tensors named in one message


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded as it is; the message names the file and what is wrong with it."""


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: missing ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from None


def safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's header, after checking the file holds all its tensors."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFolderError(f"{path}: truncated: {size} bytes, not even a safetensors header length")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ModelFolderError(f"{path}: truncated: its header alone is {length} bytes, the file holds {size}")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelFolderError(f"{path}: not a safetensors file (its header does not parse: {err})") from None
    header.pop("__metadata__", None)
    end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    if 8 + length + end > size:
        raise ModelFolderError(
            f"{path}: truncated: its header promises {8 + length + end} bytes, the file holds "
            f"{size} (an interrupted download or copy?)"
        )
    return {name: tuple(t["shape"]) for name, t in header.items()}


def component_weights(folder: Path, stem: str) -> tuple[dict[str, tuple[int, ...]], dict[str, Path]]:
    """(name -> shape, name -> file) over a component's safetensors, single file or sharded with an index."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        weight_map = read_json(index, "the shard index").get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for shard in files:
            if not shard.exists():
                raise ModelFolderError(f"{shard}: missing (named by {index.name})")
    else:
        found = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
        hint = f"; found {', '.join(found)}" if found else ""
        raise ModelFolderError(f"{folder}: no weights ({single.name} or {index.name}){hint}")
    shapes, where = {}, {}
    for path in files:
        for name, shape in safetensors_header(path).items():
            shapes[name], where[name] = shape, path
    return shapes, where


def _meta_model(library: str, class_name: str, config_path: Path):
    import torch  # deferred: torch

    with torch.device("meta"):
        if library == "diffusers":
            import diffusers  # deferred: diffusers

            cls = getattr(diffusers, class_name)
            return cls.from_config(cls.load_config(config_path.parent))
        import transformers  # deferred: transformers

        config = transformers.AutoConfig.from_pretrained(config_path.parent)
        return getattr(transformers, class_name)(config)


def check_weights_match_config(folder: Path, stem: str, library: str, class_name: str) -> None:
    """Every parameter the config implies exists in the weights with its shape, and nothing else is there."""
    config_path = folder / "config.json"
    read_json(config_path, "the component's config")
    shapes, where = component_weights(folder, stem)
    try:
        model = _meta_model(library, class_name, config_path)
    except Exception as err:  # noqa: BLE001 - any failure to build from the config is the config's problem
        raise ModelFolderError(f"{config_path}: {class_name} cannot be built from it ({err})") from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    aliases = _aliases(model)
    wrong = [n for n in expected if n in shapes and shapes[n] != expected[n]]
    missing = [n for n in expected if not (aliases.get(n, {n}) & shapes.keys())]
    unexpected = [n for n in shapes if n not in expected]
    if not (wrong or missing or unexpected):
        return
    parts = []
    if wrong:
        parts.append(
            "shape mismatch: "
            + "; ".join(
                f"{n} is {list(shapes[n])} in {where[n].name} but {list(expected[n])} by the config"
                for n in wrong[:MAX_LISTED]
            )
            + (f" (and {len(wrong) - MAX_LISTED} more)" if len(wrong) > MAX_LISTED else "")
        )
    if missing:
        parts.append(
            f"{len(missing)} tensor(s) the config implies are not in the weights (e.g. "
            f"{', '.join(missing[:MAX_LISTED])})"
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} tensor(s) in the weights that the config has no place for (e.g. "
            f"{', '.join(unexpected[:MAX_LISTED])})"
        )
    raise ModelFolderError(f"{config_path} does not match the weights in {folder}: " + "; ".join(parts))


def _aliases(model) -> dict[str, set[str]]:
    """name -> every name of the same tensor: a tied parameter is stored once (UMT5's encoder.embed_tokens is its
    ``shared``), under any one of its names."""
    groups: dict[int, set[str]] = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        groups.setdefault(id(tensor), set()).add(name)
    return {name: names for names in groups.values() for name in names}


@dataclass(frozen=True)
class DiffusersLayout:
    """What a family reads of a diffusers folder: the components it needs (each named in model_index.json and
    present as a folder), the weights checked against their configs (component -> (file stem, library, class)),
    and the model_index.json fields it refuses while they are set (field -> what it is)."""

    what: str  # "a Wan text-to-video folder", for messages
    components: tuple[str, ...]
    weights: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    fields: tuple[str, ...] = ()  # model_index.json fields the family reads (Wan2.2's boundary_ratio), set or not


# model_index.json fields every family reads; every field that is neither these nor a component of the family
# must be absent or unset (null, false, [null, null]), or the folder is refused: a field ditfarm ignored would
# make it render something other than what diffusers renders.
HANDLED_INDEX_FIELDS = ("_class_name", "_diffusers_version", "_name_or_path")


def check_index_fields(index: dict, index_path: Path, layout: DiffusersLayout) -> None:
    """Refuse a folder whose model_index.json asks for what its family does not do, naming every such field."""
    unsupported = []
    for key, value in index.items():
        if key in HANDLED_INDEX_FIELDS or key in layout.components or key in layout.fields:
            continue
        unset = value is None or value is False or (isinstance(value, list) and all(v is None for v in value))
        if not unset:
            unsupported.append(f"{key}={value!r} ({layout.unsupported.get(key, 'a field ditfarm does not read')})")
    if unsupported:
        raise ModelFolderError(
            f"{index_path}: not supported yet: {'; '.join(unsupported)}.  ditfarm would render "
            "this folder unlike diffusers does, so it refuses it"
        )


def check_diffusers_folder(folder: Path, layout: DiffusersLayout) -> dict:
    """Check a diffusers folder of ``layout`` before it is loaded; returns its ditfarm card ({} without one)."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = read_json(index_path, "a diffusers model folder names its components there")
    check_index_fields(index, index_path, layout)
    for name in layout.components:
        entry = index.get(name)
        if not entry or entry[0] is None:
            raise ModelFolderError(
                f"{index_path}: names no {name!r} component ({layout.what} needs {', '.join(layout.components)})"
            )
        if not (folder / name).is_dir():
            raise ModelFolderError(f"{folder / name}: missing (model_index.json names a {name} component)")
    if "scheduler" in layout.components:
        read_json(folder / "scheduler" / "scheduler_config.json", "the scheduler's config")
    for name, (stem, library, class_name) in layout.weights.items():
        check_weights_match_config(folder / name, stem, library, class_name)
    card_path = folder / "ditfarm_model.json"
    return read_json(card_path, "ditfarm's model card") if card_path.exists() else {}
