"""LoRAs per video: with caching off, a video with a LoRA renders what diffusers' own pipeline renders with that
LoRA loaded at that scale (>= 60 dB), on a Wan folder and on a two-expert one (loaded into both experts); a video
without one after LoRA videos is the base model's again; a switch between loaded LoRAs loads nothing; the least
recently used LoRA is unloaded past the pipeline's capacity; a LoRA that cannot be used is refused naming it, once."""

import pytest
from oracle import pipeline_frames

from ditfarm.cache.metrics import psnr
from ditfarm.pipelines.loading import load_pipeline
from ditfarm.pipelines.lora import LoraError, make_random_lora

pytestmark = [pytest.mark.slow]

EXACT_DB = 60.0
PROMPT = "red cat moving left"
CALL = dict(num_frames=9, height=64, width=64, guidance_scale=5.0, negative_prompt="blue sky")


@pytest.fixture(scope="module")
def loras(small_wan_folder, tmp_path_factory):
    """Two LoRAs of the small Wan folder's transformer (the two-expert folder's experts share its layout)."""
    folder = tmp_path_factory.mktemp("loras")
    transformer = load_pipeline(small_wan_folder).transformer
    return [str(make_random_lora(transformer, folder / f"{name}.safetensors", seed=i, std=0.2))
            for i, name in enumerate("ab")]  # fmt: skip


def oracle(folder, steps: int, **call):
    import torch
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    call = {**CALL, **call}
    return pipe, lambda: pipeline_frames(pipe, PROMPT, 3, num_inference_steps=steps, max_sequence_length=32, **call)


@pytest.mark.unit
def test_a_lora_renders_what_diffusers_renders_with_it_and_the_base_model_comes_back(small_wan_folder, loras):
    a, b = loras
    pipe = load_pipeline(small_wan_folder)
    ours = {
        key: pipe.generate(PROMPT, seed=3, steps=4, lora=lora, lora_scale=scale, **CALL)
        for key, (lora, scale) in {"a": (a, 1.0), "a/2": (a, 0.5), "b": (b, 1.0), "base": (None, 1.0)}.items()
    }
    assert pipe._lora_slots.loads == 2  # a at another scale is a switch, not a load
    pipe.generate(PROMPT, seed=3, steps=1, lora=a, **CALL)
    assert pipe._lora_slots.loads == 2

    dp, render = oracle(small_wan_folder, 4)
    theirs = {"base": render()}
    dp.load_lora_weights(a, adapter_name="a")
    dp.load_lora_weights(b, adapter_name="b")
    for key, name, scale in (("a", "a", 1.0), ("a/2", "a", 0.5), ("b", "b", 1.0)):
        dp.set_adapters([name], [scale])
        theirs[key] = render()
    for key in ours:
        assert psnr(ours[key], theirs[key]) >= EXACT_DB, key
    for key in ("a", "a/2", "b"):  # each LoRA, and each scale, moves the video far from the others
        assert psnr(ours[key], theirs["base"]) < EXACT_DB - 15, key
    assert psnr(ours["a"], ours["a/2"]) < EXACT_DB - 15 and psnr(ours["a"], ours["b"]) < EXACT_DB - 15


@pytest.mark.unit
def test_a_two_expert_folder_takes_a_lora_into_both_experts_as_diffusers_does(small_wan22_a14b_folder, loras):
    a, _ = loras
    pipe = load_pipeline(small_wan22_a14b_folder)
    call = {**CALL, "guidance_scale_2": 2.0}  # the card has its own; diffusers' pipeline would take guidance_scale
    ours = pipe.generate(PROMPT, seed=3, steps=6, lora=a, **call)
    base = pipe.generate(PROMPT, seed=3, steps=6, **call)
    for transformer in pipe.transformers().values():
        assert len(transformer.peft_config) == 1
    dp, render = oracle(small_wan22_a14b_folder, 6, guidance_scale_2=2.0)
    dp.load_lora_weights(a, adapter_name="a")
    dp.load_lora_weights(a, adapter_name="a", load_into_transformer_2=True)
    dp.set_adapters(["a"], [1.0])
    theirs = render()
    dp.disable_lora()
    assert psnr(ours, theirs) >= EXACT_DB and psnr(base, render()) >= EXACT_DB
    assert psnr(ours, base) < EXACT_DB - 15


@pytest.mark.unit
def test_loras_past_the_capacity_unload_the_least_recently_used(small_wan_folder, loras, tmp_path):
    from ditfarm.pipelines.lora import LoraSlots

    pipe = load_pipeline(small_wan_folder)
    c = str(make_random_lora(pipe.transformer, tmp_path / "c.safetensors", seed=7))
    slots = pipe._lora_slots = LoraSlots(pipe.lora_loader(), pipe.transformers(), capacity=2)
    for lora in (*loras, loras[0], c):  # a, b, a again (the most recent now), then c: b goes
        pipe.use_lora(lora)
    assert list(slots.loaded) == [loras[0], c] and slots.loads == 3
    assert len(pipe.transformer.peft_config) == 2
    pipe.use_lora(loras[1])
    assert list(slots.loaded) == [c, loras[1]] and slots.loads == 4


@pytest.mark.unit
def test_a_lora_that_cannot_be_used_is_refused_by_name_once_and_the_pipeline_goes_on(
    small_wan_folder, random_model_folder, loras, tmp_path, monkeypatch
):
    from ditfarm.pipelines import lora as lora_module

    pipe = load_pipeline(small_wan_folder)
    text = tmp_path / "notes.safetensors"
    text.write_text("not a tensor file")
    other = make_random_lora(load_pipeline(random_model_folder).transformer, tmp_path / "tiny.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        str(tmp_path / "missing.safetensors"): "does not exist",
        str(text): "is not a safetensors file",
        str(other): "does not fit this model",
        str(empty): "is a folder with no .safetensors file",
    }
    for source, problem in cases.items():
        with pytest.raises(LoraError, match=f"LoRA {source}.*{problem}"):
            pipe.use_lora(source)
    reads = []
    monkeypatch.setattr(lora_module, "lora_file", lambda source: reads.append(source))
    with pytest.raises(LoraError, match="does not fit this model"):
        pipe.use_lora(str(other))  # the same message again, nothing read again
    assert reads == [] and not getattr(pipe.transformer, "peft_config", {})
    monkeypatch.undo()
    frames = pipe.generate(PROMPT, seed=3, steps=2, lora=loras[0], **CALL)
    assert frames.shape == (9, 64, 64, 3)
    with pytest.raises(LoraError, match="lora_scale must be a number"):
        pipe.use_lora(loras[0], "strong")


@pytest.mark.unit
def test_a_lora_folder_is_read_as_diffusers_saves_one(small_wan_folder, loras, tmp_path):
    import shutil

    folder = tmp_path / "style"
    folder.mkdir()
    shutil.copy(loras[0], folder / "pytorch_lora_weights.safetensors")
    pipe = load_pipeline(small_wan_folder)
    by_file = pipe.generate(PROMPT, seed=3, steps=2, lora=loras[0], **CALL)
    assert psnr(pipe.generate(PROMPT, seed=3, steps=2, lora=str(folder), **CALL), by_file) == float("inf")


def lora_manifest(path, loras, bad: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = loras
    rows = [
        ("a", a, None),
        ("a-half", a, 0.5),
        ("b", b, None),
        ("none", None, None),
        ("missing-1", bad["missing"], None),
        ("missing-2", bad["missing"], None),
        ("text", bad["text"], None),
    ]
    pq.write_table(
        pa.table(
            {
                "id": [r[0] for r in rows],
                "prompt": [PROMPT] * len(rows),
                "seed": pa.array([3] * len(rows), pa.int64()),
                "lora": pa.array([r[1] for r in rows], pa.string()),
                "lora_scale": pa.array([r[2] for r in rows], pa.float64()),
            }
        ),
        path,
    )


@pytest.mark.process
def test_a_manifest_renders_each_rows_lora_fails_bad_ones_by_name_and_a_rerun_sees_a_changed_lora(
    small_wan_folder, loras, tmp_path
):
    """Rows with LoRAs, at another scale, without one, and with LoRAs that cannot be used: the good rows render
    (each row's video is the one generate renders with its LoRA), each bad row fails naming its LoRA, the
    results carry lora and lora_scale, and a rerun renders again only the row whose scale changed."""
    import ditfarm
    from ditfarm.pipelines.video_io import read_mp4, write_mp4

    bad = {"missing": str(tmp_path / "gone.safetensors"), "text": str(tmp_path / "notes.safetensors")}
    (tmp_path / "notes.safetensors").write_text("not tensors")
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    lora_manifest(manifest, loras, bad)
    options = dict(model=str(small_wan_folder), steps=2, upscale=1)
    rows = {r["id"]: r for r in ditfarm.render(str(manifest), str(out), **options)}
    assert {i for i, r in rows.items() if r["status"] == "ok"} == {"a", "a-half", "b", "none"}
    for vid in ("missing-1", "missing-2"):
        # (the path's end: a results row's error hides any word equal to a credential of the run's environment)
        assert rows[vid]["error"].endswith("/gone.safetensors does not exist"), rows[vid]["error"]
    assert "notes.safetensors is not a safetensors file" in rows["text"]["error"]
    assert (rows["a"]["lora"], rows["a"]["lora_scale"]) == (loras[0], 1.0)
    assert (rows["a-half"]["lora_scale"], rows["none"]["lora"], rows["none"]["lora_scale"]) == (0.5, "", None)

    pipe = load_pipeline(small_wan_folder)
    for vid, lora, scale in (("a", loras[0], 1.0), ("a-half", loras[0], 0.5), ("none", None, 1.0)):
        direct = pipe.generate(PROMPT, seed=3, steps=2, lora=lora, lora_scale=scale)
        encoded = read_mp4(write_mp4(direct, tmp_path / f"direct-{vid}.mp4", fps=16))  # the same codec's loss
        assert psnr(read_mp4(out / "videos" / f"{vid}.mp4"), encoded) >= 50, vid
    assert psnr(read_mp4(out / "videos" / "a.mp4"), read_mp4(out / "videos" / "a-half.mp4")) < 45

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(manifest)
    scales = pc.if_else(pc.equal(table["id"], "b"), 0.25, table["lora_scale"])
    pq.write_table(table.set_column(table.schema.get_field_index("lora_scale"), "lora_scale", scales), manifest)
    again = {r["id"]: r for r in ditfarm.render(str(manifest), str(out), **options)}
    assert {i for i, r in again.items() if r["status"] == "ok"} == {"b"} and again["b"]["lora_scale"] == 0.25
    assert {i for i, r in again.items() if r["status"] == "skipped"} == {"a", "a-half", "none"}


def lora_rows_on_rank(rank, world, folder: str, rows):
    from ditfarm.cluster.gang_rank import RankRenderer
    from ditfarm.types import RenderSettings, RowInputs

    renderer = RankRenderer(rank, world, RenderSettings(model=folder, collective_timeout_s=60.0))
    out = []
    for extra in rows:
        try:
            out.append(renderer.render(RowInputs(PROMPT, 3, sampler={"steps": 2}, extra=extra)).frames)
        except ValueError as err:
            out.append(str(err))
    return out


@pytest.mark.process
def test_a_two_rank_gang_renders_each_rows_lora_as_one_process_and_fails_a_bad_one_on_every_rank(
    small_wan_folder, loras, tmp_path
):
    from ditfarm.cluster.local import run_local_gang

    a, b = loras
    missing = str(tmp_path / "gone.safetensors")
    rows = [{"lora": a, "lora_scale": 0.5}, {"lora": missing}, {"lora": b}, {"lora": ""}]
    rank0, rank1 = run_local_gang(lora_rows_on_rank, 2, str(small_wan_folder), rows, timeout_s=300)
    assert rank0[1] == rank1[1] and rank0[1].startswith(f"LoRA {missing} does not exist")
    pipe = load_pipeline(small_wan_folder)
    for frames, (lora, scale) in zip([rank0[0], rank0[2], rank0[3]], [(a, 0.5), (b, 1.0), (None, 1.0)]):
        assert psnr(frames, pipe.generate(PROMPT, seed=3, steps=2, lora=lora, lora_scale=scale)) >= EXACT_DB


@pytest.mark.process
def test_the_cli_applies_lora_to_rows_without_one_and_the_dry_run_names_a_missing_lora(
    small_wan_folder, loras, tmp_path, capsys
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ditfarm.commands.cli import main as cli
    from ditfarm.jobs.results import read_results

    missing = str(tmp_path / "gone.safetensors")
    manifest, out = tmp_path / "m.parquet", str(tmp_path / "out")
    pq.write_table(
        pa.table({"id": ["own", "run", "gone"], "prompt": [PROMPT] * 3, "lora": [loras[1], None, missing]}), manifest
    )
    base = ["render", str(manifest), "--out", out, "--model", str(small_wan_folder), "--steps", "1", "--no-progress"]
    base += ["--lora", loras[0], "--lora-scale", "0.5"]
    assert cli([*base, "--dry-run"]) == 1
    assert f"LoRA {missing} does not exist" in capsys.readouterr().out
    assert cli(base) == 1
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert (rows["own"]["lora"], rows["own"]["lora_scale"]) == (loras[1], 0.5)  # the row's LoRA, the run's scale
    assert (rows["run"]["lora"], rows["run"]["lora_scale"]) == (loras[0], 0.5)
    assert rows["gone"]["status"] == "failed" and "/gone.safetensors does not exist" in rows["gone"]["error"]


@pytest.mark.unit
def test_a_profile_measured_without_the_lora_warns_once_and_a_calibrated_cache_refuses_it(tmp_path, caplog):
    """tiny's shipped profile and calibrations were measured without LoRAs: the profiling policy goes on with one
    warning per LoRA set; ERTACache (calibrated step by step on the model's outputs) refuses the video by name,
    and takes the base model's videos again."""
    from ditfarm.cache import ProfileMismatchError, enable
    from ditfarm.cache.presets import config_for
    from ditfarm.types import RowInputs
    from ditfarm.worker.video import use_row_lora

    pipe = load_pipeline("tiny")
    lora = str(make_random_lora(pipe.transformer, tmp_path / "style.safetensors"))
    row = RowInputs("red circle moving left on blue background", 1, extra={"lora": lora, "lora_scale": 0.5})
    enable(pipe, config_for(pipe, "profiling", 4))
    with caplog.at_level("WARNING", logger="ditfarm.cache.lora_check"):
        for _ in range(2):
            use_row_lora(pipe, row)
    warnings = [r.getMessage() for r in caplog.records if "was measured with no LoRA" in r.getMessage()]
    assert len(warnings) == 1 and f"applies {lora} x0.5" in warnings[0], warnings
    enable(pipe, config_for(pipe, "ertacache", None))
    with pytest.raises(
        ProfileMismatchError, match=f"ertacache cache's .*cache_profile.json was measured with no LoRA.*{lora}"
    ):
        use_row_lora(pipe, row)
    use_row_lora(pipe, RowInputs(row.prompt, 1))  # the base model: the calibration fits again


@pytest.mark.s3
def test_an_s3_lora_is_fetched_once_per_node_as_a_file_or_a_folder_and_a_missing_one_is_named(
    s3_endpoint, small_wan_folder, loras, tmp_path, monkeypatch
):
    import uuid

    import boto3

    from ditfarm.pipelines import model_files

    monkeypatch.setenv("DITFARM_LORA_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3")
    bucket = "loras-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(loras[0], bucket, "styles/a.safetensors")
    s3.upload_file(loras[1], bucket, "styles/b/pytorch_lora_weights.safetensors")
    reads = []
    original = model_files.read_input_file
    monkeypatch.setattr(model_files, "read_input_file", lambda *a: reads.append(a[0]) or original(*a))
    pipe = load_pipeline(small_wan_folder)
    by_uri = pipe.generate(PROMPT, seed=3, steps=2, lora=f"s3://{bucket}/styles/a.safetensors", **CALL)
    assert psnr(by_uri, pipe.generate(PROMPT, seed=3, steps=2, lora=loras[0], **CALL)) == float("inf")
    other = load_pipeline(small_wan_folder)  # another process on the node: the copy is there
    other.use_lora(f"s3://{bucket}/styles/a.safetensors")
    assert reads == [f"s3://{bucket}/styles/a.safetensors"]
    folder = pipe.generate(PROMPT, seed=3, steps=2, lora=f"s3://{bucket}/styles/b", **CALL)
    assert psnr(folder, pipe.generate(PROMPT, seed=3, steps=2, lora=loras[1], **CALL)) == float("inf")
    with pytest.raises(LoraError, match=f"LoRA s3://{bucket}/styles/c.safetensors: .*does not exist"):
        pipe.use_lora(f"s3://{bucket}/styles/c.safetensors")


@pytest.fixture(scope="module")
def alpha_lora(small_wan_folder, tmp_path_factory):
    """A LoRA of another rank whose metadata gives ``lora_alpha`` (scaling alpha / rank = 2, where the others' is
    1), as trainers save them."""
    transformer = load_pipeline(small_wan_folder).transformer
    path = tmp_path_factory.mktemp("alpha-lora") / "c.safetensors"
    return str(make_random_lora(transformer, path, rank=8, seed=7, std=0.1, alpha=16))


@pytest.mark.unit
def test_a_loras_alpha_from_its_metadata_scales_it_as_diffusers_does(small_wan_folder, alpha_lora):
    pipe = load_pipeline(small_wan_folder)
    ours = pipe.generate(PROMPT, seed=3, steps=2, lora=alpha_lora, **CALL)
    dp, render = oracle(small_wan_folder, 2)
    base = render()
    dp.load_lora_weights(alpha_lora, adapter_name="c")
    theirs = render()
    assert psnr(ours, theirs) >= EXACT_DB
    assert psnr(ours, base) < 40  # the LoRA moved the video
    scaling = {m.scaling["c"] for m in dp.transformer.modules() if hasattr(m, "scaling") and "c" in m.scaling}
    assert scaling == {2.0}  # diffusers read the alpha: the check above compares LoRAs scaled alike


@pytest.mark.process
def test_compiled_blocks_switch_loras_without_compiling_again_and_render_the_eager_videos(
    small_wan_folder, loras, alpha_lora
):
    """--compile: the first LoRA compiles the blocks once more; every later switch (another LoRA, one of another
    rank and alpha, another scale, the base model, back again) compiles nothing, and each video is the eager
    pipeline's with that LoRA."""
    import torch

    from ditfarm.pipelines.compile import compiled_graphs
    from ditfarm.types import RenderSettings
    from ditfarm.worker.model import load_model

    a, b = loras
    torch._dynamo.reset()
    pipe = load_model(RenderSettings(model=str(small_wan_folder), compile="eager")).pipe
    eager = load_pipeline(small_wan_folder)
    pipe.generate(PROMPT, seed=3, steps=2, **CALL)
    pipe.generate(PROMPT, seed=3, steps=2, lora=a, **CALL)  # the first LoRA: its layers join the graphs
    start = compiled_graphs()
    for lora, scale in ((b, 1.0), (a, 0.5), (None, 1.0), (alpha_lora, 1.0), (a, 1.0), (alpha_lora, 0.5), (b, 0.25)):
        frames = pipe.generate(PROMPT, seed=3, steps=2, lora=lora, lora_scale=scale, **CALL)
        assert psnr(frames, eager.generate(PROMPT, seed=3, steps=2, lora=lora, lora_scale=scale, **CALL)) >= EXACT_DB
    assert compiled_graphs() == start and pipe._lora_slots.loads == 3


@pytest.mark.process
def test_a_profile_and_calibration_measured_with_a_lora_fit_its_rows_and_refuse_the_base_models(
    small_wan_folder, loras, tmp_path, capsys
):
    """`ditfarm profile --lora` and `ditfarm calibrate ertacache --lora`: the profile records the LoRA, so an
    ERTACache run takes the rows with that LoRA and refuses the others by name."""
    from ditfarm.cache import CacheProfile, ProfileMismatchError, enable
    from ditfarm.cache.presets import build_config
    from ditfarm.commands.cli import main as cli
    from ditfarm.types import RowInputs
    from ditfarm.worker.video import use_row_lora

    a = loras[0]
    prompts, profile = tmp_path / "p.txt", tmp_path / "profile.json"
    prompts.write_text("red cat moving left\n")
    model = ["--model", str(small_wan_folder), "--steps", "8", "--lora", a, "--lora-scale", "0.5"]
    assert cli(["profile", *model, "--prompts", str(prompts), "--out", str(profile)]) == 0
    assert CacheProfile.load(profile).model["loras"] == [[a, 0.5]]
    calibrated = tmp_path / "calibrated.json"
    assert cli(["calibrate", "ertacache", *model, "--profile", str(profile), "--out", str(calibrated),
                "--lambdas", "5"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli(["calibrate", "bac", *model[:-4], "--profile", str(profile), "--out", str(tmp_path / "x.json")]) == 2
    assert f"LoRAs {a} x0.5), but this model is" in capsys.readouterr().err  # the profile is the LoRA's

    pipe = load_pipeline(small_wan_folder)
    enable(pipe, build_config("ertacache", 5.0, calibrated, pipe.cache_settings))
    use_row_lora(pipe, RowInputs(PROMPT, 3, extra={"lora": a, "lora_scale": 0.5}))
    with pytest.raises(ProfileMismatchError, match=f"measured with {a} x0.5, and this video applies no LoRA"):
        use_row_lora(pipe, RowInputs(PROMPT, 3))


@pytest.mark.unit
def test_a_step_distilled_lora_runs_one_pass_per_step_and_every_policy_computes_every_step(small_wan_folder, loras):
    """A row with a step-distilled LoRA (4 steps, guidance 1) on a folder whose knobs mean 50 steps, guidance 5:
    one transformer call per step (no negative pass), and each policy at its default knob computes every step,
    its schedule being a fraction of the video's 4 steps rather than of the card's count."""
    import math

    from ditfarm import cache
    from ditfarm.cache.presets import config_for
    from ditfarm.cache.profile import BACKGROUND, BlockProfile, CacheProfile, model_identity

    pipe = load_pipeline(small_wan_folder)
    assert pipe.cache_settings.reference_steps > 4 and pipe.defaults.guidance_scale > 1
    profile = CacheProfile(
        model=model_identity(pipe.transformer),
        r_attn_threshold=0.5,
        blocks=[BlockProfile(i, 0.0, BACKGROUND, [math.nan] * 4) for i in range(len(pipe.transformer.blocks))],
    )
    distilled = dict(steps=4, guidance_scale=1.0, lora=loras[0], num_frames=9, height=64, width=64)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for policy in ("adaptive", "bwcache", "taylorseer", "profiling"):
            calls.clear()
            cache.enable(pipe, config_for(pipe, policy, None, profile if policy == "profiling" else None))
            pipe.generate(PROMPT, seed=0, **distilled)
            stats = cache.last_video_stats(pipe)
            assert len(calls) == 4, (policy, len(calls))
            assert set(stats.masks) == {"cond"} and len(stats.masks["cond"]) == 4, (policy, stats.masks)
            assert stats.skipped == 0, (policy, stats.masks)
        # the same policy does skip on a longer schedule with the LoRA: the check above can fail
        cache.enable(pipe, config_for(pipe, "taylorseer", None, None))
        pipe.generate(PROMPT, seed=0, lora=loras[0], steps=30, num_frames=9, height=64, width=64)
        assert cache.last_video_stats(pipe).skipped > 0
    finally:
        handle.remove()
        cache.disable(pipe)
