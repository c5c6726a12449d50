"""``ditfarm status``: what a run's output holds: counts per status, whether each ok id's video is still stored as
its row recorded it (checked as a rerun checks it: the listing's sizes and ETags, a local file's time and, where
that changed, its hash), the lease, the settings of the ok rows and the failed rows' errors.  Ids and errors are
printed with control characters escaped."""

from __future__ import annotations

import sys
from collections import Counter

from ..storage.errors import StorageError, redact
from ..text import printable


def register(sub) -> None:
    p = sub.add_parser("status", help="counts per status in OUT's results, and the failed rows' errors")
    p.add_argument("out", help="output folder or s3://bucket/prefix")
    p.add_argument("--errors", type=int, default=20, help="failed rows to list (default 20)")
    p.set_defaults(run=run)


def lease_line(out: str) -> str:
    """Who holds the output now, as ``ditfarm status`` says it."""
    from ..storage.lease import current_holder  # deferred: pyarrow
    from ..storage.stores import open_output  # deferred: pyarrow

    try:
        seen = current_holder(open_output(out))
    except StorageError as err:
        return f"lease: unknown ({err})"
    if seen is None or seen.holder.released:
        return "lease: free (no run is rendering into this output)"
    if seen.debris:
        return (
            f"lease: free (lease.json is empty or unreadable, {seen.age_s:.0f} s old: left by a run killed while "
            "writing it; the next run takes it over at once)"
        )
    if seen.holder.gone():
        state = "its process is gone from this host: the next run takes it over at once"
    elif seen.stale:
        state = "stale: the next run takes it over"
    else:
        state = "a run is rendering into this output"
    return f"lease: held by {seen.holder.describe()}, renewed {seen.age_s:.0f} s ago ({state})"


def stored_settings_line(table) -> str | None:
    """What the ok rows were rendered with, each setting's values and how many rows have each, so a rerun with
    other settings is no surprise (it keeps them; --overwrite renders them again)."""

    from ..jobs.results import SETTING_COLUMNS  # deferred: pyarrow

    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    if not ok:
        return None
    parts = []
    for column in SETTING_COLUMNS:
        counts = Counter(r.get(column) for r in ok if r.get(column) is not None)
        if counts:
            parts.append(f"{column} " + ", ".join(f"{value} x{n}" for value, n in counts.most_common()))
    return f"  ok rows rendered with: {'; '.join(parts)}" if parts else None


def run(args) -> int:
    from ..jobs.results import best_per_id, duplicate_rows, output_state, read_all_results  # deferred: pyarrow
    from ..storage.stores import open_output  # deferred: pyarrow

    unreadable: list[tuple[str, str]] = []
    try:
        store = open_output(args.out)
        rows = read_all_results(store, unreadable=unreadable)
        done = output_state(store, table=rows).done  # the videos, checked as a rerun checks them
        if rows.num_rows == 0 and not store.exists():
            print(
                f"ditfarm status: {args.out} does not exist: no run has written there (check the path)", file=sys.stderr
            )
            return 2
    except (StorageError, OSError, ValueError) as err:
        print(f"ditfarm status: {redact(str(err))}", file=sys.stderr)
        return 2
    for name, reason in unreadable:
        print(
            f"warning: {args.out.rstrip('/')}/results/{name} cannot be read ({redact(reason)}): the rows it held are "
            "not counted below.  Move it out of results/, or rerun with --repair (it moves the part aside)",
            file=sys.stderr,
        )
    table, duplicates = best_per_id(rows), duplicate_rows(rows)
    counts = Counter(table.column("status").to_pylist())
    print(
        f"{args.out}: {table.num_rows} ids: " + ", ".join(f"{counts[s]} {s}" for s in sorted(counts))
        if counts
        else f"{args.out}: no results yet"
    )
    statuses = zip(table.column("id").to_pylist(), table.column("status").to_pylist())
    ok_ids = [video_id for video_id, status in statuses if status == "ok"]
    gone = [i for i in ok_ids if i not in done]
    if ok_ids:
        line = f"  videos: {len(ok_ids) - len(gone)} of {len(ok_ids)} ok id(s) stored as their rows recorded them"
        if gone:
            line += (
                f"; {len(gone)} missing or changed since (a rerun renders them again): "
                + ", ".join(printable(i, 200) for i in gone[: args.errors])
                + (f", ... {len(gone) - args.errors} more" if len(gone) > args.errors else "")
            )
        print(line)
    if duplicates.num_rows:
        print(
            f"  {duplicates.num_rows} duplicate manifest row(s), not rendered: "
            + "; ".join(printable(e) for e in duplicates.column("error").to_pylist()[: args.errors])
        )
    print(lease_line(args.out))
    settings = stored_settings_line(table)
    if settings:
        print(settings)
    failed = [r for r in table.select(["id", "error", "status"]).to_pylist() if r["status"] == "failed"]
    for row in failed[: args.errors]:
        print(f"  failed {printable(row['id'], 200)}: {printable(row['error'])}")
    if len(failed) > args.errors:
        print(f"  ... and {len(failed) - args.errors} more")
    return 0
