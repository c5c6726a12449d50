"""Fidelity of every family with a diffusers pipeline against that pipeline itself, caching off: the PSNR of
ditfarm's render of a small random-weight folder (each family's ``small_folders``) against diffusers' own render
of the same folder, prompt, negative prompt, seed and sizes (>= 60 dB is exact; the 8-bit frames' rounding
alone allows about 90).  Prints a table and writes JSON.

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


def diffusers_render(class_name: str, folder: Path, card: dict, negative: str | None) -> np.ndarray:
    import diffusers
    import torch

    pipe = getattr(diffusers, class_name).from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    d = card["defaults"]
    out = pipe(
        PROMPT,
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
    return {"guidance_scale": card["defaults"]["guidance_scale"], "max_sequence_length": card["max_sequence_length"]}


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
    print(
        harness.markdown_table(
            ["family", "variant", "diffusers pipeline", "PSNR (dB)"],
            [[r["family"], r["variant"], r["pipeline"], f"{r['psnr_db']:.1f}"] for r in rows],
        )
    )
    harness.write_result(args.json, {"steps": STEPS, "seed": SEED, "rows": rows})


if __name__ == "__main__":
    main()
