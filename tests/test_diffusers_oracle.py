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


WAN22_CALL = dict(num_frames=9, height=64, width=64, guidance_scale=4.0, negative_prompt="blue sky")


def wan22_oracle(folder, **call):
    from diffusers import WanPipeline

    return diffusers_frames(
        WanPipeline, folder, "red cat moving left", 3, num_inference_steps=6, max_sequence_length=32, **call
    )


def test_wan22_a14b_renders_what_diffusers_renders_and_each_expert_and_its_guidance_count(
    small_wan22_a14b_folder, monkeypatch
):
    """Both experts and the second expert's own guidance scale: dropping either moves the video far below 60 dB."""
    from ditfarm.pipelines.families.wan import WanSteps

    call = {**WAN22_CALL, "guidance_scale_2": 2.0}
    theirs = wan22_oracle(small_wan22_a14b_folder, **call)
    pipe = load_pipeline(small_wan22_a14b_folder)
    assert list(pipe.transformers()) == ["transformer", "transformer_2"]
    ours = pipe.generate("red cat moving left", seed=3, steps=6, **call)
    assert ours.shape == theirs.shape == (9, 64, 64, 3)
    assert psnr(ours, theirs) >= EXACT_DB
    first_scale = {k: v for k, v in call.items() if k != "guidance_scale_2"}
    assert psnr(pipe.generate("red cat moving left", seed=3, steps=6, **first_scale), theirs) < EXACT_DB - 5
    monkeypatch.setattr(WanSteps, "transformer_at", lambda self, i: self.experts[0])
    assert psnr(pipe.generate("red cat moving left", seed=3, steps=6, **call), theirs) < EXACT_DB - 5


def test_wan22_ti2v_renders_what_diffusers_renders(small_wan22_ti2v_folder):
    theirs = wan22_oracle(small_wan22_ti2v_folder, **WAN22_CALL)
    pipe = load_pipeline(small_wan22_ti2v_folder)
    assert pipe.vae_factors == (4, 16)
    ours = pipe.generate("red cat moving left", seed=3, steps=6, **WAN22_CALL)
    assert ours.shape == theirs.shape == (9, 64, 64, 3)
    assert psnr(ours, theirs) >= EXACT_DB


def random_image(seed: int, height: int, width: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_wan_image_folders_render_what_diffusers_image_to_video_renders_and_each_image_counts(
    small_wan_image_folder,
):
    """Wan2.1 image-to-video and first-last-frame, Wan2.2 A14B image-to-video (two experts, its own second scale)
    and TI2V-5B with a first frame, against diffusers' WanImageToVideoPipeline on the same folder and images
    (resized by the pipeline: neither is the video's size); another first frame, another last frame, or the
    first frame left out each move the video far below 60 dB."""
    from diffusers import WanImageToVideoPipeline

    kind, folder = small_wan_image_folder
    first, last = random_image(0, 48, 80), random_image(1, 40, 40)
    call = {**WAN22_CALL, "image": first}
    if kind == "wan2.1-flf2v":
        call["last_image"] = last
    if kind == "wan2.2-i2v-a14b":
        call["guidance_scale_2"] = 2.0
    theirs = diffusers_frames(
        WanImageToVideoPipeline,
        folder,
        "red cat moving left",
        3,
        num_inference_steps=6,
        max_sequence_length=32,
        **call,
    )
    pipe = load_pipeline(folder)
    ours = pipe.generate("red cat moving left", seed=3, steps=6, **call)
    assert ours.shape == theirs.shape == (9, 64, 64, 3)
    assert psnr(ours, theirs) >= EXACT_DB, (kind, psnr(ours, theirs))
    other = pipe.generate("red cat moving left", seed=3, steps=6, **{**call, "image": random_image(2, 48, 80)})
    assert psnr(other, theirs) < EXACT_DB - 5, kind
    if kind == "wan2.1-flf2v":
        other = pipe.generate("red cat moving left", seed=3, steps=6, **{**call, "last_image": random_image(3, 40, 40)})
        assert psnr(other, theirs) < EXACT_DB - 5, kind
    if kind == "wan2.2-ti2v-5b":  # text-to-video on the same folder: the first frame is not held
        text_only = {k: v for k, v in call.items() if k != "image"}
        assert psnr(pipe.generate("red cat moving left", seed=3, steps=6, **text_only), theirs) < EXACT_DB - 5
    if kind == "wan2.2-i2v-a14b":
        same_scale = {k: v for k, v in call.items() if k != "guidance_scale_2"}
        assert psnr(pipe.generate("red cat moving left", seed=3, steps=6, **same_scale), theirs) < EXACT_DB - 5


COG_CALL = dict(num_frames=9, height=64, width=64, guidance_scale=6.0)


def cogvideox_oracle(folder):
    from diffusers import CogVideoXPipeline

    return diffusers_frames(
        CogVideoXPipeline,
        folder,
        "red cat moving left",
        3,
        negative_prompt="blue sky",
        num_inference_steps=4,
        max_sequence_length=16,
        **COG_CALL,
    )


def cogvideox_ours(folder):
    return load_pipeline(folder).generate(
        "red cat moving left", seed=3, steps=4, negative_prompt="blue sky", **COG_CALL
    )


def test_cogvideox_renders_what_diffusers_cogvideox_pipeline_renders(small_cogvideox_folder):
    """2B (built-in positions, DDIM), 5B (rotary positions, DPM drawing noise during its steps) and 1.5 (its latent
    frames padded to its temporal patches, the padding dropped before decoding)."""
    ours, theirs = cogvideox_ours(small_cogvideox_folder), cogvideox_oracle(small_cogvideox_folder)
    assert ours.shape == theirs.shape == (9, 64, 64, 3)
    assert psnr(ours, theirs) >= EXACT_DB


def test_cogvideox_without_its_rotary_positions_or_its_generator_is_far_from_diffusers(tmp_path, monkeypatch):
    """What the exactness above rests on: dropping the 5B's rotary positions, or drawing the DPM's noise from
    another generator than the video's, moves the video far below the bar."""
    import torch

    from ditfarm.pipelines.families import cogvideox
    from ditfarm.pipelines.families.cogvideox import CogVideoXSteps, make_small_cogvideox_folder

    folder = make_small_cogvideox_folder(tmp_path / "5b", rotary=True)
    theirs = cogvideox_oracle(folder)
    original = CogVideoXSteps.__init__
    for wrong in (
        lambda self, tr, sch, rotary, gen: original(self, tr, sch, None, gen),
        lambda self, tr, sch, rotary, gen: original(self, tr, sch, rotary, torch.Generator().manual_seed(99)),
    ):
        monkeypatch.setattr(cogvideox.CogVideoXSteps, "__init__", wrong)
        assert psnr(cogvideox_ours(folder), theirs) < 45


HUNYUAN_CALL = dict(num_frames=9, height=64, width=64, guidance_scale=6.0)


def hunyuan_video_oracle(folder):
    from diffusers import HunyuanVideoPipeline

    return diffusers_frames(
        HunyuanVideoPipeline,
        folder,
        "red cat moving left",
        3,
        num_inference_steps=4,
        max_sequence_length=16,
        **HUNYUAN_CALL,
    )


def hunyuan_video_ours(folder):
    return load_pipeline(folder).generate("red cat moving left", seed=3, steps=4, **HUNYUAN_CALL)


def test_hunyuan_video_renders_what_diffusers_hunyuan_video_pipeline_renders(small_hunyuan_video_folder):
    """guidance_scale is HunyuanVideo's embedded guidance; the text is the templated, cropped Llama prompt at its
    valid tokens beside CLIP's pooled output."""
    ours, theirs = hunyuan_video_ours(small_hunyuan_video_folder), hunyuan_video_oracle(small_hunyuan_video_folder)
    assert ours.shape == theirs.shape == (9, 64, 64, 3)
    assert psnr(ours, theirs) >= EXACT_DB


def test_hunyuan_video_without_its_guidance_scaling_pooled_text_or_sigmas_is_far_from_diffusers(
    small_hunyuan_video_folder, monkeypatch
):
    """What the exactness above rests on: the embedded guidance times 1000, CLIP's pooled text, and the pipeline's
    own sigmas (linspace(1, 0, steps + 1)[:-1], not the scheduler's spacing)."""
    import torch

    from ditfarm.pipelines.families import hunyuan_video

    theirs = hunyuan_video_oracle(small_hunyuan_video_folder)
    inputs = hunyuan_video.HunyuanVideoSteps.inputs

    def unscaled(self, i, t, latents, branch):
        return {**inputs(self, i, t, latents, branch), "guidance": torch.full((1,), self.guidance_scale)}

    def unpooled(self, i, t, latents, branch):
        made = inputs(self, i, t, latents, branch)
        return {**made, "pooled_projections": torch.zeros_like(made["pooled_projections"])}

    def spaced(self, steps, device):
        self.scheduler.set_timesteps(steps, device=device)

    for name, wrong in (("inputs", unscaled), ("inputs", unpooled), ("set_timesteps", spaced)):
        with monkeypatch.context() as patch:
            patch.setattr(hunyuan_video.HunyuanVideoSteps, name, wrong)
            assert psnr(hunyuan_video_ours(small_hunyuan_video_folder), theirs) < 50, wrong.__name__


def test_hunyuan_video_refuses_a_negative_prompt_by_name(small_hunyuan_video_folder):
    """diffusers' pipeline ignores a negative prompt unless true CFG is asked for; ditfarm says so instead of
    rendering without it."""
    pipe = load_pipeline(small_hunyuan_video_folder)
    with pytest.raises(ValueError, match="embedded guidance.*negative prompt would be ignored"):
        pipe.generate("red cat", negative_prompt="blue sky", steps=2)


def hunyuan_video15_oracle(folder, prompt="red cat moving left", negative="blue sky"):
    from diffusers import HunyuanVideo15Pipeline

    call = dict(num_frames=9, height=64, width=64, num_inference_steps=4)
    return diffusers_frames(HunyuanVideo15Pipeline, folder, prompt, 3, negative_prompt=negative, **call)


def hunyuan_video15_ours(folder, prompt="red cat moving left", negative="blue sky"):
    return load_pipeline(folder).generate(
        prompt, seed=3, steps=4, negative_prompt=negative or "", num_frames=9, height=64, width=64
    )


def test_hunyuan_video15_renders_what_diffusers_hunyuan_video15_pipeline_renders(tmp_path):
    """With the folder's guider at its scale and with a negative prompt; a prompt that quotes text (its ByT5
    branch) with none; and, with the guider at 1, one pass per step."""
    from ditfarm.pipelines.families.hunyuan_video15 import make_small_hunyuan_video15_folder

    folder = make_small_hunyuan_video15_folder(tmp_path / "cfg")
    for prompt, negative in (("red cat moving left", "blue sky"), ('a sign "open" on the street', None)):
        ours, theirs = hunyuan_video15_ours(folder, prompt, negative), hunyuan_video15_oracle(folder, prompt, negative)
        assert ours.shape == theirs.shape == (9, 64, 64, 3)
        assert psnr(ours, theirs) >= EXACT_DB, prompt
    unguided = make_small_hunyuan_video15_folder(tmp_path / "one-pass", guidance_scale=1.0)
    assert load_pipeline(unguided).encode_prompt("red cat", "blue sky", 1.0).uncond is None
    assert psnr(hunyuan_video15_ours(unguided), hunyuan_video15_oracle(unguided)) >= EXACT_DB


def test_hunyuan_video15_without_its_quoted_text_or_condition_channels_is_far_from_diffusers(tmp_path, monkeypatch):
    """What the exactness above rests on: the ByT5 embeddings of the prompt's quoted text, and the condition and
    mask channels the transformer reads beside the latents (zero, yet weighted by its patch embedding)."""
    import torch

    from ditfarm.pipelines.families import hunyuan_video15
    from ditfarm.pipelines.families.hunyuan_video15 import make_small_hunyuan_video15_folder

    folder = make_small_hunyuan_video15_folder(tmp_path / "f")
    prompt = 'a sign "open" on the street'
    theirs = hunyuan_video15_oracle(folder, prompt)
    inputs = hunyuan_video15.HunyuanVideo15Steps.inputs

    def unquoted(self, i, t, latents, branch):
        made = inputs(self, i, t, latents, branch)
        return {**made, "encoder_attention_mask_2": torch.zeros_like(made["encoder_attention_mask_2"])}

    def ones(self, i, t, latents, branch):
        made = inputs(self, i, t, latents, branch)
        channels = latents.shape[1]
        extra = made["hidden_states"][:, channels:]
        return {**made, "hidden_states": torch.cat([latents.to(extra), torch.ones_like(extra)], dim=1)}

    for wrong in (unquoted, ones):
        with monkeypatch.context() as patch:
            patch.setattr(hunyuan_video15.HunyuanVideo15Steps, "inputs", wrong)
            assert psnr(hunyuan_video15_ours(folder, prompt), theirs) < 50, wrong.__name__


def test_cogvideox15_frame_counts_its_vae_does_not_decode_back_are_refused(tmp_path):
    """Two latent frames per token: 13 frames (4 latent frames, no padding) would decode to 16 in diffusers too;
    ditfarm refuses the count by name, at load and in the dry run's checks."""
    from ditfarm.pipelines.families.cogvideox import make_small_cogvideox_folder
    from ditfarm.pipelines.model_checks import model_checks

    folder = make_small_cogvideox_folder(tmp_path / "15", rotary=True, temporal_patch=2)
    for settings in (load_pipeline(folder).settings, model_checks(str(folder)).settings):
        with pytest.raises(ValueError, match="num_frames must be 8k \\+ 1"):
            settings(num_frames=13)
        assert settings(num_frames=17).num_frames == 17
