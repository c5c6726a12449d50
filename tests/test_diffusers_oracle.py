"""With caching off, ditfarm renders what diffusers' own pipeline renders for the same folder, prompt, negative
prompt, seed and sizes (>= 60 dB), for every family with a diffusers pipeline; a detail the family's pipeline
file gets wrong (a mask, rotary positions, the scheduler's noise) moves the video far below that."""

import pytest
from oracle import diffusers_frames

from ditfarm.cache.metrics import psnr
from ditfarm.pipelines.loading import load_pipeline

pytestmark = [pytest.mark.slow]

EXACT_DB = 60.0


def test_wan_renders_what_diffusers_wan_pipeline_renders(small_wan_folder):
    from diffusers import WanPipeline

    call = dict(num_frames=9, height=64, width=64, guidance_scale=5.0)
    ours = load_pipeline(small_wan_folder).generate(
        "red cat moving left", seed=3, steps=4, negative_prompt="blue sky", **call
    )
    theirs = diffusers_frames(
        WanPipeline,
        small_wan_folder,
        "red cat moving left",
        3,
        negative_prompt="blue sky",
        num_inference_steps=4,
        max_sequence_length=32,
        **call,
    )
    assert ours.shape == theirs.shape
    assert psnr(ours, theirs) >= EXACT_DB
