"""`--gangs auto` on an autoscaling cluster scaled to zero (a KubeRay GPU group at minReplicas 0 at night): the
first gang's placement group waits, pending, which is the demand an autoscaler answers with a node; the wait is
bounded by --start-timeout and logged while it lasts.  The autoscaler here is a fake one: it watches for a pending
placement group and answers it with a node (``ray.cluster_utils.Cluster.add_node``) some seconds later, as Ray's
autoscaler does with a fresh pod or instance."""

import json
import logging
import threading
import time

import pytest
import ray
from test_chaos import check_exactly_once, placement_groups_left, write_manifest

from ditfarm.cluster import gang as gang_module
from ditfarm.cluster.gang import NoGangsLeft
from ditfarm.jobs.driver import RenderSettings, manifest_job
from ditfarm.jobs.gang_renderer import GangRenderer

pytestmark = [pytest.mark.ray]


def pending_groups() -> int:
    return sum(pg["state"] == "PENDING" for pg in ray.util.placement_group_table().values())


@pytest.fixture
def empty_cluster(monkeypatch):
    """A head with no CPU for gangs (a driver-only head, as in infra/) and no worker node yet."""
    from ray.cluster_utils import Cluster

    monkeypatch.setattr(gang_module, "ROOM_LOG_INTERVAL_S", 1.0)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_auto_gangs_wait_for_the_node_an_autoscaler_adds_and_give_up_when_none_comes(
    empty_cluster, caplog, random_model_folder, tmp_path, monkeypatch
):
    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=2, gangs="auto", start_timeout_s=4)
    caplog.set_level(logging.INFO, logger="ditfarm.cluster.gang")

    # No autoscaler: no node could ever hold a gang, and the run says so at once, naming the largest node.
    started = time.monotonic()
    with pytest.raises(
        ValueError,
        match=r"no node of this Ray cluster can hold a gang of 1 rank\(s\) of 1 CPU: "
        r"the largest, .* with 0 CPU\(s\) and 0 GPU\(s\), holds 0; the cluster "
        r"has no autoscaler",
    ):
        GangRenderer(settings)
    assert time.monotonic() - started < 10
    assert placement_groups_left() == []

    # An autoscaler (Ray's publishes a status with its report; the head's bare monitor, running here too, would
    # overwrite a fake one, so the detection is faked and checked on its own below): the run waits for the node
    # it adds, saying so at once; a pending group no node answers ends at --start-timeout (the CLI's exit 75).
    from ray.experimental import internal_kv

    from ditfarm.jobs import gang_renderer

    real_get = internal_kv._internal_kv_get
    for mapping, grows in (({"ab12": "node_ab12"}, False), ({"ab12": "node_ab12", "cd34": "gpu-8x"}, True)):
        status = json.dumps({"autoscaler_report": {"node_type_mapping": mapping}}).encode()
        monkeypatch.setattr(
            internal_kv,
            "_internal_kv_get",
            lambda key, *a, status=status, **k: status if key == "__autoscaling_status" else real_get(key, *a, **k),
        )
        assert gang_renderer.cluster_can_grow() == grows  # Ray's read-only provider names types node_<id>
    monkeypatch.setattr(internal_kv, "_internal_kv_get", real_get)
    monkeypatch.setattr(gang_renderer, "cluster_can_grow", lambda: True)
    started = time.monotonic()
    with pytest.raises(NoGangsLeft, match="within 4 s"):
        GangRenderer(settings)
    assert 4 <= time.monotonic() - started < 30
    assert placement_groups_left() == []
    assert [r for r in caplog.records if "waiting for a node with room for 1 bundle(s)" in r.getMessage()]
    assert [
        r
        for r in caplog.records
        if "waiting up to 4 s (--start-timeout) for the node an autoscaler adds" in r.getMessage()
    ]

    # The pending group is answered with a node a few seconds later; the gang starts on it.
    caplog.clear()
    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=2, gangs="auto", start_timeout_s=120)
    made = {}

    def start():
        try:
            made["renderer"] = GangRenderer(settings, grow_interval_s=0.5)
        except BaseException as err:  # handed to the test below
            made["error"] = err

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not pending_groups():
        assert time.monotonic() < deadline and thread.is_alive(), made
        time.sleep(0.1)
    time.sleep(3)  # the node boots: the gang waits, and says so
    empty_cluster.add_node(num_cpus=1)  # on the main thread: Ray's node management installs signal handlers
    thread.join(timeout=180)
    assert not thread.is_alive() and "error" not in made, made
    renderer = made["renderer"]
    try:
        assert renderer.pool.alive == 1
        waits = [r.getMessage() for r in caplog.records if "waiting for a node with room" in r.getMessage()]
        assert len(waits) >= 2, waits  # logged while it lasted
        manifest, out = tmp_path / "m.parquet", tmp_path / "out"
        ids = write_manifest(manifest, 2)
        summary = manifest_job(manifest, out, settings, renderer=renderer, progress=False).run()
        assert (summary.ok, summary.failed) == (2, 0)
        check_exactly_once(out, ids)
    finally:
        renderer.close()
    assert placement_groups_left() == []
