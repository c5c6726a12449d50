"""``ditfarm render --dry-run``: validate a whole manifest against a model and an output, rendering nothing.

Every row goes through the manifest's own checks (id, duplicates, empty prompt, numbers) and the model's refusals
read from its configuration (``pipelines.checks``: an unknown word for ``tiny``, a size the model cannot take),
then is classed as would render, would skip (an ``ok`` row with its video already in the output) or would fail.
Nothing is loaded but configs, nothing is written, and memory holds only the ids seen and the failure groups.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..storage.stores import open_output
from ..types import RenderSettings
from .manifest import Manifest, RowProblem, describe_row
from .results import output_state
from .row_identity import ChangeTally, compare_row
from .run_checks import check_run

EXAMPLES_PER_REASON = 5


@dataclass
class FailureGroup:
    count: int = 0
    examples: list[str] = field(default_factory=list)  # "row N (id X)" of the first few


@dataclass
class DryRunReport:
    source: str
    would_render: int = 0
    would_skip: int = 0
    would_fail: int = 0
    changed: ChangeTally = field(default_factory=ChangeTally)  # ok ids whose rows now ask for other content
    resume_by_id: bool = False  # those would be skipped (not rendered again)
    set_aside: list = field(default_factory=list)  # results parts --repair would move aside
    failures: dict[str, FailureGroup] = field(default_factory=dict)
    seconds: float = 0.0
    cache: str = ""  # the run's cache and its knob, with where the knob comes from (KnobChoice.describe)

    @property
    def total(self) -> int:
        return self.would_render + self.would_skip + self.would_fail

    def add_failure(self, where: str, message: str) -> None:
        """``where``: the row as messages name it (``describe_row``); ``message`` with or without that prefix."""
        reason = message[len(where) + 2 :] if message.startswith(f"{where}: ") else message
        group = self.failures.setdefault(reason, FailureGroup())
        group.count += 1
        self.would_fail += 1
        if len(group.examples) < EXAMPLES_PER_REASON:
            group.examples.append(where)

    def lines(self) -> list[str]:
        out = [
            f"{self.source}: {self.total} rows: would render {self.would_render}, would skip {self.would_skip} "
            f"(already ok), would fail {self.would_fail} ({self.seconds:.1f} s)"
        ]
        if self.cache:
            out.append(f"  cache: {self.cache}")
        if self.set_aside:
            out.append(
                f"  --repair would move {len(self.set_aside)} unreadable results part(s) aside: "
                + ", ".join(self.set_aside)
            )
        if self.changed.ids:
            fate = (
                "would be skipped all the same (--resume-by-id)"
                if self.resume_by_id
                else "would be rendered again (counted in would render)"
            )
            out.append(
                f"  {self.changed.ids} id(s) already ok have manifest rows that changed since their videos were "
                f"stored, and {fate}: {self.changed.describe()}"
            )
        for reason, group in sorted(self.failures.items(), key=lambda kv: -kv[1].count):
            more = f", ... {group.count - len(group.examples)} more" if group.count > len(group.examples) else ""
            out.append(f"  {group.count} x {reason}: {', '.join(group.examples)}{more}")
        return out


def dry_run(
    manifest_source,
    out,
    settings: RenderSettings = RenderSettings(),
    overwrite: bool = False,
    resume_by_id: bool = False,
    repair: bool = False,
) -> DryRunReport:
    """Classify every row; raises ManifestError / StorageError / ValueError for what would stop the real run."""
    start = time.perf_counter()
    checks = check_run(settings, read_model=True)  # what the run refuses as a whole, it refuses here alike
    if settings.gangs != 0:  # and a gang no node of the cluster could hold
        from .gang_renderer import check_room_ahead  # deferred: torch

        check_room_ahead(settings)
    manifest = Manifest(manifest_source, readahead=True)
    store = open_output(out)
    unreadable = [] if repair else None  # without --repair, the run would stop on them: so does the dry run
    state = output_state(store, unreadable=unreadable)
    done = set() if overwrite else state.done
    report = DryRunReport(
        source=manifest.source,
        resume_by_id=resume_by_id,
        set_aside=[name for name, _ in unreadable or []],
        cache=checks.knob.describe(settings.cache) if checks.knob is not None else "",
    )
    for task in manifest:
        if isinstance(task, RowProblem):
            report.add_failure(describe_row(task.row, task.id, task.origin), task.error)
            continue
        try:
            checks.check_row(task, settings, inputs_exist=True)
        except ValueError as err:
            report.add_failure(task.where, str(err))
            continue
        if task.id in done and (compare_row(task, state.rows, settings, checks.model, report.changed) or resume_by_id):
            report.would_skip += 1
        else:
            report.would_render += 1
    report.seconds = time.perf_counter() - start
    return report
