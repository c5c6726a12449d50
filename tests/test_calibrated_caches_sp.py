"""The calibrated and trained caches (ertacache, bac, harmonica) under sequence parallelism: sp=2 renders what one
process renders and both ranks follow the same schedule, on a one-transformer folder and on a two-expert one whose
experts are calibrated each on its own segment.  Calibrations and the router are made on random-weight folders at
a few steps (one prompt), so the test measures agreement, not quality."""

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


def segments(pipe, steps: int) -> list[tuple[str, int, int]]:
    """(component, first step, steps) of each transformer's segment of a ``steps``-step video."""
    if len(pipe.transformers()) == 1:
        return [("transformer", 0, steps)]
    pipe.scheduler.set_timesteps(steps)
    boundary = pipe.variant.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    switch = sum(float(t) >= boundary for t in pipe.scheduler.timesteps)
    return [("transformer", 0, switch), ("transformer_2", switch, steps - switch)]


# The two-expert folder covers the one-transformer path too: each expert is one transformer with its own
# calibration (its segment), and a one-transformer model's calibration is the case of a single segment.
@pytest.fixture(scope="module", params=["two experts"])
def calibrated_folder(request, tmp_path_factory):
    """A model folder with every calibration and a router: the tiny architecture, or a Wan2.2 A14B-style folder
    whose experts are calibrated each on its own segment."""
    from ditfarm.pipelines.loading import load_pipeline
    from ditfarm.tools.calibrate_bac import calibrate_bac
    from ditfarm.tools.calibrate_ertacache import calibrate_ertacache
    from ditfarm.tools.train_router import RouterTrainer, RouterTraining

    one = request.param == "one transformer"
    source = request.getfixturevalue("random_model_folder" if one else "small_wan22_a14b_folder")
    steps = STEPS if one else 2 * STEPS  # segments of a few steps each
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(source, folder)
    pipe = load_pipeline(str(folder))
    quiet = lambda *a: None  # noqa: E731
    first, *others = pipe.transformers().values()
    profile = CacheProfile(model=model_identity(first), blocks=[], r_attn_threshold=0.5)
    profile.experts = {
        name: CacheProfile(model=model_identity(t), blocks=[], r_attn_threshold=0.5)
        for name, t in list(pipe.transformers().items())[1:]
    }
    own = profile.for_transformers(pipe.transformers())
    lambdas = [0.05, 0.1, 0.2, 0.4, 0.8]
    for name, section in calibrate_ertacache(pipe, [PROMPT], lambdas, steps=steps, log=quiet).items():
        own[name].ertacache = section
    # the lambda whose schedules reuse some steps but not all (random weights: where that is is not known ahead)
    reused = [sum(len(p.ertacache["entries"][i]["reused"]) for p in own.values()) for i in range(len(lambdas))]
    lam = next(lam for lam, n in zip(lambdas, reused) if 0 < n < steps - len(own))
    for name, section in calibrate_bac(pipe, [PROMPT], steps=steps, log=quiet).items():
        own[name].bac = section
    profile.save(folder / "cache_profile.json")
    trainer = RouterTrainer(
        pipe,
        [PROMPT],
        RouterTraining(iterations=1, lambda_every=100),
        tmp_path_factory.mktemp("router-run"),
        steps=steps,
        log=quiet,
    )
    trainer.train()
    router = trainer.router()
    router.save(folder / ROUTER_FILE)
    tau = float(np.median(router.probabilities()[1:]))  # a threshold that reuses about half of the units
    return folder, own, router, tau, lam, steps, segments(pipe, steps)


def render_each_policy(rank, world, folder: str, steps: int, knobs: dict):
    """One gang renders the video with each calibrated policy in turn: (frames, masks) of each."""
    from ditfarm.cluster.gang_rank import RankRenderer
    from ditfarm.types import RenderSettings, RowInputs

    out = []
    for policy, knob in knobs.items():
        settings = RenderSettings(model=folder, cache=policy, cache_knob=knob, collective_timeout_s=60.0)
        result = RankRenderer(rank, world, settings).render(RowInputs(PROMPT, 5, sampler={"steps": steps}))
        out.append((result.frames, result.masks))
    return out


def test_sp2_renders_what_one_process_renders_and_both_ranks_follow_one_schedule(calibrated_folder):
    """Each policy on a two-rank gang (gloo) renders the one-process video with its schedule on both ranks; on a
    two-expert folder each expert follows its own calibration over its own segment."""
    from ditfarm.cache import enable, last_video_stats
    from ditfarm.cache.presets import config_for
    from ditfarm.cluster.local import run_local_gang
    from ditfarm.pipelines.loading import load_pipeline

    folder, own, router, tau, lam, steps, parts = calibrated_folder
    knobs = {"ertacache": lam, "bac": 0.5, "harmonica": tau}
    rank0, rank1 = run_local_gang(render_each_policy, 2, str(folder), steps, knobs, timeout_s=600)
    pipe = load_pipeline(str(folder))
    for (policy, knob), (frames, masks), (_, other_masks) in zip(knobs.items(), rank0, rank1):
        enable(pipe, config_for(pipe, policy, knob))
        alone = pipe.generate(PROMPT, seed=5, steps=steps)
        one = last_video_stats(pipe).masks
        assert masks == other_masks == one, policy
        flat = [m for branch in one.values() for step in branch for m in step]
        assert 0 < sum(flat) < len(flat), policy  # the cache really reused something (and not everything)
        if policy == "harmonica":
            expected = []
            for name, _, length in parts:
                expert = {"transformer": router, **router.experts}[name]
                units = len(expert.logits[0])
                config = HarmoniCaConfig(threshold=tau, router=expert)
                expected += HarmoniCaPolicy(config).schedule(length, units).tolist()
            assert one["cond"] == expected
        if policy == "ertacache":
            reused = {
                start + s
                for name, start, _ in parts
                for s in next(e for e in own[name].ertacache["entries"] if e["lambda"] == lam)["reused"]
            }
            assert {s for s, m in enumerate(one["cond"]) if not any(m)} == reused
        assert psnr(alone, frames) >= 60, policy
