"""The registry of model families: which folders ditfarm renders, and who loads and checks each.

A family is one module in ``ditfarm.pipelines.families`` (its pipeline and a ``Family`` subclass registered with
``register_family``) plus its adapter in ``ditfarm.pipelines.adapters``.  Both packages are scanned, so adding a
family edits no file outside its own.  A folder is matched to its family by what it says it is: a diffusers
folder by ``model_index.json``'s ``_class_name`` (and its transformer's class, which must be one the family
knows), a ditfarm folder by its card's ``kind``.  Loading, the dry run's checks, card defaults and the refusal of
a folder nobody renders all go through here: no other module names a family.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass
from pathlib import Path

from .base import VideoDefaults
from .cache_card import ModelCacheSettings
from .checks import ModelChecks
from .denoise import SamplerSettings
from .folder_checks import ModelFolderError, read_json

MODEL_INDEX = "model_index.json"
MODEL_CARD = "ditfarm_model.json"


@dataclass(frozen=True)
class LoadOptions:
    """How a pipeline is loaded, whatever its family: ``encode_and_decode=False`` loads the transformer alone (gang
    ranks other than 0); ``offload_text_encoder`` keeps the text encoder in host memory between prompts;
    ``offload_experts``: of a model whose experts take turns, only the one in use is on the device."""

    device: str = "cpu"
    dtype: object = "auto"
    encode_and_decode: bool = True
    offload_text_encoder: bool = False
    offload_experts: bool = False  # a two-expert model keeps the expert not in use in host memory


class Family(ABC):
    """What one model family tells the registry.  ``pipeline_classes``: the ``_class_name``s of the diffusers
    folders it renders; ``card_kinds``: the ``kind``s of ditfarm's own folders it renders; ``transformer_classes``:
    the transformer classes its folders may hold; ``defaults`` and ``video``: what a row and an mp4 get where the
    folder's card says nothing."""

    name: str
    renders: str  # what the family renders, as a user reads it in the list of families
    pipeline_classes: tuple[str, ...] = ()
    card_kinds: tuple[str, ...] = ()
    transformer_classes: tuple[str, ...] = ()
    defaults: SamplerSettings | None = None
    video: VideoDefaults = VideoDefaults(fps=16, upscale=1)
    # policy -> knob for a run that names none, where measured or published for this family; a folder's card
    # (``ditfarm calibrate defaults``) overrides it, ditfarm's global table (``cache.presets``) fills the rest
    cache_defaults: dict[str, float] = {}

    @abstractmethod
    def check_folder(self, folder: Path) -> dict:
        """Refuse a folder of this family that cannot be loaded as it is (naming the file and the problem), reading
        configs and weight headers only; returns its card ({} without one)."""

    @abstractmethod
    def load(self, folder: Path, card: dict, options: LoadOptions):
        """The loaded pipeline (a ``VideoPipelineMixin``) of a folder ``check_folder`` passed."""

    @abstractmethod
    def checks(self, folder: Path, card: dict) -> ModelChecks:
        """The rules the loaded pipeline would apply to a row, read from the folder without loading weights."""

    def small_folders(self, root: Path) -> dict[str, Path]:
        """Small random-weight folders of this family under ``root``, one per variant it renders (named), built
        with diffusers' own classes in seconds: what the family contract test renders, caches and profiles."""
        raise NotImplementedError(f"the {self.name} family builds no small folders for the family contract test")

    def bench_folder(self, root: Path, blocks: int) -> tuple[Path, int, int]:
        """A folder of the family's released transformer config with ``blocks`` of its blocks: (folder, blocks
        built, blocks released), what ``ditfarm bench gpu`` times a step of."""
        raise NotImplementedError(f"the {self.name} family has no bench folder")

    def bench_variants(self, root: Path, blocks: int, small: bool) -> dict[str, tuple[Path, int, int]]:
        """``ditfarm bench gpu``'s rows for this family, by name: (folder, blocks built, blocks released); ``small``:
        its small folders instead (the CPU test of the bench)."""
        if small:
            folder = next(iter(self.small_folders(Path(root) / self.name).values()))
            return {self.name: (folder, 1, 1)}
        return {self.name: self.bench_folder(Path(root), blocks)}

    # -- shared -----------------------------------------------------------------------------------------------
    def sampler_defaults(self, card: dict, variant: SamplerSettings | None = None) -> SamplerSettings:
        """The family's defaults (``variant``'s: those of the kind of folder it is) with the card's ``defaults``
        over them."""
        shipped = variant if variant is not None else self.defaults
        base = shipped.__dict__ if shipped is not None else {}
        values = {**base, **card.get("defaults", {})}
        fields = SamplerSettings.__dataclass_fields__
        missing = [f for f, spec in fields.items() if f not in values and spec.default is MISSING]
        if missing:
            raise ModelFolderError(f"{MODEL_CARD} of a {self.name} folder must set defaults for {', '.join(missing)}")
        return SamplerSettings(**{f: values[f] for f in fields if f in values})

    def reference_steps(self, card: dict) -> int | None:
        """The schedule length step-counted cache knobs mean: the family's own (a distilled folder's card keeps
        it unless it says ``cache.reference_steps``)."""
        return self.defaults.steps if self.defaults is not None else None

    def cache_settings(self, folder: Path, card: dict) -> ModelCacheSettings:
        """What the folder's card and the family say about caching (``pipelines.cache_card``); a malformed card
        section is refused naming the card."""
        path = str(Path(folder) / MODEL_CARD)
        try:
            return ModelCacheSettings.from_card(card, self.reference_steps(card), self.cache_defaults, self.name, path)
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFolderError(f"{path}: its cache section cannot be read: {err}") from None

    def video_defaults(self, card: dict, variant: VideoDefaults | None = None) -> VideoDefaults:
        """The family's mp4 defaults (``variant``'s) with the card's ``video`` over them."""
        return VideoDefaults(**{**(variant or self.video).__dict__, **card.get("video", {})})

    def describe(self) -> str:
        keys = [f"model_index.json {c}" for c in self.pipeline_classes]
        keys += [f"{MODEL_CARD} kind {k!r}" for k in self.card_kinds]
        return f"{self.name} ({self.renders}: {', '.join(keys)})"


_FAMILIES: dict[str, Family] = {}
_SCANNED = False


def register_family(family_class: type[Family]) -> type[Family]:
    """Class decorator: make a family known.  Two families may not claim the same folder class or card kind."""
    family = family_class()
    for other in _FAMILIES.values():
        if other.name == family.name:
            continue
        shared = set(other.pipeline_classes) & set(family.pipeline_classes) or (
            set(other.card_kinds) & set(family.card_kinds)
        )
        if shared:
            raise ValueError(f"families {other.name} and {family.name} both claim {', '.join(sorted(shared))}")
    _FAMILIES[family.name] = family
    return family_class


def families() -> list[Family]:
    """Every registered family, by name (the family modules are imported on first use)."""
    global _SCANNED
    if not _SCANNED:
        package = importlib.import_module(__package__ + ".families")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _SCANNED = True
    return [_FAMILIES[name] for name in sorted(_FAMILIES)]


def family_named(name: str) -> Family:
    for family in families():
        if family.name == name:
            return family
    raise ValueError(f"no model family is named {name!r}; ditfarm renders: {rendered_families()}")


def rendered_families() -> str:
    """The families ditfarm renders, for messages."""
    return "; ".join(f.describe() for f in families())


def family_of_folder(folder: Path) -> Family:
    """The family that renders ``folder``, or a ModelFolderError naming what the folder says it is and listing
    what ditfarm renders."""
    folder = Path(folder)
    index_path, card_path = folder / MODEL_INDEX, folder / MODEL_CARD
    if index_path.exists():
        class_name = read_json(index_path, "a diffusers model folder names its components there").get("_class_name")
        for family in families():
            if class_name in family.pipeline_classes:
                _check_transformer_class(folder, family)
                return family
        raise ModelFolderError(
            f"{index_path}: _class_name {class_name!r} is not supported: ditfarm renders {rendered_families()}"
        )
    if card_path.exists():
        kind = read_json(card_path, "ditfarm's model card").get("kind")
        for family in families():
            if kind in family.card_kinds:
                return family
        raise ModelFolderError(f"{card_path}: kind {kind!r} is not supported: ditfarm renders {rendered_families()}")
    raise ModelFolderError(
        f"{folder} is not a model folder ditfarm renders: it has neither {MODEL_INDEX} (a diffusers folder) nor "
        f"{MODEL_CARD} (a ditfarm folder); ditfarm renders {rendered_families()}"
    )


def _check_transformer_class(folder: Path, family: Family) -> None:
    """A folder of a known pipeline class whose transformer is of a class the family does not know is refused by
    name (diffusers would load it, and the family's loop and adapter would render it wrong)."""
    config = folder / "transformer" / "config.json"
    if not family.transformer_classes or not config.exists():
        return  # a missing transformer is the family's folder check to name
    try:
        class_name = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # so is an unreadable config
    if class_name not in family.transformer_classes:
        raise ModelFolderError(
            f"{config}: transformer class {class_name!r} is not one the {family.name} family renders "
            f"({', '.join(family.transformer_classes)})"
        )
