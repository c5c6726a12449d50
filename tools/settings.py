"""What the tool commands declare before they load a model: the bench's method families and the router training's
defaults.  Kept free of torch so that ``ditfarm bench cache --help`` and ``ditfarm train-router --help`` start at
once and show the same defaults the tools use."""

from __future__ import annotations

from dataclasses import dataclass

#: ERTACache's ablation (the paper's Table 3): each family is ``ertacache`` with one more of its parts off
ERTACACHE_VARIANTS = {
    "ertacache": "full",
    "ertacache-offline-dt": "offline+dt",
    "ertacache-offline": "offline",
    "ertacache-uniform": "uniform",
}
#: BAC's ablation: uniform updates, one ACS schedule for all units, ACS per unit, + bubbling union (``bac``)
BAC_VARIANTS = {"bac": "full", "bac-blockwise": "blockwise", "bac-unified": "unified", "bac-uniform": "uniform"}
#: every method family ``ditfarm bench cache`` can run, in the order of its table
GRID_FAMILIES = (
    "bwcache",
    "profiling",
    "taylorseer",
    "adaptive",
    "adaptive-block",
    *ERTACACHE_VARIANTS,
    *BAC_VARIANTS,
    "harmonica",
    "pab",
    "fbcache",
    "diffusers-taylorseer",
    "magcache",
    "fewer-steps",
)
#: ``ditfarm bench steps``' rows: every block computed (the engine's overhead), then each policy's saving
BENCH_STEPS_METHODS = "none,bwcache:0,adaptive:0,bwcache:0.15,taylorseer:5,adaptive:0.5"


@dataclass
class RouterTraining:
    """What a HarmoniCa router run trains: ``beta`` trades the video's error against cache use (larger: more
    reuse)."""

    iterations: int = 60
    beta: float = 0.1
    lr: float = 0.2
    tau_train: float = 0.1
    lambda_every: int = 10
    lambda_floor: float = 0.1  # of lambda's mean: no step's error is free until the next refresh sees it
    save_every: int = 5
    seed: int = 0
