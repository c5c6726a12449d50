"""What a cache engine reports per video (shared by the block and the unit engines)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CacheStats:
    """Per video, summed over CFG branches: block (or unit) computations run and skipped, and the most bytes held."""

    computed: int = 0
    skipped: int = 0
    peak_bytes: int = 0
    masks: dict[str, list[list[int]]] = field(default_factory=dict)  # branch -> per-step compute masks

    @property
    def skipped_fraction(self) -> float:
        total = self.computed + self.skipped
        return self.skipped / total if total else 0.0
