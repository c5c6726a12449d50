"""diffusers' Pyramid Attention Broadcast on tiny's Wan transformer: per CFG branch with ditfarm's states, and why
diffusers' own single-state hook cannot be used under two-call CFG."""

import pytest

from ditfarm.tools.bench_cache import clear_caches
from ditfarm.tools.pab import enable_pab

pytestmark = [pytest.mark.unit]

PROMPT = "red circle moving left on blue background"


def attention_calls(pipe, enable, steps=12):
    """(branch, output) of every call of block 0's self-attention, and how many of them computed."""
    calls, computed = [], []
    attn = pipe.transformer.blocks[0].attn1
    handles = [
        attn.register_forward_hook(lambda m, a, k, out: calls.append(out), with_kwargs=True),
        attn.to_q.register_forward_hook(lambda *a: computed.append(len(calls))),
    ]
    try:
        enable(pipe)
        pipe.generate(PROMPT, seed=1, steps=steps)
    finally:
        for h in handles:
            h.remove()
        clear_caches(pipe)
    branches = ["cond", "uncond"] * (len(calls) // 2)  # ditfarm's loop: cond, then uncond, every step
    return list(zip(branches, calls)), set(computed)


def reused_from(calls, computed):
    """For each call that did not compute: the branch of the call whose output it returned."""
    sources = []
    for i, (branch, out) in enumerate(calls):
        if i in computed:
            continue
        source = next(calls[j][0] for j in range(i - 1, -1, -1) if j in computed and calls[j][1] is out)
        sources.append((branch, source))
    return sources


def test_each_branch_reuses_its_own_attention(tiny_pipe):
    calls, computed = attention_calls(tiny_pipe, lambda p: enable_pab(p, spatial=2))
    sources = reused_from(calls, computed)
    assert sources, "PAB skipped no attention call"
    assert len(sources) < len(calls) // 2
    assert all(branch == source for branch, source in sources)
    assert {b for b, _ in sources} == {"cond", "uncond"}


def test_diffusers_single_state_hook_hands_uncond_the_cond_attention(tiny_pipe):
    """The reason for the per-branch states: with one state per module, at range 2 every uncond call in the
    timestep range returns the cond call's attention of the same step."""
    from ditfarm.tools.pab import pab_config

    calls, computed = attention_calls(tiny_pipe, lambda p: p.transformer.enable_cache(pab_config(p, spatial=2)))
    sources = reused_from(calls, computed)
    assert sources and all((branch, source) == ("uncond", "cond") for branch, source in sources)


def test_pab_covers_every_attention_module_of_wan_blocks(tiny_pipe):
    try:
        assert enable_pab(tiny_pipe, spatial=3) == 2 * len(tiny_pipe.transformer.blocks)
    finally:
        clear_caches(tiny_pipe)
    assert not any(
        hasattr(m, "_diffusers_hook") and m._diffusers_hook.get_hook("pyramid_attention_broadcast")
        for m in tiny_pipe.transformer.modules()
    )
