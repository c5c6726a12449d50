"""``tiny``: ditfarm's own built-in model (``ditfarm.pipelines.tiny``), a folder whose card says ``kind: tiny``."""

from __future__ import annotations

import json
from pathlib import Path

from ..base import VideoDefaults
from ..cache_card import shipped_profile
from ..checks import DEFAULT_ROPE_POSITIONS, TINY_LIMITS, ModelChecks, card_limits, check_patch_grid
from ..family import MODEL_CARD, Family, LoadOptions, register_family
from ..folder_checks import read_json
from ..precision import resolve_precision


@register_family
class TinyFamily(Family):
    name = "tiny"
    renders = "ditfarm's built-in model and folders trained like it"
    card_kinds = ("tiny",)
    transformer_classes = ("WanTransformer3DModel",)

    def check_folder(self, folder: Path) -> dict:
        card = read_json(Path(folder) / MODEL_CARD, "ditfarm's model card")
        self.sampler_defaults(card)  # a tiny card names every default itself
        return card

    def load(self, folder: Path, card: dict, options: LoadOptions):
        from ..tiny.pipeline import TinyVideoPipeline  # deferred: diffusers

        # tiny's word encoder is also its vocabulary: every rank keeps it to refuse a bad row alike (8 KB)
        precision = resolve_precision(options.dtype, options.device)
        return TinyVideoPipeline.from_folder(folder, device=options.device, dtype=precision.transformer)

    def checks(self, folder: Path, card: dict) -> ModelChecks:
        from ..tiny.weights import VIDEO_DEFAULTS, load_text_encoder  # deferred: diffusers

        transformer = json.loads((Path(folder) / "transformer" / "config.json").read_text())
        patch = tuple(transformer.get("patch_size", (1, 2, 2)))
        rope = transformer.get("rope_max_seq_len", DEFAULT_ROPE_POSITIONS)
        defaults = self.sampler_defaults(card)
        limits = card_limits(card, TINY_LIMITS, str(Path(folder) / MODEL_CARD))
        return ModelChecks(
            defaults,
            lambda s: check_patch_grid(s, patch, rope, limits),
            load_text_encoder(folder).token_ids,
            None,
            shipped_profile(folder),
            video=VideoDefaults(**{**VIDEO_DEFAULTS, **card.get("video", {})}),
        )

    def reference_steps(self, card: dict) -> int | None:
        return self.sampler_defaults(card).steps  # a tiny folder's own schedule

    def small_folders(self, root: Path) -> dict[str, Path]:
        from ..tiny.weights import BUNDLED_FOLDER  # deferred: diffusers

        return {"tiny": BUNDLED_FOLDER}  # tiny is small: its own trained folder
