"""Cache policies: one config dataclass and one policy class each."""

from .adaptive import AdaptiveConfig, AdaptivePolicy
from .bac import BACConfig, BACPolicy
from .base import CachePolicy, DecisionState
from .bwcache import BWCacheConfig, BWCachePolicy
from .ertacache import ERTACacheConfig, ERTACachePolicy
from .harmonica import HarmoniCaConfig, HarmoniCaPolicy
from .schedule import ProfilingConfig, ProfilingPolicy, TaylorSeerConfig, TaylorSeerPolicy

POLICY_FOR_CONFIG = {
    BWCacheConfig: BWCachePolicy,
    ProfilingConfig: ProfilingPolicy,
    TaylorSeerConfig: TaylorSeerPolicy,
    AdaptiveConfig: AdaptivePolicy,
    ERTACacheConfig: ERTACachePolicy,
    BACConfig: BACPolicy,
    HarmoniCaConfig: HarmoniCaPolicy,
}

__all__ = [
    "AdaptiveConfig",
    "AdaptivePolicy",
    "BACConfig",
    "BACPolicy",
    "BWCacheConfig",
    "BWCachePolicy",
    "CachePolicy",
    "DecisionState",
    "ERTACacheConfig",
    "ERTACachePolicy",
    "HarmoniCaConfig",
    "HarmoniCaPolicy",
    "POLICY_FOR_CONFIG",
    "ProfilingConfig",
    "ProfilingPolicy",
    "TaylorSeerConfig",
    "TaylorSeerPolicy",
]
