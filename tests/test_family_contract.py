"""The family contract: every registered family's small folders load, render, cache and profile through the same
code, so an assumption about one family anywhere in the caches, the loop or the profiler fails here instead of in
a user's render.  A family added by following docs/architecture.md ("Adding a model family") is tested by this
file with no edit to it."""

import numpy as np
import pytest

from ditfarm.cache import enable, last_video_stats
from ditfarm.cache.metrics import psnr
from ditfarm.cache.presets import build_config
from ditfarm.cache.profiler import profile_pipeline
from ditfarm.pipelines.family import families
from ditfarm.pipelines.loading import load_pipeline

pytestmark = [pytest.mark.slow]

STEPS = 30
PROMPTS = ["red circle moving left on blue background", "white square moving up on green gradient background"]
# knobs that skip on every family at STEPS (taylorseer's interval is in steps of the card's reference schedule)
SKIPPING = {"bwcache": 0.3, "taylorseer": 5, "adaptive": 1.0}


@pytest.fixture(scope="module", params=[f.name for f in families()])
def family_folders(request, tmp_path_factory):
    family = next(f for f in families() if f.name == request.param)
    return family, family.small_folders(tmp_path_factory.mktemp(f"contract-{family.name}"))


def steps_of(pipe) -> int:
    """STEPS per transformer: experts that take turns each count their own segment as a schedule, and the
    knobs above skip on schedules of about STEPS."""
    return STEPS * len(pipe.transformers())


def render(pipe, prompt: str = PROMPTS[0]) -> np.ndarray:
    return pipe.generate(prompt, seed=5, steps=steps_of(pipe))


def test_every_block_policy_caches_every_family(family_folders):
    """Uncached renders are sized as asked; a policy that computes everything changes nothing; each block policy
    skips at a skipping knob and stays recognisably the uncached video."""
    family, folders = family_folders
    for variant, folder in folders.items():
        pipe = load_pipeline(folder)
        reference = render(pipe)
        s = pipe.defaults
        assert reference.shape[:3] == (s.num_frames, s.height, s.width), (family.name, variant)
        enable(pipe, build_config("bwcache", 0.0, None, pipe.cache_settings))
        assert np.array_equal(render(pipe), reference), (family.name, variant)
        for policy, knob in SKIPPING.items():
            enable(pipe, build_config(policy, knob, None, pipe.cache_settings))
            cached = render(pipe)
            stats = last_video_stats(pipe)
            assert stats.skipped > 0, (family.name, variant, policy)
            # a floor, not a fidelity target (those are per model, in BENCHMARKS.md): a cache that broke the
            # stack (a stream dropped, a block's output misplaced) lands near 4 dB
            assert psnr(cached, reference) > 12, (family.name, variant, policy, psnr(cached, reference))
        enable(pipe, None)


def test_unit_caches_run_or_are_refused_naming_the_unit_a_family_lacks(family_folders):
    from ditfarm.cache.policies import BACConfig  # noqa: F401 - the unit policies' configs need calibrations
    from ditfarm.pipelines.adapters import adapter_for

    family, folders = family_folders
    for variant, folder in folders.items():
        adapter = adapter_for(load_pipeline(folder).transformer)
        try:
            units = adapter.unit_modules()
        except TypeError as refused:
            assert family.name in str(refused) and "unit caches need all of" in str(refused), str(refused)
            continue
        assert len(units) == 3 * len(adapter.blocks()), (family.name, variant)


def test_the_profiler_profiles_every_family_and_its_profile_drives_the_profiling_policy(family_folders):
    family, folders = family_folders
    for variant, folder in folders.items():
        pipe = load_pipeline(folder)
        profile = profile_pipeline(pipe, PROMPTS, steps=steps_of(pipe), probe_steps=2, max_queries=256).profile
        experts = [profile, *profile.experts.values()]  # one per transformer, each over the steps it ran
        assert [e.model["component"] for e in experts] == list(pipe.transformers()), (family.name, variant)
        assert sum(len(e.blocks[0].change) for e in experts) == steps_of(pipe), (family.name, variant)
        for expert in experts:
            assert all(len(b.change) == len(expert.blocks[0].change) for b in expert.blocks), (family.name, variant)
            assert all(np.isfinite(b.r_attn) for b in expert.blocks), (family.name, variant)
        enable(pipe, build_config("profiling", 6, profile, pipe.cache_settings))
        render(pipe)
        assert last_video_stats(pipe).skipped > 0, (family.name, variant)
        enable(pipe, None)


def render_on_two_ranks(rank, world, runs):
    """For each (folder, CFG modes) of ``runs``: one video with the adaptive cache, sequence-parallel over the two
    ranks, then (where the family runs classifier-free guidance) the same under CFG parallelism (one branch per
    rank): (frames, masks, skipped fraction) of each.  One gang for every variant of a family."""
    from ditfarm.cluster.gang_rank import RankRenderer
    from ditfarm.types import RenderSettings, RowInputs

    out = []
    for folder, cfg_modes in runs:
        for cfg_parallel in cfg_modes:
            settings = RenderSettings(
                model=folder, cache="adaptive", cache_knob=SKIPPING["adaptive"], cfg_parallel=cfg_parallel
            )
            renderer = RankRenderer(rank, world, settings)
            result = renderer.render(RowInputs(PROMPTS[0], 5, sampler={"steps": steps_of(renderer.pipe)}))
            out.append((result.frames, result.masks, result.skipped_fraction))
    return out


def test_every_family_renders_on_a_two_rank_gang_and_under_cfg_parallelism(family_folders):
    """Two local ranks (gloo), sequence-parallel and then one CFG branch each: every rank decides what the single
    process decides, and the cached video is the one it renders with the same cache.  A family with its guidance
    embedded runs one pass per step: CFG parallelism is refused for it by name, in the dry run's checks."""
    from ditfarm.cluster.local import run_local_gang
    from ditfarm.jobs.run_checks import check_run
    from ditfarm.types import RenderSettings

    family, folders = family_folders
    expected, runs = [], []
    for variant, folder in folders.items():
        pipe = load_pipeline(folder)
        enable(pipe, build_config("adaptive", SKIPPING["adaptive"], None, pipe.cache_settings))
        alone = render(pipe)
        masks = last_video_stats(pipe).masks
        enable(pipe, None)
        cfg_modes = (False, True) if pipe.classifier_free_guidance else (False,)
        if not pipe.classifier_free_guidance:
            assert set(masks) == {"cond"}, (family.name, variant)
            with pytest.raises(ValueError, match="runs no classifier-free guidance"):
                check_run(RenderSettings(model=str(folder), sp=2, gangs=1, cfg_parallel=True), read_model=True)
        expected.append((variant, alone, masks, len(cfg_modes)))
        runs.append((str(folder), cfg_modes))
    rank0, rank1 = run_local_gang(render_on_two_ranks, 2, runs, timeout_s=240 * len(runs))
    for variant, alone, masks, modes in expected:
        (sp0, *cfg0), (sp1, *cfg1) = rank0[:modes], rank1[:modes]
        rank0, rank1 = rank0[modes:], rank1[modes:]
        assert sp0[1] == sp1[1] == masks and sp0[2] > 0, (family.name, variant)
        assert psnr(sp0[0], alone) >= 60, (family.name, variant, psnr(sp0[0], alone))
        if cfg0:
            assert cfg0[0][1] == {"cond": masks["cond"]} and cfg1[0][1] == {"uncond": masks["uncond"]}, variant
            assert psnr(cfg0[0][0], alone) >= 60, (family.name, variant, psnr(cfg0[0][0], alone))
