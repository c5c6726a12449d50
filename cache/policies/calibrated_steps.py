"""The step counts a per-step calibration (ERTACache's, BAC's) was measured at, and the checks that hold a run to
them.

A calibration is measured on videos of one length.  On a model whose experts take turns over the steps (Wan2.2
A14B), each expert's calibration covers the steps its own segment runs, counted from the first, as its cache counts
them; the video's length decides the segments, so a run is checked against the video length (``check_steps``, what
the dry run knows) and each cache against its segment (``check_segment``, what the loop tells it).
"""

from __future__ import annotations


class CalibratedSteps:
    """Mixed into a policy whose calibration section holds ``steps`` (the steps its transformer runs) and, for an
    expert, ``video_steps`` (the video's)."""

    method = "the calibration"  # the method's name in messages
    error: type[ValueError] = ValueError

    def read_steps(self, calibration: dict, where: str) -> None:
        self.steps = int(calibration["steps"])
        self.video_steps = int(calibration.get("video_steps", self.steps))
        self.calibration_source = where

    def check_steps(self, num_steps: int) -> None:
        """A video of ``num_steps`` steps."""
        if num_steps != self.video_steps:
            raise self.error(
                f"{self.method} in {self.calibration_source} was calibrated for {self.video_steps}-step videos; this "
                f"video has {num_steps} steps (its calibration is per step): calibrate at {num_steps} steps or render "
                f"with --steps {self.video_steps}"
            )

    def check_segment(self, num_steps: int) -> None:
        """The ``num_steps`` steps this transformer runs in a video: all of them, or its expert's segment."""
        if self.video_steps == self.steps:
            self.check_steps(num_steps)
        elif num_steps != self.steps:
            raise self.error(
                f"{self.method} in {self.calibration_source} was calibrated on the {self.steps} steps this expert "
                f"runs of a {self.video_steps}-step video; here it runs {num_steps}: calibrate at these steps or "
                f"render with --steps {self.video_steps}"
            )
