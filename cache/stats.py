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

    @classmethod
    def joined(cls, parts: list[CacheStats]) -> CacheStats:
        """One video's stats from the transformers that took turns over its steps, in the order they ran: counts
        and bytes summed (each expert holds its cache until the video ends), each branch's masks in step order."""
        joined = cls()
        for part in parts:
            joined.computed += part.computed
            joined.skipped += part.skipped
            joined.peak_bytes += part.peak_bytes
            for branch, masks in part.masks.items():
                joined.masks.setdefault(branch, []).extend(masks)
        return joined
