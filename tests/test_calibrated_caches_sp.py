"""The calibrated and trained caches (ertacache, bac, harmonica) under sequence parallelism: sp=2 renders what sp=1
renders and both ranks follow the same schedule.  Calibrations and the router are made on a random-weight model
folder at 6 steps (one prompt), so the test measures agreement, not quality."""

import shutil

import numpy as np
import pytest

from ditfarm.cache.metrics import psnr
from ditfarm.cache.policies import HarmoniCaConfig, HarmoniCaPolicy
from ditfarm.cache.policies.harmonica import ROUTER_FILE
from ditfarm.cache.profile import CacheProfile, model_identity

pytestmark = [pytest.mark.process]

PROMPT = "red circle moving left on blue background"
STEPS = 6


@pytest.fixture(scope="module")
def calibrated_folder(random_model_folder, tmp_path_factory):
    from ditfarm.pipelines.loading import load_pipeline
    from ditfarm.tools.calibrate_bac import calibrate_bac
    from ditfarm.tools.calibrate_ertacache import calibrate_ertacache
    from ditfarm.tools.train_router import RouterTrainer, RouterTraining

    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(random_model_folder, folder)
    pipe = load_pipeline(str(folder))
    quiet = lambda *a: None  # noqa: E731
    profile = CacheProfile(model=model_identity(pipe.transformer), blocks=[], r_attn_threshold=0.5)
    profile.ertacache = calibrate_ertacache(pipe, [PROMPT], [0.05, 0.1, 0.2, 0.4, 0.8], steps=STEPS, log=quiet)[
        "transformer"
    ]
    # the lambda whose schedule reuses some steps but not all (random weights: where that is is not known ahead)
    lam = next(e["lambda"] for e in profile.ertacache["entries"] if 0 < len(e["reused"]) < STEPS - 1)
    profile.bac = calibrate_bac(pipe, [PROMPT], steps=STEPS, log=quiet)["transformer"]
    profile.save(folder / "cache_profile.json")
    trainer = RouterTrainer(
        pipe,
        [PROMPT],
        RouterTraining(iterations=1, lambda_every=100),
        tmp_path_factory.mktemp("router-run"),
        steps=STEPS,
        log=quiet,
    )
    trainer.train()
    router = trainer.router()
    router.save(folder / ROUTER_FILE)
    tau = float(np.median(router.probabilities()[1:]))  # a threshold that reuses about half of the units
    return folder, profile, router, tau, lam


@pytest.mark.parametrize("policy", ["ertacache", "bac", "harmonica"])
def test_sp2_matches_sp1_and_both_ranks_follow_one_schedule(calibrated_folder, policy):
    from ditfarm.cluster.local import run_local_gang
    from ditfarm.cluster.render_sp import render_on_rank

    folder, profile, router, tau, lam = calibrated_folder
    knob = {"ertacache": lam, "bac": 0.5, "harmonica": tau}[policy]
    args = (str(folder), PROMPT, 5, dict(steps=STEPS), policy, knob)
    (one,) = run_local_gang(render_on_rank, 1, *args)
    two = run_local_gang(render_on_rank, 2, *args)
    assert two[0].masks == two[1].masks == one.masks
    flat = [m for branch in one.masks.values() for step in branch for m in step]
    assert 0 < sum(flat) < len(flat)  # the cache really reused something (and not everything)
    if policy == "harmonica":
        units = len(router.logits[0])
        expected = HarmoniCaPolicy(HarmoniCaConfig(threshold=tau, router=router)).schedule(STEPS, units)
        assert one.masks["cond"] == expected.tolist()
    if policy == "ertacache":
        reused = set(next(e for e in profile.ertacache["entries"] if e["lambda"] == lam)["reused"])
        assert {s for s, m in enumerate(one.masks["cond"]) if not any(m)} == reused
    assert psnr(one.frames, two[0].frames) >= 60
