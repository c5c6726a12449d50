"""The profiler, the fidelity metrics and the benchmark, end to end on small models."""

import json

import numpy as np
import pytest

from ditfarm.cache import CacheProfile
from ditfarm.cache.foreground import foreground_mask, mask_iou, otsu_threshold, token_mask
from ditfarm.cache.metrics import psnr, ssim
from ditfarm.commands.cli import main as cli

pytestmark = [pytest.mark.slow]  # in process, but renders or trains for tens of seconds


def test_psnr_and_ssim_known_values():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a + 10  # MSE (10/255)^2
    assert psnr(a, b) == pytest.approx(20 * np.log10(255 / 10))
    assert psnr(a, a) == np.inf and ssim(a, a) == pytest.approx(1.0)
    noise = (np.random.default_rng(0).random((2, 16, 16, 3)) * 255).astype(np.uint8)
    assert ssim(noise, 255 - noise) < 0


def test_foreground_mask_finds_the_moving_square():
    import torch

    x0 = torch.zeros(3, 8, 32, 32)
    truth = torch.zeros(8, 32, 32, dtype=torch.bool)
    for t in range(8):
        x0[:, t, 8:16, 2 + 3 * t : 10 + 3 * t] = 1.0
        truth[t, 8:16, 2 + 3 * t : 10 + 3 * t] = True
    mask = foreground_mask(x0 + 0.01 * torch.randn_like(x0))
    assert mask_iou(mask, truth) > 0.9
    assert token_mask(truth, (1, 4, 4)).shape == (8 * 8 * 8,)
    g = torch.Generator().manual_seed(0)
    bimodal = torch.cat([0.2 + 0.05 * torch.randn(500, generator=g), 0.8 + 0.05 * torch.randn(500, generator=g)])
    assert otsu_threshold(bimodal) == pytest.approx(0.5, abs=0.1)


def test_foreground_mask_follows_objects_that_cover_a_pixel_most_of_the_video():
    """Along the middle of a track the object covers a pixel in most frames, so a temporal median alone takes the
    object for the background there; the second pass (background filled from never-moving pixels) must not."""
    import torch

    from ditfarm.pipelines.tiny.scenes import render_scene, sample_scene_spec

    rng = np.random.default_rng(5)
    ious, median_only = [], []
    for _ in range(20):
        scene = render_scene(sample_scene_spec(rng, held_out=True), rng)
        x0 = torch.from_numpy(scene.frames).permute(3, 0, 1, 2) * 2 - 1
        truth = torch.from_numpy(scene.masks)
        ious.append(mask_iou(foreground_mask(x0), truth))
        deviation = (x0 - x0.median(dim=1, keepdim=True).values).abs().sum(0)
        median_only.append(mask_iou(deviation > otsu_threshold(deviation), truth))
    assert np.mean(ious) >= 0.9 and np.mean(median_only) < 0.7


def test_profile_command_on_a_model_folder(tmp_path, random_model_folder, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red circle moving left on blue background\nwhite square moving up on green background\n")
    out = tmp_path / "profile.json"
    code = cli(
        [
            "profile",
            "--model",
            str(random_model_folder),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--steps",
            "6",
            "--probe-steps",
            "2",
            "--check-masks",
            "0",
        ]
    )
    assert code == 0
    profile = CacheProfile.load(out)
    assert len(profile.blocks) == 6 and len(profile.blocks[0].change) == 6
    assert 1 <= len(profile.foreground_blocks) <= 3  # 20-50% of blocks
    foreground = {b.index for b in profile.blocks if b.block_class == "foreground"}
    assert foreground == set(profile.foreground_blocks)  # the class follows R_attn against the threshold:
    assert all((b.r_attn >= profile.r_attn_threshold) == (b.index in foreground) for b in profile.blocks)
    assert (tmp_path / "profile.png").stat().st_size > 10_000
    bad = tmp_path / "bad.txt"
    bad.write_text("purple circle moving left on blue background\n")
    assert cli(["profile", "--model", str(random_model_folder), "--prompts", str(bad), "--out", str(out)]) == 2
    assert "'purple'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_cache_quick_run(tmp_path, random_model_folder):
    out = tmp_path / "bench.json"
    assert (
        cli(
            [
                "bench",
                "cache",
                "--model",
                str(random_model_folder),
                "--json",
                str(out),
                "--videos",
                "1",
                "--steps",
                "12",
                "--quick",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    families = {r["family"] for r in rows}
    assert {
        "bwcache",
        "taylorseer",
        "adaptive",
        "pab",
        "fbcache",
        "diffusers-taylorseer",
        "magcache",
        "fewer-steps",
    } <= families
    exact = next(r for r in rows if r["family"] == "adaptive" and r["knob"] == 0.0)
    assert exact["computed"] == 1.0 and exact["psnr"] == float("inf")
    taylor = next(r for r in rows if r["family"] == "taylorseer" and r["knob"] == 4)  # 4 of 30: every 2nd of 12
    assert taylor["computed"] == pytest.approx(0.5) and np.isfinite(taylor["psnr"])
    assert (tmp_path / "bench.png").exists()


def test_bench_steps_on_small_wan_shapes(tmp_path):
    out = tmp_path / "steps.json"
    assert (
        cli(
            [
                "bench",
                "steps",
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--layers",
                "2",
                "--frames",
                "5",
                "--height",
                "64",
                "--width",
                "64",
                "--steps",
                "5",
                "--repeats",
                "1",
                "--methods",
                "none,bwcache:0,taylorseer:5",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert result["latents"] == [1, 16, 2, 8, 8] and result["tokens"] == 2 * 4 * 4
    assert rows["none"]["computed_fraction"] == rows["bwcache:0"]["computed_fraction"] == 1.0
    assert rows["taylorseer:5"]["computed_fraction"] < 0.5  # of 5 steps only step 0 is a full one
    with pytest.raises(ValueError, match="frames = 4k \\+ 1"):
        cli(["bench", "steps", "--device", "cpu", "--frames", "6", "--height", "64", "--width", "64"])


def test_bench_cache_methods_filter(tmp_path, random_model_folder):
    out = tmp_path / "only.json"
    assert (
        cli(
            [
                "bench",
                "cache",
                "--model",
                str(random_model_folder),
                "--json",
                str(out),
                "--videos",
                "1",
                "--steps",
                "6",
                "--methods",
                "adaptive:0/0.3,adaptive-block:0.1,fewer-steps:4",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["family"], r["knob"]) for r in rows] == [
        ("adaptive", 0.0),
        ("adaptive", 0.3),
        ("adaptive-block", 0.1),
        ("fewer-steps", 4),
    ]
    with pytest.raises(ValueError, match="unknown method family 'magcash'"):
        cli(["bench", "cache", "--json", str(out), "--methods", "magcash"])


def test_target_check_reads_the_bar_and_the_rows_adaptive_does_not_match():
    from ditfarm.tools.bench_cache import Row, target_check

    def row(family, speedup, psnr, computed=0.5):
        return Row(family=family, knob=0.0, speedup=speedup, computed=computed, psnr=psnr, ssim=0.9, videos=1)

    rows = [
        row("adaptive", 1.0, float("inf"), 1.0),
        row("adaptive", 2.1, 41.0),
        row("adaptive", 4.0, 20.0),
        row("magcache", 1.4, 45.0),
        row("magcache", 1.7, 39.0),
        row("taylorseer", 4.5, 19.0),
        row("fbcache", 1.01, float("inf"), 1.0),
    ]
    check = target_check(rows)
    assert check["bar_psnr"] == 39.0  # magcache 1.4x is under the 1.5x bar speed
    assert check["fastest_at_bar"] == 2.1
    # magcache 1.4x at 45 dB and taylorseer 4.5x are matched by no adaptive row; fbcache computed everything
    assert check["dominated_by"] == ["magcache 0: 1.40x 45.00 dB", "taylorseer 0: 4.50x 19.00 dB"]


def test_bench_runs_of_one_setting_merge_into_one_table(tmp_path):
    from ditfarm.tools.bench_cache import merge_runs

    def run(path, rows, steps=30):
        setting = {
            "model": "tiny",
            "steps": steps,
            "guidance_scale": 3.0,
            "cases": [["a prompt", 1]],
            "profile": None,
            "threads": 1,
        }
        path.write_text(
            json.dumps(
                {
                    **setting,
                    "rows": [
                        {
                            "family": f,
                            "knob": k,
                            "speedup": 2.0,
                            "computed": 0.5,
                            "psnr": 30.0,
                            "ssim": 0.9,
                            "videos": 1,
                        }
                        for f, k in rows
                    ],
                }
            )
        )
        return path

    a = run(tmp_path / "a.json", [("fewer-steps", 15), ("adaptive", 0.5)])
    b = run(tmp_path / "b.json", [("bac", 0.5), ("pab", 2)])
    setting, rows = merge_runs([a, b])
    assert [(r.family, r.knob) for r in rows] == [("adaptive", 0.5), ("bac", 0.5), ("pab", 2), ("fewer-steps", 15)]
    assert setting["steps"] == 30 and setting["merged_from"] == [str(a), str(b)]
    with pytest.raises(ValueError, match=r"ran another setting .*\(steps differ\)"):
        merge_runs([a, run(tmp_path / "c.json", [("bac", 0.3)], steps=50)])
    with pytest.raises(ValueError, match="adaptive 0.5 is in more than one"):
        merge_runs([a, run(tmp_path / "d.json", [("adaptive", 0.5)])])
