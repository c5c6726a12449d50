"""Precision, memory and per-model video settings on the real Wan code path (a small random-weight Wan folder)."""

import json
import shutil

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from ditfarm.commands.cli import main as cli
from ditfarm.jobs.results import read_all_results
from ditfarm.pipelines.loading import load_pipeline
from ditfarm.pipelines.precision import resolve_precision

pytestmark = [pytest.mark.process]  # ffmpeg encodes the videos


@pytest.mark.parametrize(
    "name, device, transformer",
    [
        ("auto", "cuda", torch.bfloat16),
        ("auto", "cuda:3", torch.bfloat16),
        ("auto", "cpu", torch.float32),
        ("bf16", "cpu", torch.bfloat16),
        ("fp16", "cuda", torch.float16),
        ("fp32", "cuda", torch.float32),
    ],
)
def test_precision_choices(name, device, transformer):
    p = resolve_precision(name, device)
    assert (p.transformer, p.text_encoder, p.vae) == (transformer, transformer, torch.float32)


def test_an_unknown_dtype_is_refused_by_name(capsys):
    with pytest.raises(ValueError, match="unknown dtype 'bf8'; choose one of auto, bf16, fp16, fp32"):
        resolve_precision("bf8")
    with pytest.raises(SystemExit):
        cli(["render", "--prompt", "x", "--out", "o", "--dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_bf16_loads_transformer_and_text_encoder_in_bf16_and_the_vae_in_fp32(small_wan_folder):
    pipe = load_pipeline(small_wan_folder, dtype="bf16")
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.pipe.text_encoder.dtype == torch.bfloat16
    assert next(pipe.pipe.vae.parameters()).dtype == torch.float32
    frames = pipe.generate("a red cat moving left", seed=1, steps=2)
    assert frames.shape == (9, 64, 64, 3) and frames.std() > 0


def test_a_transformer_only_load_holds_no_text_encoder_or_vae(small_wan_folder):
    """What gang ranks other than 0 load: the transformer alone, yet the same size rules and latent shapes."""
    full = load_pipeline(small_wan_folder)
    bare = load_pipeline(small_wan_folder, encode_and_decode=False)
    assert full.holds_text_encoder and full.holds_vae
    assert not bare.holds_text_encoder and not bare.holds_vae
    assert sum(p.numel() for p in bare.pipe.components["transformer"].parameters()) == sum(
        p.numel() for p in full.transformer.parameters()
    )
    settings = bare.settings(steps=2)
    assert bare.latent_shape(settings) == full.latent_shape(settings)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        bare.settings(num_frames=8)
    with pytest.raises(RuntimeError, match="without its text encoder"):
        bare.encode_prompt("a cat")
    with pytest.raises(RuntimeError, match="without its VAE"):
        bare.decode(torch.zeros(full.latent_shape(settings)))


def test_an_offloaded_text_encoder_visits_the_device_only_to_encode(small_wan_folder, monkeypatch):
    pipe = load_pipeline(small_wan_folder, offload_text_encoder=True)
    encoder = pipe.pipe.text_encoder
    moves = []
    original = type(encoder).to

    def to(self, *args, **kwargs):
        moves.append(str(args[0]) if args else str(kwargs.get("device")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(encoder), "to", to)
    pipe.encode_prompt("a red cat", guidance_scale=5.0)
    assert moves == [str(pipe.execution_device), "cpu"]
    assert next(encoder.parameters()).device.type == "cpu"


def test_the_vae_decodes_tiled_and_close_to_untiled(small_wan_folder):
    """Tiles smaller than the frame (the 720p case in miniature): the tiled path runs and gives the same picture
    as one pass but for the blended seams (a random VAE sees far: tiles differ more than a trained one's)."""
    pipe = load_pipeline(small_wan_folder)
    vae = pipe.pipe.vae
    assert vae.use_tiling
    latents = torch.randn(
        pipe.latent_shape(pipe.settings(height=128, width=128)), generator=torch.Generator().manual_seed(0)
    )
    calls = []
    tiled = type(vae).tiled_decode

    def spy(self, *args, **kwargs):
        calls.append(1)
        return tiled(self, *args, **kwargs)

    vae.enable_tiling(
        tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=48, tile_sample_stride_width=48
    )
    type(vae).tiled_decode = spy
    try:
        in_tiles = pipe.decode(latents)
    finally:
        type(vae).tiled_decode = tiled
    vae.disable_tiling()
    whole = pipe.decode(latents)
    other = pipe.decode(torch.randn_like(latents))  # what "unrelated" looks like from this random VAE

    def distance(a, b):
        return np.abs(a.astype(int) - b.astype(int)).mean()

    assert calls and in_tiles.shape == whole.shape == (9, 128, 128, 3)
    assert distance(in_tiles, whole) < 0.5 * distance(other, whole), (distance(in_tiles, whole), distance(other, whole))


def read_video_meta(path):
    from ditfarm.pipelines.video_io import read_mp4

    meta = next(imageio_ffmpeg.read_frames(str(path)))
    return read_mp4(path).shape, round(float(meta["fps"]))


def test_fps_and_upscale_come_from_the_model_and_flags_override(small_wan_folder, random_model_folder, tmp_path):
    """Wan's card: 16 fps at its own size; tiny's: 8 fps, 8x.  Flags win over both."""
    runs = {
        "wan": ([str(small_wan_folder)], ((9, 64, 64, 3), 16)),
        "tiny": ([str(random_model_folder)], ((8, 256, 256, 3), 8)),
        "wan-flags": ([str(small_wan_folder), "--fps", "10", "--upscale", "2"], ((9, 128, 128, 3), 10)),
    }
    for name, (model, expected) in runs.items():
        out = tmp_path / name
        assert (
            cli(
                [
                    "render",
                    "--prompt",
                    "red circle moving left",
                    "--id",
                    "v",
                    "--out",
                    str(out),
                    "--steps",
                    "1",
                    "--model",
                    *model,
                    "--no-progress",
                ]
            )
            == 0
        )
        assert read_video_meta(out / "videos" / "v.mp4") == expected, name


def test_results_rows_record_each_phase(small_wan_folder, tmp_path):
    out = tmp_path / "out"
    assert (
        cli(
            [
                "render",
                "--prompt",
                "a blue car on the street",
                "--id",
                "v",
                "--out",
                str(out),
                "--steps",
                "2",
                "--model",
                str(small_wan_folder),
                "--dtype",
                "bf16",
                "--no-progress",
            ]
        )
        == 0
    )
    (row,) = read_all_results(out).to_pylist()
    for phase in ("text_seconds", "denoise_seconds", "decode_seconds"):
        assert row[phase] > 0, (phase, row)
    assert row["denoise_seconds"] <= row["seconds"]
    assert row["peak_gpu_bytes"] is None  # no GPU here


def distilled_folder(small_wan_folder, tmp_path):
    """The small Wan folder with a step-distilled card: 4 steps, guidance 1."""
    folder = tmp_path / "distilled"
    shutil.copytree(small_wan_folder, folder)
    card = json.loads((folder / "ditfarm_model.json").read_text())
    card["defaults"].update(steps=4, guidance_scale=1.0)
    (folder / "ditfarm_model.json").write_text(json.dumps(card))
    return folder


def test_a_distilled_folder_runs_one_pass_per_step(small_wan_folder, tmp_path):
    """A card saying guidance_scale 1 (step-distilled, no CFG): one transformer call per step, no uncond
    embeddings, no second cache state."""
    from ditfarm import cache

    pipe = load_pipeline(distilled_folder(small_wan_folder, tmp_path))
    assert pipe.encode_prompt("a cat", guidance_scale=pipe.defaults.guidance_scale).uncond is None
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        cache.enable(pipe, cache.AdaptiveConfig(threshold=0.0))
        pipe.generate("a red cat", seed=0)
    finally:
        handle.remove()
    assert len(calls) == 4
    assert set(cache.last_video_stats(pipe).masks) == {"cond"}


@pytest.mark.parametrize("policy", ["adaptive", "bwcache", "taylorseer", "profiling"])
def test_every_policy_computes_every_step_of_a_4_step_video(small_wan_folder, tmp_path, policy):
    """At its default knob each policy leaves a 4-step distilled video alone: their schedules are fractions of
    the schedule (a skipped step would carry a quarter of the trajectory), not step counts set at 30 or 50."""
    import math

    from ditfarm import cache
    from ditfarm.cache.presets import config_for
    from ditfarm.cache.profile import BACKGROUND, BlockProfile, CacheProfile, model_identity

    pipe = load_pipeline(distilled_folder(small_wan_folder, tmp_path))
    profile = CacheProfile(
        model=model_identity(pipe.transformer),
        r_attn_threshold=0.5,
        blocks=[BlockProfile(i, 0.0, BACKGROUND, [math.nan] * 4) for i in range(4)],
    )
    cache.enable(pipe, config_for(pipe, policy, None, profile if policy == "profiling" else None))
    try:
        pipe.generate("a red cat", seed=0)
        stats = cache.last_video_stats(pipe)
    finally:
        cache.disable(pipe)
    assert stats.skipped == 0 and len(stats.masks["cond"]) == 4, stats.masks
