"""Behaviours the README promises, each checked where it happens (a run killed mid-manifest and resumed:
tests/test_kill_resume.py)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import WanTransformer3DModel

import ditfarm
from ditfarm import cache
from ditfarm.cache.attention_probe import received_attention
from ditfarm.cache.profile import BlockProfile
from ditfarm.cluster.local import run_local_gang
from ditfarm.commands.cli import build_parser
from ditfarm.commands.cli import main as cli
from ditfarm.commands.render import settings_from_args
from ditfarm.jobs.driver import LocalRenderer, RenderSettings, render_manifest
from ditfarm.jobs.results import read_results
from ditfarm.pipelines.tiny.model_config import TRANSFORMER_CONFIG
from ditfarm.pipelines.video_io import read_mp4

pytestmark = [pytest.mark.ray, pytest.mark.process]

PROMPT = "red circle moving left on blue background"
NEGATIVE = "blue square moving right on red background"


def test_per_row_sampler_values_reach_the_render(tmp_path, random_model_folder):
    """negative_prompt, guidance_scale, height and width of a row are what the text encoder and the denoising
    loop see, and what the video and its results row show."""
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["base", "no-cfg", "negative", "small"],
                "prompt": [PROMPT] * 4,
                "seed": pa.array([1, 1, 1, 1], pa.int64()),
                "guidance_scale": [None, 1.0, None, None],
                "negative_prompt": [None, None, NEGATIVE, None],
                "height": pa.array([None, None, None, 16], pa.int64()),
                "width": pa.array([None, None, None, 24], pa.int64()),
            }
        ),
        manifest,
    )
    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=1, guidance_scale=4.0)
    renderer = LocalRenderer(settings)
    seen = []
    encode = renderer.pipe.encode_prompt
    renderer.pipe.encode_prompt = lambda p, n="", g=1.0: seen.append((p, n, g)) or encode(p, n, g)
    out = tmp_path / "out"
    assert render_manifest(manifest, out, settings, renderer=renderer, progress=False).ok == 4
    # two videos are in flight at once (the next one's text is encoded beside the current loop), so in any order
    assert sorted(seen) == sorted([(PROMPT, "", 4.0), (PROMPT, "", 1.0), (PROMPT, NEGATIVE, 4.0), (PROMPT, "", 4.0)])
    videos = {v: read_mp4(out / "videos" / f"{v}.mp4").astype(int) for v in ("base", "no-cfg", "negative", "small")}
    assert videos["small"].shape == (8, 16, 24, 3) and videos["base"].shape == (8, 32, 32, 3)
    assert np.abs(videos["base"] - videos["no-cfg"]).mean() > 1  # the guidance scale changed the video
    assert np.abs(videos["base"] - videos["negative"]).mean() > 1  # so did the negative prompt
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert (rows["small"]["height"], rows["small"]["width"]) == (16, 24)


def test_profiling_policy_renders_with_a_profile_file(tmp_path, random_model_folder):
    pipe = ditfarm.load_pipeline(random_model_folder)
    profile = cache.CacheProfile(
        model=cache.model_identity(pipe.transformer),
        blocks=[
            BlockProfile(i, 0.9 if i < 2 else 0.1, "foreground" if i < 2 else "background", [])
            for i in range(len(pipe.transformer.blocks))
        ],
        r_attn_threshold=0.5,
    )
    path = tmp_path / "p.json"
    profile.save(path)
    out = tmp_path / "out"
    assert (
        cli(
            [
                "render",
                "--prompt",
                PROMPT,
                "--out",
                str(out),
                "--model",
                str(random_model_folder),
                "--steps",
                "12",
                "--cache",
                "profiling",
                "--profile",
                str(path),
                "--upscale",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    row = read_results(out).to_pylist()[0]
    assert row["cache"] == "profiling" and row["skipped_fraction"] > 0.1
    assert read_mp4(row["uri"]).shape == (8, 32, 32, 3)


def test_a_profile_is_refused_by_a_model_of_the_same_depth_with_another_config(random_model_folder):
    pipe = ditfarm.load_pipeline(random_model_folder)
    profile = cache.CacheProfile(
        model=cache.model_identity(pipe.transformer),
        blocks=[BlockProfile(i, 0.5, "background", []) for i in range(6)],
        r_attn_threshold=0.5,
    )
    other = WanTransformer3DModel(
        **{**TRANSFORMER_CONFIG, "num_layers": 6, "ffn_dim": TRANSFORMER_CONFIG["ffn_dim"] * 2}
    )
    assert len(other.blocks) == len(pipe.transformer.blocks)
    assert cache.model_identity(other)["config_hash"] != profile.model["config_hash"]
    with pytest.raises(cache.ProfileMismatchError):
        cache.enable(other, cache.ProfilingConfig(profile=profile))
    assert cache.engine_of(other) is None


@pytest.mark.parametrize("n, max_queries, chunk", [(48, 64, 16), (48, 48, 7)])
def test_chunked_received_attention_equals_dense_softmax_attention(n, max_queries, chunk):
    torch.manual_seed(0)
    q, k = torch.randn(2, n, 3, 8), torch.randn(2, n, 3, 8)
    dense = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / 8**0.5, dim=-1).mean(dim=(1, 2))  # (B, N)
    chunked = received_attention(q, k, max_queries=max_queries, chunk=chunk)
    assert torch.allclose(chunked, dense, atol=1e-6)
    assert torch.allclose(chunked.sum(-1), torch.ones(2))  # each query's attention sums to one


def test_sampled_received_attention_estimates_the_dense_value():
    torch.manual_seed(1)
    n = 512
    q, k = torch.randn(1, n, 2, 8), torch.randn(1, n, 2, 8)
    k[:, :32] *= 3  # a block of keys that receives much more attention, like a foreground
    dense = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / 8**0.5, dim=-1).mean(dim=(1, 2))
    sampled = received_attention(q, k, max_queries=128, chunk=32, generator=torch.Generator().manual_seed(0))
    ratio_dense, ratio_sampled = dense[0, :32].sum() / dense.sum(), sampled[0, :32].sum() / sampled.sum()
    assert abs(float(ratio_sampled - ratio_dense)) < 0.05 * float(ratio_dense)
    assert float(ratio_dense) > 2 * 32 / n  # the block does stand out, so the estimate has something to find


def count_text_and_decode(rank, world, model):
    from ditfarm.cluster.gang_rank import RankRenderer
    from ditfarm.types import RenderSettings, RowInputs

    renderer = RankRenderer(rank, world, RenderSettings(model=model, collective_timeout_s=60))
    counts = {"text": 0, "decode": 0}
    renderer.pipe.text_encoder.register_forward_hook(lambda *a: counts.__setitem__("text", counts["text"] + 1))
    decode = renderer.pipe.decode
    renderer.pipe.decode = lambda latents: counts.__setitem__("decode", counts["decode"] + 1) or decode(latents)
    result = renderer.render(RowInputs(PROMPT, 3, sampler=dict(steps=2)))
    return counts, result.frames is not None


def test_rank_zero_alone_encodes_the_text_and_decodes_the_video(random_model_folder):
    (zero, zero_frames), (one, one_frames) = run_local_gang(count_text_and_decode, 2, str(random_model_folder))
    assert zero == {"text": 1, "decode": 1} and zero_frames
    assert one == {"text": 0, "decode": 0} and not one_frames


def render_args(*extra):
    return build_parser().parse_args(["render", "m.parquet", "--out", "o", *extra])


def test_gangs_default_and_collective_timeout_reach_the_ray_path():
    from ditfarm.jobs.gang_renderer import gang_config

    assert settings_from_args(render_args()).gangs == 0  # in-process, no Ray
    two = settings_from_args(render_args("--sp", "2"))
    assert two.gangs == 1 and two.sp == 2  # sp > 1 runs on one gang unless told otherwise
    assert settings_from_args(render_args("--sp", "2", "--gangs", "3")).gangs == 3
    timed = settings_from_args(render_args("--sp", "2", "--collective-timeout", "7.5"))
    config = gang_config(timed)
    assert config.settings.collective_timeout_s == 7.5 and config.sp == 2  # every rank's process group and store use it
    with pytest.raises(ValueError, match="gangs >= 1"):
        settings_from_args(render_args("--sp", "2", "--gangs", "0"))


def test_no_recipe_puts_a_key_in_a_ray_runtime_env():
    """Ray prints runtime env variables in its logs and state API, so the README's and infra/'s recipes pass only
    what is not secret that way (keys live on the nodes)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *sorted(p for p in (root / "infra").rglob("*") if p.is_file())]
    runtime_envs = []
    for path in files:
        text = path.read_text(errors="replace")
        runtime_envs += [(path.name, m.group(0)) for m in re.finditer(r"--runtime-env-json\s+'[^']*'", text)]
        runtime_envs += [
            (path.name, m.group(0)) for m in re.finditer(r"runtimeEnvYAML:[^\n]*\n(?:\s{4,}[^\n]*\n)*", text)
        ]
    assert any(name == "README.md" for name, _ in runtime_envs)  # the recipe is still there to check
    for name, recipe in runtime_envs:
        for credential in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            assert credential not in recipe, f"{name}: {recipe}"
