"""The cache's forecast arithmetic against expectations worked out by hand, on a real (random-weight) transformer.

Torch's own hooks watch the block stack from outside the engine: the input of block 0 and the output of each
block, at every step (the engine's hooks still call each block's ``__call__`` when they skip it).  At computed
steps that gives the true residuals; at a skipped step the engine's output must equal the input plus the forecast

    d0 + damping * (d1 * k + d2 * k^2 / 2),   d0 = r_last, d1 = (r_last - r_prev) / gap, d2 = (d1 - d1_prev) / gap

computed here from those residuals alone, never through ``BlockMemory``.  A forecast of the wrong sign or scale,
a damping applied twice or not at all, or a derivative divided by the wrong gap all fail these tests.
"""

import numpy as np
import pytest
import torch

import ditfarm
from ditfarm import cache
from ditfarm.cache.policies.base import CachePolicy

pytestmark = [pytest.mark.unit]


@pytest.fixture(scope="module")
def transformer(random_model_folder):
    return ditfarm.load_pipeline(random_model_folder).transformer


class Schedule(CachePolicy):
    """Computes the steps in ``computed`` (whole steps, or ``blocks`` only on the others), forecasting with the
    given order and damping."""

    name = "schedule"
    indicator = "residual"

    def __init__(self, computed, order, damping, whole_steps, blocks=None):
        self.computed, self.forecast_order, self.forecast_damping = set(computed), order, damping
        self.whole_steps, self.blocks = whole_steps, blocks

    def decide(self, state, step, computed, sums):
        nxt = step + 1
        if nxt in self.computed:
            return np.ones(state.num_blocks, dtype=np.int8)
        if self.whole_steps:
            return np.zeros(state.num_blocks, dtype=np.int8)
        return np.asarray(self.blocks, dtype=np.int8)


def watched_run(transformer, policy, steps):
    """Run ``steps`` calls with the engine attached; returns per step the stack input and every block's output."""
    torch.manual_seed(0)
    text = torch.randn(1, 16, 32)
    xs = [torch.randn(1, transformer.config.in_channels, 4, 16, 16) for _ in range(steps)]
    inputs, outputs = [], []
    hooks = [transformer.blocks[0].register_forward_pre_hook(lambda m, a: inputs.append(a[0].double()))]
    hooks += [
        b.register_forward_hook(lambda m, a, o, i=i: outputs.append((i, o.double())))
        for i, b in enumerate(transformer.blocks)
    ]
    engine = cache.CacheEngine(transformer, policy)
    engine.attach()
    try:
        with torch.no_grad():
            for step, x in enumerate(xs):
                t = torch.tensor([900.0 - 100 * step])
                with transformer.cache_context("cond", step_index=step, num_inference_steps=steps):
                    transformer(x, t, text, return_dict=False)
    finally:
        engine.detach()
        for h in hooks:
            h.remove()
    n = len(transformer.blocks)
    per_step = [dict(outputs[s * n : (s + 1) * n]) for s in range(steps)]
    assert len(inputs) == steps and all(len(p) == n for p in per_step)
    return inputs, per_step, engine.last_video.masks["cond"]


def forecast(residuals: dict[int, torch.Tensor], order: int, damping: float, step: int) -> torch.Tensor:
    """The hand formula, from the residuals of the last order + 1 computed steps (step -> residual)."""
    steps = sorted(residuals)[-(order + 1) :]
    r = [residuals[s] for s in steps]
    last = steps[-1]
    k = step - last
    out = r[-1].clone()
    if order >= 1:
        d1 = (r[-1] - r[-2]) / (steps[-1] - steps[-2])
        out = out + damping * d1 * k
    if order >= 2:
        d1_prev = (r[-2] - r[-3]) / (steps[-2] - steps[-3])
        d2 = (d1 - d1_prev) / (steps[-1] - steps[-2])
        out = out + damping * d2 * k * k / 2
    return out


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().mean()))


@pytest.mark.parametrize(
    "order, damping, computed, skipped",
    [
        (1, 0.4, [0, 2, 3], [4, 5, 6]),  # gap 1 before the run
        (1, 0.4, [0, 1, 3], [4, 5]),  # gap 2: d1 is divided by it
        (1, 1.0, [0, 1], [2, 3]),
        (2, 0.4, [0, 1, 2], [3, 4, 5]),
    ],
)
def test_stack_path_forecast_is_the_hand_formula(transformer, order, damping, computed, skipped):
    steps = max(computed + skipped) + 1
    policy = Schedule([c for c in computed if c > 0], order, damping, whole_steps=True)
    inputs, outs, masks = watched_run(transformer, policy, steps)
    last = len(transformer.blocks) - 1
    assert [s for s in range(steps) if masks[s][0]] == [s for s in range(steps) if s in computed or s > max(skipped)]
    residuals = {s: outs[s][last] - inputs[s] for s in computed}
    for s in skipped:
        expected = inputs[s] + forecast(residuals, order, damping, s)
        assert close(outs[s][last], expected), f"step {s}"
        wrong_sign = inputs[s] + 2 * residuals[max(computed)] - forecast(residuals, order, damping, s)
        assert not close(outs[s][last], wrong_sign)
    if order >= 1:  # the forecast is not plain reuse (else the test could not tell the terms apart)
        assert not close(outs[skipped[-1]][last], inputs[skipped[-1]] + residuals[max(computed)])


def test_block_path_forecast_of_a_skipped_run_is_the_sum_of_hand_formulas(transformer):
    n = len(transformer.blocks)
    run = [1] + [0] * (n - 2) + [1]  # blocks 1 .. n-2 skipped on steps 3, 4, 5 as one run
    policy = Schedule([1, 2], order=1, damping=0.4, whole_steps=False, blocks=run)
    inputs, outs, masks = watched_run(transformer, policy, 6)
    assert masks[3] == masks[4] == masks[5] == run
    block_in = lambda s, b: inputs[s] if b == 0 else outs[s][b - 1]  # noqa: E731
    for s in (3, 4, 5):
        predicted = sum(
            forecast({c: outs[c][b] - block_in(c, b) for c in (0, 1, 2)}, 1, 0.4, s) for b in range(1, n - 1)
        )
        assert close(outs[s][n - 2], outs[s][0] + predicted), f"step {s}"  # the run's last block holds the sum
        for b in range(1, n - 2):  # inside the run nothing is added twice: its first block adds the whole sum
            assert torch.equal(outs[s][b], outs[s][n - 2])


def test_reuse_output_returns_the_last_output_bit_for_bit_whatever_the_forecast(transformer):
    class ReuseEveryOther(Schedule):
        reuse_output = True

    torch.manual_seed(1)
    text = torch.randn(1, 16, 32)
    xs = [torch.randn(1, transformer.config.in_channels, 4, 16, 16) for _ in range(5)]
    engine = cache.CacheEngine(transformer, ReuseEveryOther([2, 4], order=1, damping=0.4, whole_steps=True))
    engine.attach()
    outs = []
    try:
        with torch.no_grad():
            for step, x in enumerate(xs):
                with transformer.cache_context("cond", step_index=step, num_inference_steps=5):
                    outs.append(transformer(x, torch.tensor([500.0]), text, return_dict=False)[0])
    finally:
        engine.detach()
    assert torch.equal(outs[1], outs[0]) and torch.equal(outs[3], outs[2])
    assert not torch.equal(outs[2], outs[0]) and not torch.equal(outs[4], outs[2])
