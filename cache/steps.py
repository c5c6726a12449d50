"""Which denoising step a transformer call belongs to, for the hooks on the transformer."""

from __future__ import annotations


class StepCounter:
    """The step of each call: the cache context's ``step_index`` (ditfarm's loop and diffusers' set it), else,
    for a caller without step information, this branch's count of calls so far."""

    def __init__(self):
        self._calls: dict[str, int] = {}

    def step_of(self, context) -> int:
        if context.step_index is not None:
            return int(context.step_index)
        step = self._calls.get(context.name, 0)
        self._calls[context.name] = step + 1
        return step

    def reset(self) -> None:
        self._calls = {}
