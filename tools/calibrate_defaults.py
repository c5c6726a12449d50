"""``ditfarm calibrate defaults``: each cache policy's default knob for one model, chosen on the model itself by one
rule, and written into its card (``ditfarm_model.json`` ``cache.defaults``) where loading, the dry run and every
results row read it.

The rule (``RULE``): render the calibration prompts uncached, then with half the steps uncached: a knob is
*faithful* when its renders' mean PSNR against the uncached ones is at least half steps' + 10 dB.  A policy's
default is its fastest faithful knob (fewest block computations; the more faithful of a tie); where no knob is
faithful, the most faithful knob that still skips at least 30% of its computations; where none skips that much,
the one that skips most.  A cache is worth its risk only where it beats simply running fewer steps by a wide
margin, and a default that skips next to nothing (ERTACache's paper lambda computed 28 of 30 steps on tiny) is no
default at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STEP_COUNTED = ("profiling", "taylorseer")  # knobs that are whole steps
FAITHFUL_MARGIN_DB = 10.0
MIN_SKIPPED = 0.3
RULE = (
    "the fastest knob at >= half steps + 10 dB PSNR; else the most faithful knob that skips >= 30%; "
    "else the one that skips most"
)
# the knobs tried per policy (the cache benchmark's grid); ERTACache's must be calibrated in the profile
GRID = {
    "bwcache": [0.1, 0.15, 0.2, 0.25, 0.3],
    "profiling": [2, 3, 4, 6, 8],
    "taylorseer": [2, 3, 4, 5, 6],
    "adaptive": [0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0],
    "ertacache": [0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4],
    "bac": [0.6, 0.5, 0.4, 0.33, 0.25],
    "harmonica": [0.01, 0.03, 0.1, 0.3],
}


@dataclass(frozen=True)
class Measured:
    """One knob on the calibration prompts: the share of block (or unit) computations it ran, and its mean PSNR
    against the uncached renders."""

    knob: float
    computed: float
    psnr: float


def pick(measured: list[Measured], bar_db: float) -> Measured:
    """The rule (module docstring) over one policy's knobs."""
    faithful = [m for m in measured if m.psnr >= bar_db]
    if faithful:
        return min(faithful, key=lambda m: (m.computed, -m.psnr))
    skipping = [m for m in measured if 1.0 - m.computed >= MIN_SKIPPED - 1e-9]
    if skipping:
        return max(skipping, key=lambda m: (m.psnr, -m.computed))
    return min(measured, key=lambda m: (m.computed, -m.psnr))


def calibrate_defaults(
    pipe, prompts: list[str], seeds: list[int], steps: int, profile, grid: dict, log=print
) -> tuple[dict, dict]:
    """(policy -> chosen knob, the evidence: the bar and every knob's measurement).  A policy the model cannot run
    as it is (no profile, no calibration at a knob, no router) is left out for that knob, and named in the log.

    A model whose experts take turns first gets one knob for all its experts; then each other expert's knob is
    chosen by the same rule with the first expert held at its knob, and kept where it differs (the evidence's
    ``experts``: component -> policy -> knob, for the card's ``cache.experts``)."""
    from ..cache import enable  # deferred: torch
    from ..cache.presets import build_config  # deferred: torch

    enable(pipe, None)
    references = [pipe.generate(p, seed=s, steps=steps) for p, s in zip(prompts, seeds)]
    half = [pipe.generate(p, seed=s, steps=max(1, steps // 2)) for p, s in zip(prompts, seeds)]
    half_db = float(np.mean([min(_psnr(r, h), 100.0) for r, h in zip(references, half)]))
    bar = half_db + FAITHFUL_MARGIN_DB
    log(f"uncached {steps} steps vs {max(1, steps // 2)}: {half_db:.2f} dB; a faithful knob reaches {bar:.2f} dB")
    chosen, evidence = {}, {"steps": steps, "prompts": list(prompts), "half_steps_db": half_db, "bar_db": bar}
    first, *others = pipe.transformers()
    experts: dict[str, dict] = {}
    for policy, knobs in grid.items():

        def configs(knob, held=None, expert=None, policy=policy):
            """One config for every expert, or ``expert`` at ``knob`` and the others at ``held``."""
            config = build_config(policy, knob, profile, pipe.cache_settings)
            if expert is None:
                return config
            shared = build_config(policy, held, profile, pipe.cache_settings)
            return {name: config if name == expert else shared for name in pipe.transformers()}

        measured = _measure(pipe, policy, knobs, configs, references, prompts, seeds, steps, log)
        if not measured:
            continue
        best = pick(measured, bar)
        chosen[policy] = int(best.knob) if policy in STEP_COUNTED else best.knob
        evidence[policy] = [m.__dict__ for m in measured]
        log(f"{policy}: default {best.knob:g} (computed {best.computed:.1%}, {best.psnr:.2f} dB)")
        for expert in others:
            own = _measure(
                pipe,
                f"{policy} ({expert}; {first} at {chosen[policy]:g})",
                knobs,
                lambda knob, expert=expert, held=chosen[policy]: configs(knob, held, expert),
                references,
                prompts,
                seeds,
                steps,
                log,
            )
            if not own:
                continue
            best = pick(own, bar)
            evidence.setdefault("expert_measurements", {}).setdefault(expert, {})[policy] = [m.__dict__ for m in own]
            if best.knob != chosen[policy]:
                experts.setdefault(expert, {})[policy] = int(best.knob) if policy in STEP_COUNTED else best.knob
                log(f"{policy}: {expert} default {best.knob:g} (computed {best.computed:.1%}, {best.psnr:.2f} dB)")
    if experts:
        evidence["experts"] = experts
    return chosen, evidence


def _psnr(a, b) -> float:
    from ..cache.metrics import psnr  # deferred: torch

    return psnr(a, b)


def _measure(pipe, what: str, knobs, configs, references, prompts, seeds, steps, log) -> list[Measured]:
    """Each knob's share of computations and PSNR against the uncached renders; a knob the model cannot run as it
    is (``configs`` raises) is named in the log and left out."""
    from ..cache import enable, last_video_stats  # deferred: torch

    measured = []
    for knob in knobs:
        try:
            config = configs(knob)
        except (ValueError, FileNotFoundError) as err:
            log(f"{what} {knob:g}: not run ({err})")
            continue
        enable(pipe, config)
        computed, quality = [], []
        for reference, prompt, seed in zip(references, prompts, seeds):
            frames = pipe.generate(prompt, seed=seed, steps=steps)
            computed.append(1.0 - last_video_stats(pipe).skipped_fraction)
            quality.append(min(_psnr(reference, frames), 100.0))  # identical renders count as 100 dB
        enable(pipe, None)
        m = Measured(knob, float(np.mean(computed)), float(np.mean(quality)))
        log(f"{what} {knob:g}: computed {m.computed:.1%}, {m.psnr:.2f} dB")
        measured.append(m)
    return measured


def write_card(card_path: Path, chosen: dict, evidence: dict) -> None:
    """The card with ``cache.defaults`` (and the rule and evidence they came from) replaced; other keys kept."""
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    section = card.setdefault("cache", {})
    section["defaults"] = chosen
    section["defaults_rule"] = (
        f"ditfarm calibrate defaults: {RULE} ({evidence['bar_db']:.1f} dB on {len(evidence['prompts'])} prompts, "
        f"{evidence['steps']} steps)"
    )
    section["defaults_evidence"] = evidence
    experts = section.get("experts", {})
    for part in experts.values():  # each expert's own knobs are chosen again with the shared ones
        part.pop("defaults", None)
    for name, knobs in evidence.get("experts", {}).items():
        experts.setdefault(name, {})["defaults"] = knobs
    experts = {name: part for name, part in experts.items() if part}
    if experts:
        section["experts"] = experts
    else:
        section.pop("experts", None)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
