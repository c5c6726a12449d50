"""Torch's threads follow the CPUs a render is given: the affinity mask (and a cgroup quota) less one CPU for the
work beside the loop, OMP_NUM_THREADS where set, and --threads above both; a gang rank takes --threads Ray CPUs."""

import json
import os
import subprocess
import sys

import pytest

from ditfarm.commands.cli import build_parser
from ditfarm.commands.render import settings_from_args
from ditfarm.jobs.gang_renderer import gang_config
from ditfarm.types import RenderSettings

pytestmark = [pytest.mark.ray, pytest.mark.process]

PROBE = """
import json, os, sys
os.sched_setaffinity(0, set(json.loads(sys.argv[1])))
from ditfarm.pipelines.threads import default_threads, usable_cpus
from ditfarm.jobs.driver import LocalRenderer, RenderSettings
import torch
threads = json.loads(sys.argv[2])
LocalRenderer(RenderSettings(threads=threads))
print(json.dumps([usable_cpus(), default_threads(), torch.get_num_threads()]))
"""


def probe(cpus: list[int], threads=None, omp: str | None = None) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cpus), json.dumps(threads)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_in_process_render_sizes_its_threads_from_the_cpus_it_may_use():
    everything = sorted(os.sched_getaffinity(0))
    usable, default, used = probe(everything)
    assert usable == len(everything) and default == used == max(1, len(everything) - 1)
    assert probe(everything[:1]) == [1, 1, 1]  # one CPU given: one thread, not the machine's count
    assert probe(everything[:1], threads=3)[2] == 3  # --threads wins
    assert probe(everything, omp="1")[1:] == [1, 1]  # so does the environment's OMP_NUM_THREADS


def test_threads_reach_the_settings_and_a_gang_rank_takes_as_many_ray_cpus():
    args = build_parser().parse_args(["render", "m.parquet", "--out", "o", "--threads", "3"])
    settings = settings_from_args(args)
    assert settings.threads == 3
    assert gang_config(RenderSettings(sp=2, gangs=1, threads=3)).cpus_per_rank == 3.0
    assert gang_config(RenderSettings(sp=2, gangs=1)).cpus_per_rank == 1.0
    import pytest

    with pytest.raises(ValueError, match="threads must be a positive integer"):
        RenderSettings(threads=0).validate()
