"""Ray gangs on this machine: two CPU ranks render like one process; a killed rank costs a gang, not the video."""

import os
import threading
import time

import pytest
import ray

from ditfarm.cache.metrics import psnr
from ditfarm.cluster.gang import GangConfig, GangPool, wait_until
from ditfarm.cluster.local import run_local_gang
from ditfarm.cluster.render_sp import render_on_rank
from ditfarm.types import RenderSettings, RowInputs

pytestmark = [pytest.mark.ray, pytest.mark.process]

PROMPT = "red circle moving left on blue background"


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_gang_renders_like_one_process_and_survives_a_killed_rank(ray_cluster, random_model_folder):
    config = GangConfig(
        sp=2,
        settings=RenderSettings(
            model=str(random_model_folder), cache="adaptive", cache_knob=0.2, collective_timeout_s=20
        ),
        call_timeout_s=120,
    )
    (reference,) = run_local_gang(
        render_on_rank, 1, str(random_model_folder), PROMPT, 5, dict(steps=8), "adaptive", 0.2
    )
    pool = GangPool(config, gangs=1)
    try:
        result = pool.render(RowInputs(PROMPT, 5, sampler=dict(steps=8)))
        assert psnr(reference.frames, result.rank.frames) >= 60
        assert result.rank.masks == reference.masks
        start = time.monotonic()  # timed warm: the first video's start-up would put the kill past the long video
        pool.render(RowInputs(PROMPT, 5, sampler=dict(steps=8)))
        seconds_per_step = (time.monotonic() - start) / 8

        # kill rank 1 early in a long video (5 of its 60 steps: a loaded machine may run it several times faster
        # than the warm video that timed a step): the gang dies whole, a new one renders it again
        old_pids = pool.gangs[0].pids()
        victim = pool.gangs[0].members[1]
        threading.Timer(5 * seconds_per_step, lambda: ray.kill(victim, no_restart=True)).start()
        long_video = pool.render(RowInputs(PROMPT, 5, sampler=dict(steps=60)))  # killed early on
        assert pool.replaced == 1
        assert wait_until(lambda: not any(alive(p) for p in old_pids), timeout_s=30), "a killed gang left survivors"
        uninterrupted = pool.render(RowInputs(PROMPT, 5, sampler=dict(steps=60)))  # the new gang, nothing killed
        assert psnr(uninterrupted.rank.frames, long_video.rank.frames) >= 60  # rendered again from the start
        assert long_video.rank.masks == uninterrupted.rank.masks
    finally:
        pool.shutdown()


def test_a_gang_encodes_the_next_text_ahead_and_renders_the_same_video(ray_cluster, random_model_folder, tmp_path):
    """With overlap a video's text is encoded on rank 0 beside the previous loop and handed to the render: the
    stored video and its cache masks are those of a render that encoded the text itself."""
    from ditfarm.cluster.messages import PublishTarget
    from ditfarm.jobs.driver import RenderSettings
    from ditfarm.pipelines.video_io import read_mp4
    from ditfarm.storage.stores import OutputLocation

    config = GangConfig(
        sp=2,
        settings=RenderSettings(
            model=str(random_model_folder), cache="adaptive", cache_knob=0.2, collective_timeout_s=20
        ),
        call_timeout_s=120,
    )
    settings = RenderSettings(model=str(random_model_folder), steps=6)
    pool = GangPool(config, gangs=1)
    try:
        results = {}
        for overlap in (True, False):
            out = OutputLocation(str(tmp_path / f"overlap-{overlap}"))
            results[overlap] = pool.render(
                RowInputs(PROMPT, 3, sampler=dict(steps=6)), publish=PublishTarget(out, "v", settings), overlap=overlap
            )
    finally:
        pool.shutdown()
    assert results[True].text_ahead and not results[False].text_ahead
    assert results[True].rank.masks == results[False].rank.masks
    frames = [read_mp4(tmp_path / f"overlap-{o}" / "videos" / "v.mp4") for o in (True, False)]
    assert (frames[0] == frames[1]).all()


def test_on_a_wan_gang_only_rank_0_holds_the_text_encoder_and_vae(ray_cluster, small_wan_folder, tmp_path):
    """sp=2 on a Wan folder: rank 1 loads the transformer alone, and the video is the one sp=1 renders."""
    from ditfarm.jobs.driver import RenderSettings, render_manifest
    from ditfarm.jobs.results import read_all_results
    from ditfarm.pipelines.video_io import read_mp4

    prompt = "a red cat moving left"
    config = GangConfig(
        sp=2, settings=RenderSettings(model=str(small_wan_folder), collective_timeout_s=20), call_timeout_s=120
    )
    pool = GangPool(config, gangs=1)
    try:
        holds = ray.get([m.holds.remote() for m in pool.gangs[0].members])
    finally:
        pool.shutdown()
    assert holds == [{"text_encoder": True, "vae": True}, {"text_encoder": False, "vae": False}]

    manifest = _manifest(tmp_path / "m.parquet", [prompt])
    common = dict(model=str(small_wan_folder), steps=3)
    assert render_manifest(manifest, tmp_path / "sp2", RenderSettings(sp=2, gangs=1, **common), progress=False).ok == 1
    assert render_manifest(manifest, tmp_path / "sp1", RenderSettings(**common), progress=False).ok == 1
    a, b = (read_mp4(tmp_path / run / "videos" / "v0.mp4") for run in ("sp2", "sp1"))
    assert psnr(a, b) >= 50
    (row,) = read_all_results(tmp_path / "sp2").to_pylist()
    assert row["text_seconds"] > 0 and row["denoise_seconds"] > 0 and row["decode_seconds"] > 0


def _manifest(path, prompts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "id": [f"v{i}" for i in range(len(prompts))],
                "prompt": prompts,
                "seed": pa.array(range(len(prompts)), pa.int64()),
            }
        ),
        path,
    )
    return path


def render_on_gangs(manifest, out, settings, member=None):
    """(the run's summary, gangs replaced during it) of a manifest rendered on a GangRenderer closed after."""
    from ditfarm.jobs.driver import render_manifest
    from ditfarm.jobs.gang_renderer import GangRenderer

    renderer = GangRenderer(settings, member=member)
    try:
        return render_manifest(manifest, out, settings, renderer=renderer, progress=False), renderer.pool.replaced
    finally:
        renderer.close()


def test_manifest_on_a_gang_matches_one_process_and_bad_rows_fail_alone(ray_cluster, random_model_folder, tmp_path):
    from ditfarm.jobs.driver import RenderSettings, render_manifest
    from ditfarm.jobs.results import read_all_results
    from ditfarm.pipelines.video_io import read_mp4

    manifest = _manifest(
        tmp_path / "m.parquet",
        [PROMPT, "purple circle moving up on red background", "white square moving up on green gradient background"],
    )
    common = dict(model=str(random_model_folder), steps=6, cache="adaptive", cache_knob=0.2)
    on_gang = render_manifest(manifest, tmp_path / "sp2", RenderSettings(sp=2, gangs=1, **common), progress=False)
    local = render_manifest(manifest, tmp_path / "local", RenderSettings(**common), progress=False)
    assert (on_gang.ok, on_gang.failed) == (2, 1) == (local.ok, local.failed)
    assert "purple" in on_gang.errors[0] and "row 1" in on_gang.errors[0]
    rows = {r["id"]: r for r in read_all_results(tmp_path / "sp2").to_pylist()}
    local_rows = {r["id"]: r for r in read_all_results(tmp_path / "local").to_pylist()}
    for vid in ("v0", "v2"):
        assert rows[vid]["status"] == "ok"
        assert rows[vid]["skipped_fraction"] == local_rows[vid]["skipped_fraction"]
        a = read_mp4(tmp_path / "sp2" / "videos" / f"{vid}.mp4")
        b = read_mp4(tmp_path / "local" / "videos" / f"{vid}.mp4")
        assert psnr(a, b) >= 50
    assert rows["v1"]["status"] == "failed"


def test_two_gangs_render_side_by_side(ray_cluster, random_model_folder, tmp_path):
    """Both gangs hold a video at the same time: some two renders overlap in time (a serial run, one gang after
    the other, would pass a count of videos per gang but not this)."""
    from ditfarm.jobs.driver import RenderSettings, render_manifest
    from ditfarm.jobs.gang_renderer import GangRenderer

    class TimedGangRenderer(GangRenderer):
        spans = []

        def render(self, task, settings, out):
            start = time.monotonic()
            try:
                return super().render(task, settings, out)
            finally:
                self.spans.append((start, time.monotonic()))

    manifest = _manifest(tmp_path / "m.parquet", [PROMPT] * 4)
    settings = RenderSettings(model=str(random_model_folder), steps=8, sp=1, gangs=2)
    renderer = TimedGangRenderer(settings)
    try:
        summary = render_manifest(manifest, tmp_path / "out", settings, renderer=renderer, progress=False)
    finally:
        renderer.close()
    assert summary.ok == 4
    assert sorted(renderer.videos_per_gang) >= [1, 1] and sum(renderer.videos_per_gang) == 4
    spans = sorted(renderer.spans)
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1]]
    assert overlaps, f"no two renders overlapped: {spans}"


def test_compiled_gangs_build_each_shape_once_over_a_mixed_manifest(ray_cluster, random_model_folder, tmp_path):
    """--compile on two gangs, rows mixing two sizes and two step counts, then the same rows in another order:
    counted inside each rank, no rank builds more graphs than the sizes its gang met (a gang keeps its graphs
    whatever it rendered between, and a step count builds none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ditfarm.jobs.driver import render_manifest
    from ditfarm.jobs.gang_renderer import GangRenderer

    sizes, steps = [(32, 32), (48, 48)], [4, 6]
    combos = [(size, n) for size in sizes for n in steps] * 2
    rows = [{"id": f"v{i}", "prompt": PROMPT, "seed": i, "height": h, "width": w, "steps": n}
            for i, ((h, w), n) in enumerate(combos)]  # fmt: skip

    def manifest(path, ordered):
        pq.write_table(pa.Table.from_pylist(ordered), path)
        return path

    def graphs_per_rank() -> dict[str, list[int]]:
        def probe(self):
            from ditfarm.pipelines.compile import compiled_graphs

            return compiled_graphs()

        return {g.name: [ray.get(m.__ray_call__.remote(probe)) for m in g.members] for g in renderer.pool.gangs}

    settings = RenderSettings(model=str(random_model_folder), sp=1, gangs=2, compile="eager")
    renderer = GangRenderer(settings)
    met: dict[str, set] = {}  # gang -> the sizes of the videos it was given
    borrow = renderer.pool.borrow

    def recording_borrow(key=None):
        gang = borrow(key)
        met.setdefault(gang.name, set()).add(key[0])
        return gang

    renderer.pool.borrow = recording_borrow
    counts = []
    try:
        for name, ordered in (("a", rows), ("b", rows[::-1])):
            out = tmp_path / name
            path = manifest(out.with_suffix(".parquet"), ordered)
            summary = render_manifest(path, out, settings, renderer=renderer, progress=False)
            assert summary.ok == len(rows), summary.errors
            counts.append((graphs_per_rank(), {gang: len(seen) for gang, seen in met.items()}))
    finally:
        renderer.close()
    for graphs, sizes_met in counts:
        assert len(graphs) == 2 and sum(sizes_met.values()) >= len(sizes), (graphs, sizes_met)
        for gang, per_rank in graphs.items():
            assert all(n <= sizes_met.get(gang, 0) for n in per_rank), (gang, per_rank, sizes_met)
            assert all(n > 0 for n in per_rank) == (gang in sizes_met), (gang, per_rank, sizes_met)


def test_a_poison_row_fails_after_its_retries_and_every_other_row_renders(ray_cluster, random_model_folder, tmp_path):
    """A row whose rank dies every time (a test's member class) is rendered on 1 + --retries gangs, each of
    which is replaced; then it fails with the gang's error and its attempts, and the other gang keeps going."""
    from helpers import rank_that_dies_on

    from ditfarm.jobs.driver import RenderSettings
    from ditfarm.jobs.results import read_results

    manifest = _manifest(tmp_path / "m.parquet", [PROMPT] * 4)
    settings = RenderSettings(model=str(random_model_folder), steps=4, sp=1, gangs=2, retries=1)
    summary, replaced = render_on_gangs(manifest, tmp_path / "out", settings, member=rank_that_dies_on("v1"))
    assert (summary.ok, summary.failed) == (3, 1)
    assert replaced == 2  # one gang per attempt of the poison row
    rows = {r["id"]: r for r in read_results(tmp_path / "out").to_pylist()}
    assert rows["v1"]["status"] == "failed" and rows["v1"]["attempts"] == 2
    assert "failed on 2 gang(s) in a row" in rows["v1"]["error"] and "a rank failed" in rows["v1"]["error"]
    assert all(rows[v]["status"] == "ok" and rows[v]["attempts"] == 1 for v in ("v0", "v2", "v3"))


def test_a_row_whose_latents_go_non_finite_fails_on_every_rank_and_the_gang_goes_on(
    ray_cluster, random_model_folder, tmp_path
):
    """Both ranks hold the gathered latents, so both refuse the NaN video alike after the loop: the row fails once
    by name, no gang is replaced, and the next rows render on the same gang."""
    from helpers import poisoned_model_folder

    from ditfarm.jobs.driver import RenderSettings
    from ditfarm.jobs.results import read_results

    folder = poisoned_model_folder(random_model_folder, tmp_path / "poisoned")
    manifest = _manifest(tmp_path / "m.parquet", [PROMPT, "yellow triangle moving right on black background", PROMPT])
    settings = RenderSettings(model=str(folder), steps=2, sp=2, gangs=1, retries=1)
    summary, replaced = render_on_gangs(manifest, tmp_path / "out", settings)
    assert (summary.ok, summary.failed, replaced) == (2, 1, 0), summary.errors
    rows = {r["id"]: r for r in read_results(tmp_path / "out").to_pylist()}
    assert rows["v1"]["status"] == "failed" and rows["v1"]["attempts"] == 1
    assert "non-finite latents" in rows["v1"]["error"]
    assert sorted(p.name for p in (tmp_path / "out" / "videos").iterdir()) == ["v0.mp4", "v2.mp4"]
    assert rows["v0"]["store_seconds"] > 0 and rows["v0"]["wall_seconds"] > 0  # rank 0 timed its store
    assert rows["v0"]["seconds"] == pytest.approx(
        sum(rows["v0"][k] for k in ("text_seconds", "denoise_seconds", "decode_seconds", "store_seconds")), abs=2e-3
    )


def test_a_video_past_its_time_limit_stops_on_every_rank_at_once_and_the_gang_goes_on(
    ray_cluster, random_model_folder, tmp_path
):
    """The ranks vote at every step, so both stop at the same step: the row fails once by name (no rank is left
    in a collective, so the gang is not replaced) and the next rows render on the same gang."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ditfarm.jobs.driver import RenderSettings
    from ditfarm.jobs.results import read_results

    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"id": ["v0", "v1", "v2"], "prompt": [PROMPT] * 3, "steps": pa.array([2, 1000, 2], pa.int64())}),
        manifest,
    )
    # a limit a 2-step video keeps even on a loaded machine, and a 1000-step one does not
    settings = RenderSettings(model=str(random_model_folder), sp=2, gangs=1, retries=1, video_timeout_s=6.0)
    summary, replaced = render_on_gangs(manifest, tmp_path / "out", settings)
    assert (summary.ok, summary.failed, replaced) == (2, 1, 0), summary.errors
    rows = {r["id"]: r for r in read_results(tmp_path / "out").to_pylist()}
    assert rows["v1"]["attempts"] == 1 and "ran past its time limit of 6 s" in rows["v1"]["error"]


def test_gangs_start_together_and_a_pool_goes_on_with_those_the_cluster_holds(ray_cluster, random_model_folder):
    """Three gangs of one CPU asked of a 2-CPU cluster: two start at the same time (their starts overlap; one
    after the other, the second would begin when the first was ready), the third times out, its placement group
    is removed, and the pool renders on two."""
    pool = GangPool(
        GangConfig(
            sp=1, settings=RenderSettings(model=str(random_model_folder)), start_timeout_s=30, call_timeout_s=120
        ),
        gangs=3,
    )
    try:
        assert pool.alive == 2
        groups = [g["name"] for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
        assert sorted(groups) == sorted(g.name for g in pool.gangs), groups
        first, second = sorted(pool.gangs, key=lambda g: g.started_at)
        assert second.started_at < first.ready_at, "the second gang started only after the first was ready"
        assert pool.render(RowInputs(PROMPT, 1, sampler=dict(steps=2))).rank.frames is not None
    finally:
        pool.shutdown()


def test_what_a_gang_runs_is_logged_once_per_gang(ray_cluster, random_model_folder, caplog):
    """The driver logs each gang's layout, dtype, attention kernels and compilation once, when it is ready."""
    import logging

    caplog.set_level(logging.INFO, logger="ditfarm")
    pool = GangPool(
        GangConfig(sp=2, settings=RenderSettings(model=str(random_model_folder)), call_timeout_s=120), gangs=1
    )
    try:
        pool.render(RowInputs(PROMPT, 1, sampler=dict(steps=2)))
        pool.render(RowInputs(PROMPT, 2, sampler=dict(steps=2)))
    finally:
        pool.shutdown()
    lines = [r.getMessage() for r in caplog.records if "attention:" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "2 rank(s), Ulysses 2, torch.float32" in lines[0] and "torch_math kernel" in lines[0]
    assert "blocks eager" in lines[0]


def test_a_gang_no_node_can_hold_is_refused_at_once_naming_the_largest_node(ray_cluster, random_model_folder):
    """--sp 4 on a 2-CPU node of a cluster without an autoscaler: said at once (exit 2 from the CLI), not after
    the start timeout in silence."""
    from ditfarm.jobs.driver import RenderSettings
    from ditfarm.jobs.gang_renderer import GangRenderer

    started = time.monotonic()
    with pytest.raises(
        ValueError,
        match=r"can hold a gang of 4 rank\(s\) of 1 CPU: the largest, .* with 2 CPU\(s\) "
        r"and 0 GPU\(s\), holds 2; .* render with --sp 2 or fewer",
    ):
        GangRenderer(RenderSettings(model=str(random_model_folder), sp=4, gangs=1, start_timeout_s=300))
    assert time.monotonic() - started < 10


def test_a_run_stopped_on_a_gang_records_the_video_past_its_fence_and_publishes_nothing_after(
    ray_cluster, random_model_folder, tmp_path
):
    """SIGTERM while rank 0 is still storing a video that passed its fence (held there by a test's member class)
    and the next video denoises: the stop waits for the first to land and records its row; the second is refused
    at its fence and stores nothing; the gangs start no render afterwards.  Every stored video has its row."""
    import signal

    from helpers import rank_that_holds_its_publish

    from ditfarm.jobs.driver import render_manifest
    from ditfarm.jobs.gang_renderer import GangRenderer
    from ditfarm.jobs.manifest import RenderTask
    from ditfarm.jobs.results import read_all_results
    from ditfarm.jobs.stopping import Stopped, stop_on_signals
    from ditfarm.storage.lease import LeaseLost
    from ditfarm.storage.stores import OutputLocation

    passed, release = str(tmp_path / "passed"), str(tmp_path / "release")
    manifest, out = _manifest(tmp_path / "m.parquet", [PROMPT] * 4), tmp_path / "out"
    settings = RenderSettings(model=str(random_model_folder), steps=12, sp=1, gangs=1, overlap=True)
    renderer = GangRenderer(settings, member=rank_that_holds_its_publish(passed, release))
    main = threading.main_thread().ident

    def stop_while_publishing():
        if wait_until(lambda: os.path.exists(passed), 240):
            time.sleep(0.5)  # the next video's loop is under way; its publish queues behind the held one
            signal.pthread_kill(main, signal.SIGTERM)
            time.sleep(1.5)  # the stop waits for the held video meanwhile
        open(release, "a").close()

    stopper = threading.Thread(target=stop_while_publishing, daemon=True)
    restore = stop_on_signals()
    try:
        stopper.start()
        with pytest.raises(Stopped):
            render_manifest(manifest, out, settings, renderer=renderer, progress=False)
        stopper.join()
        with pytest.raises(LeaseLost, match="stopping"):  # a stopped pool starts no render
            renderer.render(RenderTask(9, "v9", PROMPT, 9), settings, OutputLocation(str(out)))
    finally:
        restore()
        open(release, "a").close()
        renderer.close()
    ok = {r["id"] for r in read_all_results(out).to_pylist() if r["status"] == "ok"}
    stored = {p.stem for p in (out / "videos").glob("*.mp4") if not p.name.startswith(".")}
    assert ok == stored and len(ok) == 1  # the one held past its fence (whichever of two the gang took first)
    assert not (out / "lease.json").exists()
