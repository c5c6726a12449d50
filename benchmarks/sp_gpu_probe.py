"""Sequence parallelism on one GPU: what a one-GPU machine can check of the multi-GPU path.

    python benchmarks/sp_gpu_probe.py --json benchmarks/sp-gpu-probe-h100.json

1. NCCL (one rank): the cache's fixed-point reduce and the prompt broadcast accept CPU inputs (the engine's sums
   can sit on the CPU; NCCL takes CUDA tensors only).
2. yunchang's Ulysses attention with torch's fused CUDA kernels over two gloo ranks holding CUDA tensors (two NCCL
   ranks cannot share one GPU), against plain SDPA: max abs error per rank.
3. `tiny` rendered at sp = 1 and sp = 2 on CUDA with three policies: PSNR of sp = 2 against sp = 1, identical masks.
Ring attention cannot be checked this way: gloo has no point-to-point send of CUDA tensors.
"""

import os
import time
from pathlib import Path

import harness
import torch

PROMPT = "red circle moving left on blue background"


def attn_check(rank, world, dtype_name, ulysses, ring, attn):
    from yunchang import LongContextAttention, set_seq_parallel_pg
    from yunchang.kernels import AttnType

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4096, 8, 64, device="cuda", dtype=dtype) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)
    set_seq_parallel_pg(ulysses, ring, rank, world)
    n = 4096 // world
    sl = slice(rank * n, (rank + 1) * n)
    out = LongContextAttention(attn_type=AttnType.from_string(attn))(
        q[:, sl].contiguous(), k[:, sl].contiguous(), v[:, sl].contiguous()
    )
    return float((out.float() - ref[:, sl].float()).abs().max())


def render_fn(rank, world, policy, knob):
    from ditfarm.cluster.gang_rank import RankRenderer
    from ditfarm.types import RenderSettings, RowInputs

    r = RankRenderer(rank, world, RenderSettings(model="tiny", device="cuda", cache=policy, cache_knob=knob))
    row = RowInputs(PROMPT, 5, sampler=dict(steps=10))
    r.render(row)
    torch.cuda.synchronize()
    t = time.time()
    out = r.render(row)
    torch.cuda.synchronize()
    return {
        "frames": out.frames,
        "masks": out.masks,
        "skipped_fraction": out.skipped_fraction,
        "seconds": time.time() - t,
    }


def nccl_cpu_inputs(rank, world):
    from ditfarm.cluster.collectives import fixed_point_all_reduce
    from ditfarm.cluster.gang_rank import broadcast_tensors

    v = torch.tensor([1.5, 2.25], dtype=torch.float64)
    r = fixed_point_all_reduce(v)
    b = broadcast_tensors({"cond/encoder_hidden_states": torch.arange(3.0)})
    return {"reduce": r.tolist(), "reduce_device": str(r.device), "broadcast": b["cond/encoder_hidden_states"].tolist()}


if __name__ == "__main__":
    args = harness.parser(__doc__, threads=False, json_default=Path("sp-gpu-probe.json")).parse_args()
    import torch.distributed as dist

    from ditfarm.cache.metrics import psnr
    from ditfarm.cluster.local import run_local_gang

    res = {}
    # 1. NCCL, one rank: CPU inputs to the cache reduce and the text broadcast
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    res["nccl_cpu_inputs"] = nccl_cpu_inputs(0, 1)
    dist.destroy_process_group()
    print(res, flush=True)
    # 2. yunchang kernels on CUDA, two gloo ranks on one GPU
    for dtype, u, rg, attn in [
        ("bfloat16", 2, 1, "torch_flash"),
        ("float32", 2, 1, "torch_efficient"),
    ]:
        key = f"attn {dtype} ulysses{u} ring{rg} {attn}"
        try:
            res[key] = run_local_gang(attn_check, 2, dtype, u, rg, attn, timeout_s=120)
        except Exception as e:
            res[key] = f"ERROR {str(e)[:400]}"
        print(key, res[key], flush=True)
    # 3. tiny renders at sp 1 and 2 (gloo, CUDA tensors)
    for policy, knob in [("adaptive", 0.5), ("taylorseer", 3), ("bwcache", 0.3)]:
        try:
            (one,) = run_local_gang(render_fn, 1, policy, knob, timeout_s=300)
            two = run_local_gang(render_fn, 2, policy, knob, timeout_s=300)
            res[f"render {policy}"] = {
                "psnr_sp2_vs_sp1": float(psnr(one["frames"], two[0]["frames"])),
                "masks_equal": two[0]["masks"] == two[1]["masks"] == one["masks"],
                "sec_sp1": one["seconds"],
                "sec_sp2": two[0]["seconds"],
                "skipped": one["skipped_fraction"],
            }
        except Exception as e:
            res[f"render {policy}"] = f"ERROR {str(e)[:600]}"
        print(policy, res[f"render {policy}"], flush=True)
    harness.write_result(args.json, res)
