"""Wan2.2 folders: the two experts of an A14B folder each keep their own cache and count their own steps, the
second expert's guidance scale reaches it and nothing else takes one, and TI2V-5B's defaults are its own.
(Exactness against diffusers: test_diffusers_oracle.py; every policy, the profiler and sp 2:
test_family_contract.py.)"""

import numpy as np
import pytest

from ditfarm.cache import enable, engine_of, last_video_stats
from ditfarm.cache.policies import TaylorSeerConfig
from ditfarm.pipelines.loading import load_pipeline

pytestmark = [pytest.mark.slow]

STEPS = 22
INTERVAL = 4


def computed_per_step(pipe, branch: str) -> list[int]:
    return np.array(last_video_stats(pipe).masks[branch]).min(axis=1).tolist()


def switch_step(pipe, steps: int) -> int:
    """The first step of the low-noise expert, as diffusers' WanPipeline decides it."""
    pipe.scheduler.set_timesteps(steps)
    boundary = pipe.variant.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    return sum(float(t) >= boundary for t in pipe.scheduler.timesteps)


def test_each_expert_caches_its_own_segment_from_its_first_step(small_wan22_a14b_folder, monkeypatch):
    """TaylorSeer computes every INTERVAL-th step of a schedule: each expert's segment is its own schedule, so the
    first step after the switch is computed and the pattern restarts there.  Counting the video's steps instead
    (the bug of caches that do not know their experts) computes elsewhere and fails this test."""
    from ditfarm.pipelines.families.wan import FlowMatchSteps, WanSteps

    pipe = load_pipeline(small_wan22_a14b_folder)
    enable(pipe, TaylorSeerConfig(interval=INTERVAL))
    first, second = pipe.transformers().values()
    assert engine_of(first) is not engine_of(second) and engine_of(second) is not None
    switch = switch_step(pipe, STEPS)
    assert 0 < switch < STEPS and switch % INTERVAL, switch  # where a video-wide count would differ
    expected = [int(k % INTERVAL == 0) for k in range(switch)] + [int(k % INTERVAL == 0) for k in range(STEPS - switch)]
    pipe.generate("red cat moving left", seed=5, steps=STEPS)
    assert computed_per_step(pipe, "cond") == computed_per_step(pipe, "uncond") == expected

    monkeypatch.setattr(WanSteps, "context", lambda self, i: FlowMatchSteps.context(self, i))
    pipe.generate("red cat moving left", seed=5, steps=STEPS)
    assert computed_per_step(pipe, "cond") != expected


def test_an_expert_that_sits_a_video_out_reports_nothing_for_it(small_wan22_a14b_folder):
    pipe = load_pipeline(small_wan22_a14b_folder)
    enable(pipe, TaylorSeerConfig(interval=INTERVAL))
    pipe.generate("red cat moving left", seed=5, steps=STEPS)
    assert switch_step(pipe, 2) == 2  # two steps: both at high noise
    pipe.generate("red cat moving left", seed=5, steps=2)
    assert len(last_video_stats(pipe).masks["cond"]) == 2


def test_guidance_scale_2_is_the_second_experts_and_refused_by_a_one_expert_folder(
    small_wan22_a14b_folder, small_wan_folder
):
    pipe = load_pipeline(small_wan22_a14b_folder)
    assert (pipe.defaults.guidance_scale, pipe.defaults.guidance_scale_2) == (4.0, 3.0)  # the folder's card
    assert pipe.settings(guidance_scale_2=1.5).second_guidance_scale == 1.5
    with pytest.raises(ValueError, match="guidance_scale_2 must be >= 0"):
        pipe.settings(guidance_scale_2=-1.0)
    one = load_pipeline(small_wan_folder)
    with pytest.raises(ValueError, match="guidance_scale_2 is the second expert's guidance scale"):
        one.generate("red cat", steps=2, guidance_scale_2=2.0)


def test_wan22_defaults_follow_the_folder_kind_where_its_card_is_silent(small_wan22_a14b_folder, tmp_path):
    import shutil

    from ditfarm.pipelines.families.wan import WAN22_A14B, WAN22_TI2V, make_small_wan22_ti2v_folder
    from ditfarm.pipelines.model_checks import model_checks

    a14b = tmp_path / "a14b"
    shutil.copytree(small_wan22_a14b_folder, a14b)
    (a14b / "ditfarm_model.json").unlink()
    checks = model_checks(str(a14b))
    assert checks.defaults == WAN22_A14B.defaults and checks.video.fps == 16 and checks.experts == 2
    ti2v = make_small_wan22_ti2v_folder(tmp_path / "ti2v")
    (ti2v / "ditfarm_model.json").unlink()
    checks = model_checks(str(ti2v))
    assert checks.defaults == WAN22_TI2V.defaults and checks.video.fps == 24 and checks.experts == 1
    assert (checks.defaults.height, checks.defaults.width, checks.defaults.num_frames) == (704, 1280, 121)


@pytest.mark.process
def test_manifest_rows_set_the_second_scale_results_record_it_and_a_changed_one_renders_again(
    small_wan22_a14b_folder, small_wan_folder, tmp_path, capsys
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ditfarm.commands.cli import main as cli
    from ditfarm.jobs.results import read_results

    manifest, edited, out = tmp_path / "m.parquet", tmp_path / "m2.parquet", tmp_path / "out"
    prompts = ["red cat moving left"] * 2
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": prompts, "guidance_scale_2": [None, 1.5]}), manifest)
    base = ["--out", str(out), "--model", str(small_wan22_a14b_folder), "--steps", "3", "--no-progress"]
    assert cli(["render", str(manifest), *base]) == 0, capsys.readouterr().err
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert (rows["a"]["guidance_scale_2"], rows["b"]["guidance_scale_2"]) == (3.0, 1.5)  # the card's, the row's
    capsys.readouterr()

    pq.write_table(pa.table({"id": ["a", "b"], "prompt": prompts, "guidance_scale_2": [None, 2.5]}), edited)
    assert cli(["render", str(edited), *base, "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "would render 1, would skip 1" in said and "guidance_scale_2 x1 (e.g. 1.5 -> 2.5)" in said, said
    assert cli(["render", str(edited), *base, "--guidance-scale-2", "2.5"]) == 0
    assert {r["id"]: r["guidance_scale_2"] for r in read_results(out).to_pylist()} == {"a": 2.5, "b": 2.5}

    one = ["--out", str(tmp_path / "one"), "--model", str(small_wan_folder), "--steps", "2", "--no-progress"]
    capsys.readouterr()
    assert cli(["render", str(manifest), *one]) == 1
    rows = {r["id"]: r for r in read_results(tmp_path / "one").to_pylist()}
    assert rows["a"]["status"] == "ok" and rows["a"]["guidance_scale_2"] is None
    assert rows["b"]["status"] == "failed" and "guidance_scale_2 is the second expert's" in rows["b"]["error"]


def test_offloaded_experts_take_turns_on_the_device_and_render_the_same(small_wan22_a14b_folder, monkeypatch):
    """--offload-experts: the idle expert leaves the device before the other comes in, once per switch, and the
    next video starts with the high-noise expert back; the frames are those of experts that both stay."""
    kept = load_pipeline(small_wan22_a14b_folder).generate("red cat moving left", seed=5, steps=6)
    pipe = load_pipeline(small_wan22_a14b_folder, offload_experts=True)
    moves = []
    for name, expert in pipe.transformers().items():
        original = expert.to
        monkeypatch.setattr(
            expert, "to", lambda device, _n=name, _o=original: (moves.append((_n, str(device))), _o(device))[1]
        )
    assert np.array_equal(pipe.generate("red cat moving left", seed=5, steps=6), kept)
    # (on this CPU-only machine the device is "cpu" too: the order shows the turns)
    assert moves == [
        ("transformer", "cpu"),  # the switch: the high-noise expert leaves first ...
        ("transformer_2", "cpu"),  # ... then the low-noise one comes in
        ("transformer_2", "cpu"),  # after the video: back to the high-noise expert
        ("transformer", "cpu"),
    ], moves


@pytest.mark.process
def test_profile_measures_each_expert_into_one_file_and_each_calibration_covers_its_experts_segment(
    small_wan22_a14b_folder, tmp_path, capsys
):
    """`ditfarm profile` on a two-expert folder writes one file with a profile per expert (each checked against
    its own expert, so the profiling policy runs on both); `calibrate ertacache|bac` and `train-router` then
    calibrate each expert on the steps of its own segment, counted from its first: the run reuses within each
    segment as calibrated, computes the first step after the switch, shortens each segment's steps by its own
    phi (the switch stays on its step), and one expert's calibration offered to the other is refused by name."""
    from ditfarm.cache import CacheProfile, ProfileMismatchError
    from ditfarm.cache.policies import ERTACacheConfig, ERTACachePolicy
    from ditfarm.cache.policies.ertacache import ERTACacheCalibrationError
    from ditfarm.cache.policies.harmonica import ROUTER_FILE, Router
    from ditfarm.cache.presets import build_config
    from ditfarm.commands.cli import main as cli
    from ditfarm.pipelines.denoise import adjusted_sigmas

    prompts, out = tmp_path / "p.txt", tmp_path / "profile.json"
    prompts.write_text("red cat moving left\nblue sky over green field\n")
    model = ["--model", str(small_wan22_a14b_folder)]
    assert cli(["profile", *model, "--prompts", str(prompts), "--out", str(out), "--steps", "60"]) == 0
    assert "transformer_2: 4 blocks" in capsys.readouterr().out
    assert (tmp_path / "profile.png").exists() and (tmp_path / "profile-transformer_2.png").exists()
    profile = CacheProfile.load(out)
    assert list(profile.experts) == ["transformer_2"] and profile.experts["transformer_2"].model["component"]
    pipe = load_pipeline(small_wan22_a14b_folder)
    enable(pipe, build_config("profiling", 6, profile, pipe.cache_settings))
    pipe.generate("red cat moving left", seed=1, steps=60)
    assert last_video_stats(pipe).skipped > 0
    shared = CacheProfile.load(out)
    shared.experts = {}  # one expert's profile offered to both: the second refuses it by name
    with pytest.raises(ProfileMismatchError, match="component transformer_2"):
        enable(pipe, build_config("profiling", 4, shared, pipe.cache_settings))

    steps, lam = 12, 5.0  # lambda 5: every step after an expert's first is reused (its error stays below 5)
    switch = switch_step(pipe, steps)
    assert 1 < switch < steps - 1, switch
    calibrated = tmp_path / "calibrated" / "profile.json"
    calibrate = ["--profile", str(out), "--out", str(calibrated), "--steps", str(steps), "--prompts", str(prompts)]
    assert cli(["calibrate", "ertacache", *model, *calibrate, "--lambdas", f"0.01,{lam:g}"]) == 0
    assert f"transformer: {switch} steps, transformer_2: {steps - switch} steps" in capsys.readouterr().out
    calibrate[1] = str(calibrated)  # BAC's calibration goes into the same file
    assert cli(["calibrate", "bac", *model, *calibrate]) == 0
    profile = CacheProfile.load(calibrated)
    second = profile.experts["transformer_2"]
    assert (profile.ertacache["steps"], second.ertacache["steps"]) == (switch, steps - switch)
    assert (profile.bac["steps"], second.bac["steps"]) == (switch, steps - switch)
    assert len(second.bac["similarity"][0]) == steps - switch and second.ertacache["video_steps"] == steps

    enable(pipe, build_config("ertacache", lam, profile, pipe.cache_settings))
    pipe.generate("red cat moving left", seed=1, steps=steps)
    expected = [int(k == 0) for k in range(switch)] + [int(k == 0) for k in range(steps - switch)]
    assert computed_per_step(pipe, "cond") == computed_per_step(pipe, "uncond") == expected
    phi = [*profile.ertacache["entries"][1]["phi"], *second.ertacache["entries"][1]["phi"]]
    assert min(phi) < 1.0  # the reused steps are shortened ...
    taken = pipe.scheduler.sigmas.double().numpy()
    pipe.scheduler.set_timesteps(steps)
    assert np.allclose(taken, adjusted_sigmas(pipe.scheduler.sigmas.double().numpy(), phi))  # ... each by its own
    with pytest.raises(ERTACacheCalibrationError, match="was calibrated for 12-step videos; this video has 10"):
        ERTACachePolicy(ERTACacheConfig(lam, second)).check_steps(10)
    second.ertacache = profile.ertacache  # the first expert's calibration offered to the second
    enable(pipe, build_config("ertacache", lam, profile, pipe.cache_settings))
    with pytest.raises(ERTACacheCalibrationError, match=f"calibrated on the {switch} steps this expert runs"):
        pipe.generate("red cat moving left", seed=1, steps=steps)

    enable(pipe, build_config("bac", 0.3, CacheProfile.load(calibrated), pipe.cache_settings))
    pipe.generate("red cat moving left", seed=1, steps=steps)
    masks = np.array(last_video_stats(pipe).masks["cond"])
    assert masks[0].all() and masks[switch].all() and not masks[1:switch].all() and not masks[switch + 1 :].all()

    router_run = ["--prompts", str(prompts), "--run-dir", str(tmp_path / "router"), "--steps", str(steps)]
    assert cli(["train-router", *model, *router_run, "--iterations", "1", "--out", str(tmp_path / "r.json")]) == 0
    assert "transformer_2:" in capsys.readouterr().out
    router = Router.load(tmp_path / "r.json")
    assert (router.steps, router.experts["transformer_2"].steps) == (switch, steps - switch)
    router.logits = [[-5.0] * len(router.logits[0])] * switch  # nothing after the first step computes ...
    router.experts["transformer_2"].logits = [[5.0] * len(router.logits[0])] * (steps - switch)  # ... all here
    router.save(calibrated.with_name(ROUTER_FILE))
    enable(pipe, build_config("harmonica", 0.1, calibrated, pipe.cache_settings))
    pipe.generate("red cat moving left", seed=1, steps=steps)
    assert computed_per_step(pipe, "cond") == [int(k == 0) for k in range(switch)] + [1] * (steps - switch)


@pytest.mark.process
def test_compile_compiles_each_experts_blocks_once(small_wan22_a14b_folder):
    """--compile on a two-expert folder (through load_model, as a run loads it): both experts' blocks compiled, the
    first video builds the graphs (one per expert: separate modules, the same shapes), the next builds none, and
    the frames are the eager ones."""
    import torch

    from ditfarm.pipelines.compile import COMPILED_ATTR, compiled_graphs
    from ditfarm.types import RenderSettings
    from ditfarm.worker.model import load_model

    torch._dynamo.reset()
    eager = load_pipeline(small_wan22_a14b_folder).generate("red cat moving left", seed=3, steps=8)
    pipe = load_model(RenderSettings(model=str(small_wan22_a14b_folder), compile="eager")).pipe
    assert all(getattr(t, COMPILED_ATTR, None) == "eager" for t in pipe.transformers().values())
    start = compiled_graphs()
    pipe.generate("red cat moving left", seed=3, steps=8)
    built = compiled_graphs() - start
    frames = pipe.generate("red cat moving left", seed=3, steps=8)
    assert compiled_graphs() - start == built and 1 <= built <= 4, built
    from ditfarm.cache.metrics import psnr

    assert psnr(frames, eager) >= 60


def test_a_cards_expert_section_gives_the_second_expert_its_own_default_knob(small_wan22_a14b_folder, tmp_path):
    """cache.experts.transformer_2.defaults in the folder's card: a run that names no knob caches the low-noise
    expert at its own knob (here: TaylorSeer computing every step there) and the high-noise one at the card's
    shared default; a knob the run names holds for both; a malformed section is refused naming the card."""
    import json
    import shutil

    from ditfarm.pipelines.folder_checks import ModelFolderError
    from ditfarm.types import RenderSettings
    from ditfarm.worker.model import load_model

    folder = tmp_path / "a14b"
    shutil.copytree(small_wan22_a14b_folder, folder)
    card_path = folder / "ditfarm_model.json"
    card = json.loads(card_path.read_text())
    card["cache"] = {
        "reference_steps": STEPS,  # intervals in steps of a STEPS-step segment
        "defaults": {"taylorseer": 4},
        "experts": {"transformer_2": {"defaults": {"taylorseer": 1}}},
    }
    card_path.write_text(json.dumps(card))
    pipe = load_model(RenderSettings(model=str(folder), cache="taylorseer")).pipe
    switch = switch_step(pipe, STEPS)
    pipe.generate("red cat moving left", seed=5, steps=STEPS)
    computed = computed_per_step(pipe, "cond")
    assert 0 in computed[:switch] and all(computed[switch:]), computed
    pipe = load_model(RenderSettings(model=str(folder), cache="taylorseer", cache_knob=12)).pipe
    pipe.generate("red cat moving left", seed=5, steps=STEPS)
    assert 0 in computed_per_step(pipe, "cond")[switch:]

    card["cache"]["experts"] = {"transformer_2": {"defaults": {"taylorseer": "fast"}}}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFolderError, match="cache.experts.transformer_2.defaults must map policy names"):
        load_pipeline(folder)
