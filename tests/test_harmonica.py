"""HarmoniCa: the router's schedule, its file and model check, training on CPU (loss falls, resume), and SP."""

import numpy as np
import pytest

from ditfarm import cache
from ditfarm.cache import CacheProfile, HarmoniCaConfig
from ditfarm.cache.policies import HarmoniCaPolicy
from ditfarm.cache.policies.harmonica import ROUTER_FILE, Router, RouterError
from ditfarm.cache.presets import build_config
from ditfarm.cache.profile import ProfileMismatchError, model_identity
from ditfarm.tools.train_router import RouterTrainer, RouterTraining

pytestmark = [pytest.mark.unit]

PROMPT = "red circle moving left on blue background"


def test_the_schedule_is_the_router_above_its_threshold_and_step_0_computes():
    logits = [[-3.0, 3.0, 0.0], [-3.0, 3.0, 0.0], [1.0, -1.0, -4.0]]
    policy = HarmoniCaPolicy(HarmoniCaConfig(threshold=0.3, router=Router(model={}, logits=logits)))
    assert policy.schedule(3, 3).tolist() == [[1, 1, 1], [0, 1, 1], [1, 0, 0]]
    with pytest.raises(RouterError, match="trained for 3-step videos of 3 units; this video has 4 steps"):
        policy.schedule(4, 3)
    with pytest.raises(ValueError, match="0 <= tau < 1"):
        HarmoniCaPolicy(HarmoniCaConfig(threshold=1.0, router=Router(model={}, logits=logits)))


def test_a_router_lives_beside_the_profile_and_another_model_refuses_it(tiny_pipe, tmp_path):
    profile = CacheProfile.load(tiny_pipe.default_cache_profile())
    mine = tmp_path / "cache_profile.json"
    profile.save(mine)
    with pytest.raises(RouterError, match=f"no HarmoniCa router at {tmp_path / ROUTER_FILE}"):
        build_config("harmonica", 0.1, mine)
    units = 3 * len(tiny_pipe.transformer.blocks)
    other = {**model_identity(tiny_pipe.transformer), "config_hash": "0123456789abcdef"}
    Router(model=other, logits=np.zeros((30, units)).tolist()).save(tmp_path / ROUTER_FILE)
    with pytest.raises(ProfileMismatchError, match=r"router .* was trained on .*\(config hash 0123456789abcdef\)"):
        cache.enable(tiny_pipe, build_config("harmonica", 0.1, mine))
    assert cache.engine_of(tiny_pipe) is None
    Router(model=model_identity(tiny_pipe.transformer), logits=np.zeros((30, units)).tolist()).save(
        tmp_path / ROUTER_FILE
    )
    engine = cache.enable(tiny_pipe, build_config("harmonica", 0.6, mine))  # sigmoid(0) = 0.5 < 0.6: reuse
    try:
        assert engine.policy.schedule(30, units)[1:].sum() == 0
    finally:
        cache.disable(tiny_pipe)


def trainer(pipe, run_dir, **changes):
    config = RouterTraining(
        **{"iterations": 4, "beta": 0.1, "lr": 0.3, "lambda_every": 100, "save_every": 1, **changes}
    )
    return RouterTrainer(pipe, [PROMPT], config, run_dir, steps=6, log=lambda *a: None)


def test_training_lowers_the_loss_and_resumes_where_it_stopped(tiny_pipe, tmp_path):
    run = trainer(tiny_pipe, tmp_path / "run")
    run.refresh_lambda()  # training refreshes it at iteration 0 from the same logits: the same lambda
    before = run.evaluate(PROMPT, seed=77)
    run.train(until=2)
    assert run.iteration == 2 and (tmp_path / "run" / "checkpoint.pt").exists()

    resumed = trainer(tiny_pipe, tmp_path / "run")
    assert resumed.iteration == 2 and np.allclose(
        resumed.logits["transformer"].detach(), run.logits["transformer"].detach()
    )
    resumed.train()
    assert resumed.iteration == 4 and [h["iteration"] for h in resumed.history] == [1, 2, 3, 4]
    after = resumed.evaluate(PROMPT, seed=77)
    assert after < before
    assert (resumed.logits["transformer"].detach()[0] == 5.0).all()  # step 0 always computes
    router = resumed.router()
    assert router.model == model_identity(tiny_pipe.transformer) and router.steps == 6
    with pytest.raises(ValueError, match="holds a run of another model or setting"):
        trainer(tiny_pipe, tmp_path / "run", beta=0.9)
