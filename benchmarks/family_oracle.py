"""Fidelity of every family with a diffusers pipeline against that pipeline itself, caching off: the PSNR of
ditfarm's render of a small random-weight folder (each family's ``small_folders``) against diffusers' own render
of the same folder, prompt, negative prompt, seed and sizes (>= 60 dB is exact; the 8-bit frames' rounding
alone allows about 90); and Wan's image-to-video kinds against WanImageToVideoPipeline with the same first (and
last) frame.  Prints a table and writes JSON.

    python benchmarks/family_oracle.py --json benchmarks/family-oracle.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import harness
import numpy as np

PROMPT, NEGATIVE, SEED, STEPS = "red cat moving left", "blue sky", 3, 4
PIPELINES = {
    "wan": "WanPipeline",
    "cogvideox": "CogVideoXPipeline",
    "hunyuan_video": "HunyuanVideoPipeline",
    "hunyuan_video15": "HunyuanVideo15Pipeline",
}
EMBEDDED_GUIDANCE = {"hunyuan_video"}  # guidance-distilled: no negative pass (ditfarm refuses a negative prompt)


def diffusers_render(class_name: str, folder: Path, card: dict, negative: str | None, **images) -> np.ndarray:
    import diffusers
    import torch

    pipe = getattr(diffusers, class_name).from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    d = card["defaults"]
    out = pipe(
        prompt=PROMPT,
        **images,
        negative_prompt=negative,
        num_frames=d["num_frames"],
        height=d["height"],
        width=d["width"],
        num_inference_steps=STEPS,
        **text_settings(card),
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    )
    return np.round(np.asarray(out.frames[0]) * 255.0).astype(np.uint8)


def text_settings(card: dict) -> dict:
    """The call's guidance and text length where the pipeline takes them (HunyuanVideo 1.5's come from its folder:
    its guider's scale, its fixed token counts)."""
    if "guidance_scale" not in card["defaults"]:
        return {}
    second = {k: v for k, v in card["defaults"].items() if k == "guidance_scale_2"}  # two experts: the card's
    return {
        "guidance_scale": card["defaults"]["guidance_scale"],
        "max_sequence_length": card["max_sequence_length"],
        **second,
    }


def image(seed: int, height: int, width: int):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def image_kinds(root: Path) -> dict:
    """Wan's kinds that render from images: (folder, the images a row gives)."""
    from ditfarm.pipelines.families import wan

    first, last = image(0, 48, 80), image(1, 40, 40)
    return {
        "wan2.1-i2v": (wan.make_small_wan_i2v_folder(root / "i2v"), {"image": first}),
        "wan2.1-flf2v": (
            wan.make_small_wan_i2v_folder(root / "flf2v", first_last=True),
            {"image": first, "last_image": last},
        ),
        "wan2.2-i2v-a14b": (wan.make_small_wan22_i2v_a14b_folder(root / "i2v-a14b"), {"image": first}),
        "wan2.2-ti2v-5b + image": (wan.make_small_wan22_ti2v_folder(root / "ti2v"), {"image": first}),
    }


def main() -> None:
    args = harness.parser(__doc__).parse_args()
    harness.pin_threads(args.threads)
    import json

    from ditfarm.cache.metrics import psnr
    from ditfarm.pipelines.family import family_named
    from ditfarm.pipelines.loading import load_pipeline

    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, class_name in PIPELINES.items():
            for variant, folder in family_named(name).small_folders(Path(root) / name).items():
                card = json.loads((folder / "ditfarm_model.json").read_text())
                negative = None if name in EMBEDDED_GUIDANCE else NEGATIVE
                ours = load_pipeline(folder).generate(PROMPT, seed=SEED, steps=STEPS, negative_prompt=negative or "")
                theirs = diffusers_render(class_name, folder, card, negative)
                rows.append({"family": name, "variant": variant, "pipeline": class_name, "psnr_db": psnr(ours, theirs)})
        for variant, (folder, images) in image_kinds(Path(root) / "wan-images").items():
            card = json.loads((folder / "ditfarm_model.json").read_text())
            ours = load_pipeline(folder).generate(PROMPT, seed=SEED, steps=STEPS, negative_prompt=NEGATIVE, **images)
            theirs = diffusers_render("WanImageToVideoPipeline", folder, card, NEGATIVE, **images)
            row = {"family": "wan", "variant": variant, "pipeline": "WanImageToVideoPipeline"}
            rows.append({**row, "psnr_db": psnr(ours, theirs)})
    print(
        harness.markdown_table(
            ["family", "variant", "diffusers pipeline", "PSNR (dB)"],
            [[r["family"], r["variant"], r["pipeline"], f"{r['psnr_db']:.1f}"] for r in rows],
        )
    )
    harness.write_result(args.json, {"steps": STEPS, "seed": SEED, "rows": rows})


if __name__ == "__main__":
    main()
