"""What switching LoRAs between rows costs on `tiny`: eager adapters and compiled blocks' hotswapped slot.

One pipeline of `tiny` (loaded as a run loads it, ``--compile`` or not) and three random LoRAs of rank 8 on every
attention projection and FFN layer.  Timed with ``pipe.use_lora`` (what a row with a LoRA does before its loop):

- ``first load``: a LoRA read from its file and put into the model (each of the three once);
- ``switch``: between LoRAs already loaded (eager: ``set_adapters``; compiled: weights copied into the slot);
- ``to base``: back to the base model (eager: adapters disabled; compiled: the slot at scale 0).

And per video (``--steps`` steps, the card's size, guidance on): seconds of the base model and of a video with a
LoRA active (an unfused adapter computes its low-rank update beside each layer it adapts), and with ``--compile``
the graphs built by the switches after the first LoRA (none is the design).  ``--videos`` rounds alternate the
three LoRAs and the base model; medians are reported.

    python benchmarks/lora_switch.py --json benchmarks/lora-switch.json
    python benchmarks/lora_switch.py --compile eager --json benchmarks/lora-switch-compile.json
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import harness

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
PROMPT = "red circle moving left on blue background"


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--compile", nargs="?", const="inductor", default=None, help="torch.compile backend of the blocks")
    p.add_argument("--videos", type=int, default=4, help="rounds of base, LoRA 0, 1, 2")
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()
    harness.pin_threads(args.threads)

    from ditfarm.pipelines.compile import compiled_graphs
    from ditfarm.pipelines.lora import make_random_lora
    from ditfarm.types import RenderSettings
    from ditfarm.worker.model import load_model

    pipe = load_model(RenderSettings(model="tiny", compile=args.compile)).pipe
    timings: dict[str, list[float]] = {"first load": [], "switch": [], "to base": []}
    videos: dict[str, list[float]] = {"base": [], "lora": []}

    def use(kind: str, lora: str | None) -> None:
        start = time.perf_counter()
        pipe.use_lora(lora)
        timings[kind].append(time.perf_counter() - start)

    def video(kind: str) -> None:
        start = time.perf_counter()
        pipe.generate(PROMPT, seed=0, steps=args.steps, lora=None if kind == "base" else pipe._lora_slots.active.source)
        videos[kind].append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as folder:
        loras = [
            str(
                make_random_lora(
                    pipe.transformer, Path(folder) / f"lora-{i}.safetensors", rank=8, seed=i, targets=TARGETS
                )
            )
            for i in range(3)
        ]
        pipe.generate(PROMPT, seed=0, steps=args.steps)  # warm-up: the base model's graphs, the first allocations
        for lora in loras:
            use("first load", lora)
            pipe.generate(PROMPT, seed=0, steps=args.steps)  # with --compile: the first LoRA builds its graphs
        graphs = compiled_graphs()
        for _ in range(args.videos):
            use("to base", None)
            video("base")
            for lora in loras:
                use("switch", lora)
                video("lora")
        graphs_by_switches = compiled_graphs() - graphs
    rows = [[kind, len(times), f"{statistics.median(times) * 1000:.1f}"] for kind, times in timings.items()]
    rows += [[f"video, {kind}", len(times), f"{statistics.median(times) * 1000:.0f}"] for kind, times in videos.items()]
    print(harness.markdown_table(["what", "n", "median ms"], rows))
    print(f"graphs built by switches after the first LoRA: {graphs_by_switches}")
    harness.write_result(
        args.json,
        {
            "compile": args.compile,
            "steps": args.steps,
            "lora_rank": 8,
            "median_seconds": {kind: statistics.median(t) for kind, t in {**timings, **videos}.items()},
            "counts": {kind: len(t) for kind, t in {**timings, **videos}.items()},
            "graphs_built_by_switches": graphs_by_switches,
            "lora_loads": pipe._lora_slots.loads,
        },
    )


if __name__ == "__main__":
    main()
