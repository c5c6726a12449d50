"""Sequence parallelism on two local gloo ranks: same video as one rank, same cache decisions on every rank."""

import time

import pytest

from ditfarm.cache.metrics import psnr
from ditfarm.cluster.local import run_local_gang
from ditfarm.cluster.render_sp import render_on_rank

pytestmark = [pytest.mark.process]

PROMPT = "red circle moving left on blue background"
SAMPLER = dict(steps=30)  # the card's own count: the policies' schedules are fractions of it


@pytest.mark.parametrize("policy, knob", [("none", None), ("bwcache", 0.3), ("taylorseer", 3), ("adaptive", 0.2)])
def test_sp2_matches_sp1_and_ranks_agree(random_model_folder, policy, knob):
    args = (str(random_model_folder), PROMPT, 5, SAMPLER, policy, knob)
    (one,) = run_local_gang(render_on_rank, 1, *args)
    two = run_local_gang(render_on_rank, 2, *args)
    assert psnr(one.frames, two[0].frames) >= 60
    assert two[0].masks == two[1].masks == one.masks
    if policy != "none":
        flat = [m for branch in one.masks.values() for step in branch for m in step]
        assert 0 < sum(flat) < len(flat)  # the cache really skipped something (and not everything)
        # each rank caches only its half of the tokens
        assert two[0].peak_bytes == two[1].peak_bytes == one.peak_bytes // 2


def test_sp2_skips_whole_calls_alike_on_every_rank(random_model_folder):
    """adaptive's fastest rung skips the whole transformer call (collectives included) on skipped steps: every
    rank must skip the same calls, or one would wait in an all-to-all the other never enters."""
    args = (str(random_model_folder), PROMPT, 5, dict(steps=30), "adaptive", 3.0)
    (one,) = run_local_gang(render_on_rank, 1, *args)
    two = run_local_gang(render_on_rank, 2, *args)
    assert two[0].masks == two[1].masks == one.masks
    assert 0 < one.skipped_fraction < 1
    assert psnr(one.frames, two[0].frames) >= 60


def test_fixed_point_sums_are_bit_identical_in_any_order_where_float_sums_flip_a_decision():
    """What makes ranks agree: the reduce's result cannot depend on the order in which a backend adds the ranks'
    contributions.  Float sums of the same contributions in two orders differ in the last bit, and a threshold
    between them turns that bit into two decisions; the fixed-point integers are the same in every order."""
    import itertools

    import torch

    from ditfarm.cluster.collectives import from_fixed_point, to_fixed_point

    contributions = [
        torch.tensor([0.1, 3.0e-1], dtype=torch.float64),
        torch.tensor([0.2, 1.0e-1], dtype=torch.float64),
        torch.tensor([0.3, 2.0e-1], dtype=torch.float64),
    ]  # three ranks' local sums (two rows)

    def float_sum(order):
        total = torch.zeros(2, dtype=torch.float64)
        for i in order:
            total = total + contributions[i]
        return total

    def fixed_sum(order):
        total = torch.zeros(2, dtype=torch.int64)
        for i in order:
            total = total + to_fixed_point(contributions[i])
        return total

    orders = list(itertools.permutations(range(3)))
    floats = {tuple(float_sum(o).tolist()) for o in orders}
    assert len(floats) > 1  # the float reduce depends on the order: (0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3)
    threshold = 0.6  # a policy's "skip while the accumulated change is within the budget"
    decisions = {tuple((torch.tensor(f, dtype=torch.float64) <= threshold).tolist()) for f in floats}
    assert len(decisions) >= 2  # ... and two ranks adding in two orders would decide differently: a hang
    fixed = {tuple(fixed_sum(o).tolist()) for o in orders}
    assert len(fixed) == 1  # every order, the same integers
    decided = {tuple((from_fixed_point(fixed_sum(o)) <= threshold).tolist()) for o in orders}
    assert len(decided) == 1


def stall_rank_one(rank, world, seconds):
    import torch
    import torch.distributed as dist

    if rank == 1:
        time.sleep(seconds)
    dist.all_reduce(torch.ones(1))
    return rank


def test_a_stalled_rank_becomes_a_clear_error_within_the_timeout():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="(?i)timed out"):
        run_local_gang(stall_rank_one, 2, 30.0, timeout_s=3.0)
    assert time.monotonic() - start < 25


def test_bench_sp_one_decision_collective_per_step_and_half_the_cache(random_model_folder):
    from ditfarm.tools.bench_sp import run

    result = run(
        str(random_model_folder),
        "adaptive",
        0.2,
        [(PROMPT, 3)],
        {"steps": 5, "num_frames": 8, "height": 32, "width": 32},
    )
    sp1, sp2 = result["rows"]
    assert result["masks_match_sp1"] and sp2["masks_identical_on_all_ranks"]
    for row in (sp1, sp2):
        assert row["decision_collectives_per_step"] == 1.0  # CFG's two branches share one all-reduce
        assert row["decision_bytes_per_step"] == 6 * 2 * 2 * 8  # blocks x sums x branches x int64
    assert sp2["peak_cache_bytes_per_rank"] * 2 == sp1["peak_cache_bytes_per_rank"]
    assert sp2["psnr_none_vs_sp1"] >= 60


def _try_ring(rank, world, model, attn_type):
    from ditfarm.cluster.sequence_parallel import SequenceParallelConfig, enable_sequence_parallel
    from ditfarm.pipelines.loading import load_pipeline

    pipe = load_pipeline(model)
    try:
        enable_sequence_parallel(pipe.transformer, SequenceParallelConfig(1, ring_degree=2, attn_type=attn_type))
    except ValueError as err:
        return str(err)
    return None


@pytest.mark.parametrize("attn_type", ["torch_math", "torch_flash"])
def test_ring_with_torch_kernels_is_refused(random_model_folder, attn_type):
    messages = run_local_gang(_try_ring, 2, str(random_model_folder), attn_type)
    assert all(m and "ring attention" in m and "Ulysses" in m for m in messages)


def reduce_and_broadcast(rank, world):
    import torch

    from ditfarm.cluster.collectives import backend_device, fixed_point_all_reduce
    from ditfarm.cluster.gang_rank import broadcast_tensors

    summed = fixed_point_all_reduce(torch.tensor([0.5 + rank, 1e-3], dtype=torch.float64))
    sent = {"cond/mask": torch.tensor([1, 0]), "cond/text": torch.arange(4.0).reshape(2, 2)}
    received = broadcast_tensors(sent if rank == 0 else None)
    return backend_device(), summed.tolist(), {k: (t.dtype, t.tolist()) for k, t in received.items()}


def test_collectives_sum_exactly_and_broadcast_to_every_rank():
    import torch

    results = run_local_gang(reduce_and_broadcast, 2)
    for device, summed, received in results:
        assert device is None  # gloo takes tensors where they are; NCCL would move them to this rank's GPU
        assert summed[0] == 2.0 and abs(summed[1] - 2e-3) < 2e-6  # fixed point: 2^-20 resolution
        assert received == {"cond/mask": (torch.int64, [1, 0]), "cond/text": (torch.float32, [[0.0, 1.0], [2.0, 3.0]])}
    assert results[0][1] == results[1][1]  # bit-identical on both ranks


def test_attention_choice_follows_device_dtype_and_what_is_installed():
    import torch

    from ditfarm.pipelines.attention import choose_attention

    def having(*modules):
        return lambda name: name in modules

    assert choose_attention("cpu", torch.bfloat16, having("flash_attn")).sp_kernel == "torch_math"
    assert choose_attention("cuda", torch.float32, having("flash_attn")).sp_kernel == "torch_efficient"
    fa3 = choose_attention("cuda", torch.bfloat16, having("flash_attn_interface", "flash_attn", "xfuser"))
    assert (fa3.backend, fa3.sp_kernel, fa3.long_context) == ("_flash_3", "fa3", "xfuser")
    fa2 = choose_attention("cuda:1", torch.float16, having("flash_attn"))
    assert (fa2.backend, fa2.sp_kernel, fa2.long_context) == ("flash", "fa", "yunchang")
    sdpa = choose_attention("cuda", torch.bfloat16, having())
    assert (sdpa.backend, sdpa.sp_kernel) == ("_native_flash", "torch_flash")
    assert "torch_flash" in sdpa.describe()


def _xfuser_fallback_on_rank(rank, world, model):
    from datetime import timedelta

    from ditfarm.cluster.sequence_parallel import SequenceParallelConfig, enable_sequence_parallel
    from ditfarm.pipelines.loading import load_pipeline

    pipe = load_pipeline(model)
    enable_sequence_parallel(
        pipe.transformer, SequenceParallelConfig(world, long_context="xfuser"), timeout=timedelta(seconds=60)
    )
    attention = pipe.transformer.blocks[0].attn1.processor.attention.attention  # the long-context attention inside
    frames = pipe.generate(PROMPT, seed=5, steps=4)  # every rank: the attention's all-to-alls need both
    return type(attention).__name__, frames


def test_xfuser_attention_falls_back_to_yunchang_on_every_rank_when_it_cannot_run(random_model_folder):
    """xfuser cannot even be imported without an accelerator: every rank votes for yunchang's attention, and
    the video is the one a single process renders."""
    import ditfarm

    results = run_local_gang(_xfuser_fallback_on_rank, 2, str(random_model_folder))
    assert [name for name, _ in results] == ["LongContextAttention", "LongContextAttention"]
    reference = ditfarm.load_pipeline(random_model_folder).generate(PROMPT, seed=5, steps=4)
    assert psnr(reference, results[0][1]) >= 60
