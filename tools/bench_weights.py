"""``ditfarm bench gpu``'s weights section: what per-row LoRAs and quantized weights cost on the Wan2.1-1.3B shapes.

A dataset job switches LoRAs between rows and may render on int8 or fp8 weights; what matters there is the price
of a switch, what an active LoRA adds to a step, and what quantized blocks save in time and memory.  Each row
times ditfarm's loop (two CFG calls per step) on a fresh transformer of the 1.3B config with random weights:

- ``bf16 eager``, then ``+ LoRA``: a LoRA active as a peft adapter (its low-rank update computed beside each
  adapted layer).  The LoRA's switch costs: its first load (the file read, converted and put into the model),
  a switch between two loaded LoRAs (``set_adapters``: nothing read), and the switch back to the base model.
- ``bf16 compiled``, then ``+ LoRA slot``: compiled blocks hold the LoRAs in one hotswapped slot
  (``pipelines.lora.LoraSlots``); the first LoRA builds the blocks' graphs once more (its warm-up), a switch
  copies weights into the slot, and the graphs the switches built are counted (none is the design).
- ``int8`` and ``fp8`` weight-only blocks (``pipelines.quantize``, torchao), eager and compiled; fp8 where the
  device computes in it, else a row that says why not.  Beside each: the GPU memory the model holds.

The LoRA is random (no trained one can be downloaded), of rank ``LORA_RANK`` on every attention projection and
both feed-forward layers of every block, as the Wan LoRAs users load are shaped.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..pipelines.lora import LoraChoice, LoraSlots, make_random_lora
from ..pipelines.quantize import check_quantization, quantize_blocks
from .bench_timing import Budget, ditfarm_loop, latent_shape, random_transformer, seconds_per_step, synchronize

LORA_RANK = 32
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
SWITCHES = 6  # switches timed between two loaded LoRAs (the median is reported)


def weight_rows(shapes, device, dtype, args, budget: Budget, log) -> dict:
    """The section's rows: each on a fresh transformer (quantizing and compiling change it in place)."""
    config = shapes.transformer_1_3b
    frames, height, width = shapes.video_1_3b
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(latent_shape(frames, height, width), generator=gen).to(device)
    cond, uncond = (torch.randn(1, shapes.text_tokens, config["text_dim"], generator=gen) for _ in range(2))
    inputs = (latents, cond.to(device, dtype), uncond.to(device, dtype))
    rows: list[dict] = []

    def fresh(quantize: str | None = None, compile_backend: str | None = None):
        from ..pipelines.compile import compile_blocks  # deferred: diffusers

        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        transformer = random_transformer(config, config["num_layers"], device, dtype)
        if quantize:
            quantize_blocks(transformer, quantize)
        if compile_backend:
            compile_blocks(transformer, backend=compile_backend)
        return transformer

    def timed(method: str, quantize: str | None = None, compile_backend: str | None = None, lora: bool = False):
        """One row on a fresh model (``lora``: two LoRAs loaded and their switch costs measured first); a
        failure is the row's finding, and the next row still runs."""
        if budget.left < args.reserve_seconds:
            rows.append({"method": method, "skipped": "time budget"})
            log(f"  {method}: skipped (time budget)")
            return
        transformer = None
        try:
            transformer = fresh(quantize, compile_backend)
            figures = with_loras(transformer, compiled=compile_backend is not None) if lora else {}
            held = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            per_step, warmup = seconds_per_step(ditfarm_loop, transformer, inputs, args.steps, args.repeats, device)
            row = {"method": method, "seconds_per_step": per_step, "warmup_seconds": warmup}
            if held is not None:
                row["model_gpu_bytes"] = held
                row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
            row.update(figures)
        except Exception as err:  # noqa: BLE001 - one row's failure is a finding; the other rows still run
            row = {"method": method, "error": f"{type(err).__name__}: {err}"[:2000]}
        rows.append(row)
        log(f"  {method}: {row}")
        del transformer

    with tempfile.TemporaryDirectory(prefix="ditfarm-bench-loras-") as tmp:
        loras: list[str] = []

        def with_loras(transformer, compiled: bool = False):
            """Load two LoRAs, leave the first active, and return the switch costs measured on the way."""
            from diffusers.loaders import WanLoraLoaderMixin  # deferred: diffusers

            from ..pipelines.compile import compiled_graphs  # deferred: diffusers

            if not loras:
                for seed in range(2):
                    path = Path(tmp) / f"lora-{seed}.safetensors"
                    make_random_lora(transformer, path, rank=LORA_RANK, seed=seed, std=0.01, targets=LORA_TARGETS)
                    loras.append(str(path))
            slots = LoraSlots(WanLoraLoaderMixin, {"transformer": transformer})

            def switch(choice) -> float:
                synchronize(device)
                start = time.perf_counter()
                slots.use(choice)
                synchronize(device)
                return time.perf_counter() - start

            first, second = (LoraChoice(path) for path in loras)
            figures = {"lora_rank": LORA_RANK, "first_load_seconds": switch(first)}
            figures["second_load_seconds"] = switch(second)
            if compiled:  # the first LoRA's graphs: built by one step, before the switches are counted
                ditfarm_loop(transformer, *inputs, 1, 5.0)
            graphs = compiled_graphs()
            times = [switch(first if i % 2 == 0 else second) for i in range(SWITCHES)]
            figures["switch_seconds"] = statistics.median(times)
            figures["to_base_seconds"] = switch(None)
            figures["back_seconds"] = switch(first)
            if compiled:
                ditfarm_loop(transformer, *inputs, 1, 5.0)  # a step after the switches: any graph they force
                figures["graphs_built_by_switches"] = compiled_graphs() - graphs
            figures["lora_loads"] = slots.loads
            return figures

        timed("bf16 eager")
        timed("bf16 eager + LoRA", lora=True)
        timed("bf16 compiled", compile_backend=args.compile_backend)
        timed("bf16 compiled + LoRA slot", compile_backend=args.compile_backend, lora=True)
    for kind in ("int8", "fp8"):
        refused = quantization_refused(kind, device)
        if refused:
            rows.append({"method": kind, "refused": refused})
            log(f"  {kind}: refused ({refused})")
            continue
        timed(f"{kind} eager", quantize=kind)
        timed(f"{kind} compiled", quantize=kind, compile_backend=args.compile_backend)
    torch._dynamo.reset()
    return {"video": [frames, height, width], "blocks": config["num_layers"], "weight_rows": rows}


def quantization_refused(kind: str, device) -> str | None:
    """Why ``kind`` cannot run on ``device`` (the message a render would give), or None."""

    try:
        check_quantization(kind, device)
    except ValueError as err:
        return str(err)
    return None


def markdown_lines(section: dict) -> list[str]:
    lines = ["| method | s/step | vs bf16 eager | model GiB | peak GiB | switch costs |", "|---|---|---|---|---|---|"]
    base = next(
        (
            r["seconds_per_step"]
            for r in section["weight_rows"]
            if r["method"] == "bf16 eager" and "seconds_per_step" in r
        ),
        None,
    )
    for r in section["weight_rows"]:
        if "seconds_per_step" not in r:
            why = r.get("error") or r.get("refused") or r.get("skipped")
            lines.append(f"| {r['method']} | {why[:100]} | | | | |")
            continue
        vs = f"{r['seconds_per_step'] / base:.3f}" if base else ""
        held = f"{r['model_gpu_bytes'] / 2**30:.2f}" if "model_gpu_bytes" in r else ""
        peak = f"{r['peak_gpu_bytes'] / 2**30:.1f}" if "peak_gpu_bytes" in r else ""
        costs = ""
        if "switch_seconds" in r:
            costs = (
                f"load {r['first_load_seconds']:.2f} s, switch {r['switch_seconds']:.3f} s, "
                f"to base {r['to_base_seconds']:.3f} s"
            )
            if "graphs_built_by_switches" in r:
                costs += f", graphs by switches {r['graphs_built_by_switches']}"
        lines.append(f"| {r['method']} | {r['seconds_per_step']:.3f} | {vs} | {held} | {peak} | {costs} |")
    return lines
