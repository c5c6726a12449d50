"""A gloo process group of N local processes: for tests and CPU runs of sequence parallelism without Ray.

The Ray gang (ditfarm.cluster.gang) does the same rendezvous across nodes; this is the minimal version: the
parent picks a free loopback port, starts N processes, each joins with an explicit timeout, runs ``fn(rank,
world, *args)`` and sends back its result.  A process that fails or times out makes the whole call fail.

The processes fork from a server that imported the rendering modules once (multiprocessing's forkserver): a
fresh interpreter spends seconds importing torch and diffusers' models, which a benchmark or test suite calling
many gangs would pay per rank per call.  Each rank takes the caller's environment as it is at the call.
"""

from __future__ import annotations

import os
import queue as queue_module
import socket
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


PRELOAD = ["ditfarm.cluster.gang_rank"]  # what a rank imports to render: torch, diffusers' models, the caches


def _entry(rank, world, port, timeout_s, threads, fn, args, queue, environ):
    os.environ.clear()
    os.environ.update(environ)  # the caller's now, not the server's from when it started
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        queue.put((rank, True, fn(rank, world, *args)))
    except BaseException as err:  # report, then let the parent decide
        queue.put((rank, False, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_local_gang(fn, world: int, *args, timeout_s: float = 60.0, threads: int = 1) -> list:
    """Run fn(rank, world, *args) on ``world`` gloo ranks; returns the results in rank order."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    queue = ctx.Queue()
    port = free_port()
    environ = dict(os.environ)
    procs = [
        ctx.Process(target=_entry, args=(r, world, port, timeout_s, threads, fn, args, queue, environ))
        for r in range(world)
    ]
    for p in procs:
        p.start()

    results, errors = {}, []
    deadline = time.monotonic() + timeout_s * 3 + 60
    try:
        while len(results) + len(errors) < world:
            try:
                rank, ok, value = queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in results]
                if dead and queue.empty():
                    time.sleep(1.0)  # a last report may still be in flight
                    if queue.empty():
                        errors += [f"rank {r}: process exited with code {procs[r].exitcode}" for r in dead]
                        break
                if time.monotonic() > deadline:
                    errors.append(f"no result within {timeout_s * 3 + 60:.0f} s")
                    break
                continue
            if ok:
                results[rank] = value
            else:  # one failed rank poisons the group: stop waiting, the others are killed below
                errors.append(f"rank {rank}: {value}")
                break
    finally:
        for p in procs:
            p.join(timeout=0 if errors else 10)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RuntimeError("local gang failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world)]
