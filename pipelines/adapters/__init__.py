"""Model adapters: one per transformer family, found by the transformer's class.

Everything the layers above need to know of a model's insides lives in its family's adapter (``base`` says
what that is); caches, sequence parallelism and the profiler ask ``adapter_for(transformer)`` and name no module
of any model.  Adding a family is one module here that subclasses ``TransformerAdapter`` and registers itself for
its transformer class, plus its tests.
"""

from __future__ import annotations

from .base import UNIT_ROLES, TransformerAdapter, adapter_for, register_adapter
from .wan import WanAdapter

__all__ = ["UNIT_ROLES", "TransformerAdapter", "WanAdapter", "adapter_for", "register_adapter"]
