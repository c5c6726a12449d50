"""What real clusters do, done to a running job: a gang actor killed, a node removed, a node added.  Each ends
with every good row ``ok`` exactly once, one video object per good id, and no placement group left behind.

Node loss and growth use ``ray.cluster_utils.Cluster``: several Ray nodes (raylets) on this machine, one of which
the test removes (its processes die, as on a lost machine) or adds mid-job."""

import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from ditfarm.jobs.driver import RenderSettings, manifest_job
from ditfarm.jobs.gang_renderer import GangRenderer
from ditfarm.jobs.results import read_all_results

pytestmark = [pytest.mark.ray]

PROMPTS = ["red circle moving left on blue background", "white square moving up on green gradient background"]


def write_manifest(path, n: int) -> list[str]:
    ids = [f"c{i:02d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "prompt": [PROMPTS[i % 2] for i in range(n)]}), path)
    return ids


def stored_videos(out) -> list[str]:
    folder = out / "videos"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def check_exactly_once(out, ids) -> None:
    ok = Counter(r["id"] for r in read_all_results(out).to_pylist() if r["status"] == "ok")
    assert ok == Counter({i: 1 for i in ids}), ok
    assert stored_videos(out) == sorted(f"{i}.mp4" for i in ids)


def placement_groups_left() -> list[str]:
    return [pg["name"] for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]


def run_job(manifest, out, renderer, settings, when_stored: int, action) -> dict:
    """Run the job on a thread; once ``when_stored`` videos are stored, do ``action`` here, on the main thread
    (Ray's node management installs signal handlers, which only the main thread may do)."""
    result = {}

    def job():
        try:
            result["summary"] = manifest_job(manifest, out, settings, renderer=renderer, progress=False).run()
        except BaseException as err:  # handed to the test below
            result["error"] = err

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while thread.is_alive() and len(stored_videos(out)) < when_stored:
            assert time.monotonic() < deadline, "the job stored too few videos in time"
            time.sleep(0.05)
        assert thread.is_alive(), "the job ended before the chaos"
        action()
        thread.join(timeout=600)
        assert not thread.is_alive(), "the job did not finish"
    finally:
        renderer.close()
    if "error" in result:
        raise result["error"]
    return result["summary"]


def test_ray_kill_of_a_gang_actor_mid_job(random_model_folder, tmp_path):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest, out = tmp_path / "m.parquet", tmp_path / "out"
        ids = write_manifest(manifest, 8)
        settings = RenderSettings(model=str(random_model_folder), steps=24, upscale=2, gangs=2)
        renderer = GangRenderer(settings, replace_timeout_s=300)  # a loaded machine frees the killed CPU late
        victims = [g.members[0] for g in renderer.pool.gangs]
        summary = run_job(manifest, out, renderer, settings, 1, lambda: ray.kill(victims[0], no_restart=True))
        assert (summary.ok, summary.failed) == (8, 0)
        assert renderer.pool.replaced == 1 and renderer.pool.retired == 0
        check_exactly_once(out, ids)
        assert placement_groups_left() == []
    finally:
        ray.shutdown()


@pytest.fixture
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def test_a_lost_node_s_videos_go_back_to_the_queue_and_the_job_finishes_on_the_gangs_left(
    two_node_cluster, random_model_folder, tmp_path
):
    """Two one-CPU nodes, one gang on each.  The worker node is removed mid-job: its gang dies, there is no room
    for a replacement (the head's CPU is taken), so the slot is retired and its video renders on the other gang."""
    cluster, worker = two_node_cluster
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    ids = write_manifest(manifest, 8)
    settings = RenderSettings(model=str(random_model_folder), steps=24, upscale=2, gangs=2)
    renderer = GangRenderer(settings, replace_timeout_s=5)
    nodes = {ray.get(g.members[0].node_id.remote()) for g in renderer.pool.gangs}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # one gang per node
    summary = run_job(manifest, out, renderer, settings, 2, lambda: cluster.remove_node(worker))
    assert (summary.ok, summary.failed) == (8, 0)
    assert renderer.pool.retired == 1 and renderer.pool.replaced == 0 and renderer.pool.alive == 0  # closed
    check_exactly_once(out, ids)
    assert placement_groups_left() == []


class GrowthGatedRenderer(GangRenderer):
    """Starts no video, once ``hold_until_gangs`` is set, before that many gangs are up: a gang that starts while
    the queue drains faster (a loaded machine starts actors slowly) would find no row left to render."""

    hold_until_gangs = 0

    def render(self, task, settings, out):
        deadline = time.monotonic() + 300
        while self.pool.alive < self.hold_until_gangs:
            assert time.monotonic() < deadline, "the second gang did not start"
            time.sleep(0.1)
        return super().render(task, settings, out)


def test_auto_gangs_grow_when_a_node_joins(random_model_folder, tmp_path):
    """``--gangs auto`` on a head of two CPUs starts one gang (one CPU is the driver's); a node that joins mid-job
    gets a second gang, which then renders too."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        manifest, out = tmp_path / "m.parquet", tmp_path / "out"
        ids = write_manifest(manifest, 10)
        settings = RenderSettings(model=str(random_model_folder), steps=24, upscale=2, gangs="auto")
        renderer = GrowthGatedRenderer(settings, grow_interval_s=0.5)
        assert renderer.pool.alive == 1

        def add_node():
            renderer.hold_until_gangs = 2
            cluster.add_node(num_cpus=1)

        summary = run_job(manifest, out, renderer, settings, 2, add_node)
        assert (summary.ok, summary.failed) == (10, 0)
        per_gang = renderer.videos_per_gang
        assert len(per_gang) == 2 and min(per_gang) >= 1, per_gang  # the new gang rendered some of them
        check_exactly_once(out, ids)
        assert placement_groups_left() == []
    finally:
        ray.shutdown()
        cluster.shutdown()
