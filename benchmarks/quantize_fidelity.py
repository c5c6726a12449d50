"""Fidelity of quantized transformer weights (``--quantize int8``) against the same model's unquantized renders:
the mean PSNR over a few prompts and seeds, for the built-in tiny model (trained weights, its default steps) and
a small random-weight Wan2.1 folder, with and without a LoRA applied on top.  Prints a table and writes JSON.

    python benchmarks/quantize_fidelity.py --json benchmarks/quantize-fidelity.json

fp8 needs a GPU that computes in it; `ditfarm bench gpu` is where its speed and memory belong.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import harness
import numpy as np

TINY_PROMPTS = [
    "red circle moving left on blue background",
    "white square moving up on green gradient background",
    "yellow triangle moving right on black background",
]
WAN_PROMPTS = ["red cat moving left", "blue sky over green field", "a dog running on the street"]


def mean_psnr(plain, quantized, prompts: list[str], steps: int | None, lora: str | None = None) -> float:
    from ditfarm.cache.metrics import psnr

    values = []
    for seed, prompt in enumerate(prompts):
        a = plain.generate(prompt, seed=seed, steps=steps, lora=lora)
        b = quantized.generate(prompt, seed=seed, steps=steps, lora=lora)
        values.append(min(psnr(a, b), 100.0))
    return float(np.mean(values))


def main() -> None:
    args = harness.parser(__doc__).parse_args()
    harness.pin_threads(args.threads)
    from ditfarm.pipelines.families.wan import make_small_wan_folder
    from ditfarm.pipelines.lora import make_random_lora
    from ditfarm.types import RenderSettings
    from ditfarm.worker.model import load_model

    rows = []
    with tempfile.TemporaryDirectory() as root:
        models = {
            "tiny": ("tiny", TINY_PROMPTS, None),
            "wan2.1 (small random folder)": (str(make_small_wan_folder(Path(root) / "wan")), WAN_PROMPTS, 8),
        }
        for name, (model, prompts, steps) in models.items():
            plain = load_model(RenderSettings(model=model)).pipe
            quantized = load_model(RenderSettings(model=model, quantize="int8")).pipe
            lora = str(make_random_lora(plain.transformer, Path(root) / f"{len(rows)}.safetensors", std=0.1))
            for with_lora in (None, lora):
                db = mean_psnr(plain, quantized, prompts, steps, with_lora)
                rows.append(
                    {"model": name, "quantize": "int8", "lora": bool(with_lora), "videos": len(prompts), "psnr_db": db}
                )
    print(
        harness.markdown_table(
            ["model", "weights", "LoRA", "videos", "PSNR vs unquantized (dB)"],
            [
                [r["model"], r["quantize"], "yes" if r["lora"] else "no", r["videos"], f"{r['psnr_db']:.1f}"]
                for r in rows
            ],
        )
    )
    harness.write_result(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
