"""Model adapters: one per transformer family, found by the transformer's class.

Everything the layers above need to know of a model's insides lives in its family's adapter (``base`` says
what that is); caches, sequence parallelism and the profiler ask ``adapter_for(transformer)`` and name no module
of any model.  Adding a family's adapter is one module here that subclasses ``TransformerAdapter`` and registers
itself for its transformer class: every module of this package is imported with it.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    UNIT_ROLES,
    TransformerAdapter,
    adapter_for,
    describe_identity,
    mark_identity,
    register_adapter,
    same_model,
)
from .wan import WanAdapter

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "UNIT_ROLES",
    "TransformerAdapter",
    "WanAdapter",
    "adapter_for",
    "describe_identity",
    "mark_identity",
    "register_adapter",
    "same_model",
]
