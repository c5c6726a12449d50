"""`--gangs auto`: as many gangs as the cluster's nodes can hold, each gang packed onto one node."""

import pytest
import ray

from ditfarm.cluster.gang import GangConfig
from ditfarm.cluster.warm_gangs import WAITING_PER_GANG
from ditfarm.commands.cli import build_parser
from ditfarm.commands.render import settings_from_args
from ditfarm.jobs.driver import RenderSettings
from ditfarm.jobs.gang_renderer import GangRenderer, auto_gang_count

pytestmark = [pytest.mark.ray]


def node(node_id, cpus=0, gpus=0, alive=True):
    resources = {"CPU": float(cpus)} | ({"GPU": float(gpus)} if gpus else {})
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_gpu_runs_count_gangs_per_node_and_never_split_one_across_nodes():
    gpu = GangConfig(sp=4, gpus_per_rank=1.0)
    nodes = [
        node("head", cpus=8),
        node("a", cpus=96, gpus=8),
        node("b", cpus=96, gpus=6),
        node("c", gpus=8, alive=False),
    ]
    assert auto_gang_count(nodes, gpu, driver_node_id="head") == 2 + 1  # 6 GPUs hold one gang of 4, not 1.5
    assert auto_gang_count(nodes, GangConfig(sp=8, gpus_per_rank=1.0), "head") == 1


def test_cpu_runs_leave_the_drivers_cpu_to_the_driver():
    cpu = GangConfig(sp=1, cpus_per_rank=1.0)
    nodes = [node("head", cpus=2), node("w", cpus=4)]
    assert auto_gang_count(nodes, cpu, driver_node_id="head") == 1 + 4
    assert auto_gang_count(nodes, GangConfig(sp=2, cpus_per_rank=1.0), driver_node_id="w") == 1 + 1
    assert auto_gang_count([node("head", cpus=1)], cpu, driver_node_id="head") == 1  # at least one: it waits


def test_cli_takes_auto_and_refuses_other_words():
    args = build_parser().parse_args(["render", "m.parquet", "--out", "o", "--gangs", "auto", "--sp", "2"])
    assert settings_from_args(args).gangs == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["render", "m.parquet", "--out", "o", "--gangs", "many"])
    with pytest.raises(ValueError, match="non-negative integer or 'auto'"):
        RenderSettings(gangs="all").validate()


def test_auto_on_a_live_cluster_starts_what_it_holds(random_model_folder):
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        renderer = GangRenderer(RenderSettings(model=str(random_model_folder), sp=1, gangs="auto"))
        try:
            assert renderer.pool.capacity == len(renderer.pool.gangs) == 2  # 3 CPUs, one left to the driver
            # per gang: one video denoising, one being stored, and those waiting for a choice of shapes
            assert renderer.capacity == 2 * (2 + WAITING_PER_GANG)
        finally:
            renderer.close()
    finally:
        ray.shutdown()
