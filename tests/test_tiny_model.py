"""The shipped tiny model itself: it follows held-out prompts, and its own outputs give usable foreground masks."""

import numpy as np

from ditfarm.cache import CacheProfile, model_identity
from ditfarm.cache.profiler import check_masks_on_references
from ditfarm.pipelines.tiny.adherence import evaluate, held_out_cases, summarise
from ditfarm.pipelines.tiny.scenes import render_scene


def test_tiny_follows_held_out_prompts(tiny_pipe):
    # a smaller sample than the benchmark's 60 (BENCHMARKS.md), with a margin for its larger sampling error
    summary = summarise(evaluate(tiny_pipe, held_out_cases(16, seed=2024)))
    assert summary["foreground_colour"] >= 0.75
    assert summary["direction"] >= 0.75
    assert summary["background_colour"] >= 0.75


def test_foreground_masks_from_the_model_match_the_generator(tiny_pipe):
    scenes = [render_scene(spec, np.random.default_rng(seed)) for spec, seed in held_out_cases(8, seed=31)]
    assert check_masks_on_references(tiny_pipe, scenes) >= 0.6


def test_shipped_profile_belongs_to_the_shipped_model(tiny_pipe):
    profile = CacheProfile.load(tiny_pipe.default_cache_profile())
    assert profile.model == model_identity(tiny_pipe.transformer)
    assert profile.mask_iou is not None and profile.mask_iou >= 0.6
    assert 0 < len(profile.foreground_blocks) < len(profile.blocks)
