"""What every benchmark in this folder shares: its command line (``--json``; ``--threads`` where it renders), one
torch thread by default (a busy 2-core machine runs several threads many times slower than one), the machine it
ran on, CPU meters, and the result file, which records the machine, the date and the command beside the figures
(BENCHMARKS.md cites each figure with all three).

A benchmark is one file here: ``python benchmarks/NAME.py ...``, importing this module as ``harness``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parser(doc: str, threads: bool = True, json_default: Path | None = None) -> argparse.ArgumentParser:
    """The benchmark's argument parser, its docstring as the description, with ``--json`` (and ``--threads``)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=json_default, help="write the result here")
    if threads:
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable timings)")
    return p


def pin_threads(threads: int = 1) -> None:
    """torch's threads in this process, and OMP's for the processes it starts."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


def machine() -> str:
    """The machine in words: cores, CPU model, Python, torch (when imported)."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    torch = sys.modules.get("torch")
    with_torch = f", torch {torch.__version__}" if torch is not None else ""
    return f"{os.cpu_count()} cores ({model}), {platform.machine()}, Python {platform.python_version()}{with_torch}"


def write_result(path: Path | None, result: dict) -> dict:
    """``result`` with the machine, the date and the command added, written as JSON to ``path`` (if given)."""
    result = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        **result,
    }
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def append_line(path: Path, row: dict) -> None:
    """One JSON line of a long-running search, so a run cut short keeps what it found."""
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class CpuMeter:
    """CPU seconds over an interval: named processes (optionally with their children, e.g. ffmpeg) and the whole
    machine (every process, anyone's)."""

    MACHINE = "machine (all processes)"

    def __init__(self, pids: dict[str, list[int]], children: bool = False):
        import psutil

        self.children = children
        self.procs = {name: [psutil.Process(p) for p in ps] for name, ps in pids.items()}
        self.start = self.read()

    def read(self) -> dict[str, float]:
        import psutil

        out = {}
        for name, procs in self.procs.items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system + ((t.children_user + t.children_system) if self.children else 0.0)
                except psutil.Error:
                    total = float("nan")
            out[name] = total
        t = psutil.cpu_times()
        out[self.MACHINE] = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        return out

    def per_video_ms(self, videos: int) -> dict[str, float]:
        end = self.read()
        return {k: round(1000 * (end[k] - self.start[k]) / videos, 2) for k in end}

    def cores(self, seconds: float) -> dict[str, float]:
        end = self.read()
        return {k: round((end[k] - self.start[k]) / seconds, 2) for k in end}
