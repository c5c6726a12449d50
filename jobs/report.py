"""A one-file HTML report of an output location: totals, throughput, failures, timings and a contact sheet.

``write_report(out)`` reads the results once and publishes ``OUT/report.html`` through the output's store, so
the same call works for a local folder and an ``s3://`` prefix, and a reader never sees half a page.

The page is meant to be opened from anywhere (a laptop, an S3 console's download, an email attachment), so it
needs nothing else: CSS is inline, charts are SVG drawn here, thumbnails are PNG ``data:`` URIs, and there is no
script at all.  A Content-Security-Policy that allows only inline styles and ``data:`` images makes any
accidental reference to the network fail loudly in a browser instead of working on one machine only.

It is cheap enough to rewrite every few minutes while a job runs: one read of the results, and for each of the
``sample`` videos on the contact sheet one download (S3) and a decode that stops after the last frame shown.
Error texts come from users' prompts and from exceptions, so every value on the page is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..storage.stores import OutputStore, check_video_id, open_output
from .results import STATUS_FAILED, STATUS_OK, best_per_id, duplicate_rows, read_all_results

REPORT_NAME = "report.html"
MAX_FAILURES = 200  # rows of the failures table; the rest are counted
THUMB_SIDE = 160  # a thumbnail's longer side, in pixels, at most
BIN_CHOICES_S = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_BINS = 60


def write_report(out, sample: int = 12, started_at: datetime | None = None) -> str:
    """Write ``report.html`` at the top of ``out`` (a folder, an ``s3://`` prefix or an OutputStore) and return
    its URI.

    ``sample``: how many ok videos the contact sheet shows (spread evenly over the ids in sorted order, so the
    same output gives the same sheet).  ``started_at``: when the current run started (naive means UTC); the
    throughput chart then covers that run up to now, so a stall shows as empty minutes.  Without it the chart
    spans every timestamped row."""
    store = out if isinstance(out, OutputStore) else open_output(out)
    unreadable: list[tuple[str, str]] = []  # parts that are not Parquet: shown what the others hold, and named
    summary = summarise(read_all_results(store, unreadable=unreadable), started_at)
    summary.unreadable = unreadable
    sheet = [contact_entry(store, row) for row in sampled_ok_rows(summary.ok_rows, sample)]
    return store.write_text(REPORT_NAME, render_page(store.location.uri, summary, sheet))


# ----------------------------------------------------------------------------------------------------------- data


@dataclass
class Summary:
    """What the page shows, computed once from the results table."""

    ids: int
    ok: int
    failed: int
    rows: int
    retries: int  # attempts beyond the first, summed over every row
    seconds: np.ndarray  # per ok video (latest row)
    skipped: np.ndarray  # cache skip fraction per ok video that has one
    failures: list[dict]  # latest failed rows, newest first, at most MAX_FAILURES
    ok_rows: pa.Table  # latest ok rows (id, seed, seconds, skipped_fraction, frames), sorted by id
    throughput: Throughput | None = None
    untimed_rows: int = 0  # rows without a finish time: they have no place on the time axis
    earlier_rows: int = 0  # rows finished before started_at (earlier runs)
    duplicates: int = 0  # manifest rows whose id an earlier row has (each recorded once)
    generated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    this_run: bool = False  # the throughput section covers the current run alone (the rest covers every run)
    unreadable: list = field(default_factory=list)  # (part, reason) of results parts left out: they cannot be read


@dataclass
class Throughput:
    start: datetime
    bin_s: int
    ok: np.ndarray  # videos finished per bin
    failed: np.ndarray


def column(table: pa.Table, name: str, kind: pa.DataType) -> pa.ChunkedArray:
    """A column, or all nulls when no part has it (outputs written before the column existed)."""
    if name in table.column_names:
        return table.column(name)
    return pa.chunked_array([pa.nulls(table.num_rows, kind)])


def summarise(table: pa.Table, started_at: datetime | None = None) -> Summary:
    """Totals from each id's best row (ok wins); retries and throughput from every row (each row is one attempt)."""
    latest = best_per_id(table)
    status = column(latest, "status", pa.string())
    ok = latest.filter(pc.fill_null(pc.equal(status, STATUS_OK), False))
    failed = latest.filter(pc.fill_null(pc.equal(status, STATUS_FAILED), False))
    attempts = pc.fill_null(column(table, "attempts", pa.int32()), 1).cast(pa.int64())
    retries = int(pc.sum(pc.max_element_wise(pc.subtract(attempts, 1), 0)).as_py() or 0)
    throughput, untimed, earlier = throughput_bins(table, started_at)
    return Summary(
        ids=latest.num_rows,
        ok=ok.num_rows,
        failed=failed.num_rows,
        rows=table.num_rows,
        retries=retries,
        seconds=values(ok, "seconds"),
        skipped=values(ok, "skipped_fraction"),
        failures=failure_rows(failed),
        ok_rows=ok_row_infos(ok),
        throughput=throughput,
        untimed_rows=untimed,
        earlier_rows=earlier,
        duplicates=duplicate_rows(table).num_rows,
        this_run=started_at is not None,
    )


def values(table: pa.Table, name: str) -> np.ndarray:
    """The non-null floats of a column."""
    array = column(table, name, pa.float64()).drop_null()
    return np.asarray(array.to_numpy(), dtype=np.float64) if len(array) else np.zeros(0)


def failure_rows(failed: pa.Table) -> list[dict]:
    """The newest MAX_FAILURES failed rows (the table is in write order, so the newest are last)."""
    names = ["id", "error", "attempts", "finished_at"]
    tail = failed.slice(max(0, failed.num_rows - MAX_FAILURES))
    rows = pa.table(
        {
            n: column(
                tail,
                n,
                pa.string()
                if n in ("id", "error")
                else pa.int32()
                if n == "attempts"
                else pa.timestamp("ms", tz="UTC"),
            )
            for n in names
        }
    )
    return rows.to_pylist()[::-1]


def ok_row_infos(ok: pa.Table) -> pa.Table:
    """The columns the contact sheet captions need, sorted by id (kept as a table: only the sample becomes
    Python objects, however many videos there are)."""
    kinds = {
        "id": pa.string(),
        "seed": pa.int64(),
        "seconds": pa.float64(),
        "skipped_fraction": pa.float64(),
        "frames": pa.int32(),
    }
    table = pa.table({n: column(ok, n, k) for n, k in kinds.items()})
    return table.take(pc.sort_indices(table, [("id", "ascending")])) if table.num_rows else table


def sample_indices(n: int, k: int) -> list[int]:
    """``k`` of ``range(n)`` spread evenly from the first to the last (all of them when there are fewer)."""
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return [i * (n - 1) // (k - 1) for i in range(k)]


def sample_rows(rows: list, k: int) -> list:
    return [rows[i] for i in sample_indices(len(rows), k)]


def sampled_ok_rows(ok_rows: pa.Table, k: int) -> list[dict]:
    return ok_rows.take(pa.array(sample_indices(ok_rows.num_rows, k), pa.int64())).to_pylist()


def throughput_bins(table: pa.Table, started_at: datetime | None) -> tuple[Throughput | None, int, int]:
    """(ok and failed rows per time bin, rows without a timestamp, rows before ``started_at``)."""
    stamps = column(table, "finished_at", pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("ms", tz="UTC"))
    ms = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    status = np.asarray(pc.fill_null(column(table, "status", pa.string()), "").to_numpy(zero_copy_only=False))
    timed = ~np.isnan(ms)
    untimed = int((~timed).sum())
    now = datetime.now(timezone.utc)
    if started_at is not None:
        start = started_at if started_at.tzinfo else started_at.replace(tzinfo=timezone.utc)
        start_ms = start.timestamp() * 1000
        earlier = int((timed & (ms < start_ms)).sum())
        timed &= ms >= start_ms
        end_ms = max(now.timestamp() * 1000, ms[timed].max() if timed.any() else 0)
    else:
        earlier = 0
        if not timed.any():
            return None, untimed, earlier
        start_ms, end_ms = ms[timed].min(), ms[timed].max()
    span_s = max(1.0, (end_ms - start_ms) / 1000)
    bin_s = next((b for b in BIN_CHOICES_S if span_s / b <= MAX_BINS), BIN_CHOICES_S[-1])
    count = max(1, math.ceil(span_s / bin_s + 1e-9))
    index = np.minimum(((ms[timed] - start_ms) / 1000 // bin_s).astype(np.int64), count - 1)
    kinds = status[timed]
    ok = np.bincount(index[kinds == STATUS_OK], minlength=count)
    failed = np.bincount(index[kinds == STATUS_FAILED], minlength=count)
    start = datetime.fromtimestamp(start_ms / 1000, timezone.utc)
    return Throughput(start, bin_s, ok, failed), untimed, earlier


# ------------------------------------------------------------------------------------------------ contact sheet


@dataclass
class ContactEntry:
    row: dict
    images: list[str]  # data: URIs of the first, middle and last frames; empty when the video could not be read
    problem: str | None = None


def contact_entry(store: OutputStore, row: dict) -> ContactEntry:
    """The three thumbnails of one video, or the reason there are none (a missing or unreadable file must not
    stop the report)."""
    try:
        frames = read_video_frames(store, row["id"], row.get("frames"))
        return ContactEntry(row, [png_data_uri(thumbnail(f)) for f in frames])
    except Exception as err:  # noqa: BLE001 - any failure to fetch or decode is shown, not raised
        return ContactEntry(row, [], f"{type(err).__name__}: {err}")


def read_video_frames(store: OutputStore, video_id: str, frames: int | None) -> list[np.ndarray]:
    """First, middle and last frames of ``videos/<id>.mp4`` (an object store's fetched to a temporary file)."""
    problem = check_video_id(video_id)
    if problem:
        raise ValueError(problem)
    with store.local_video(video_id) as path:
        return pick_frames(path, frames)


def pick_frames(path: Path, frames: int | None) -> list[np.ndarray]:
    """Decode up to the last needed frame only.  ``frames`` is the count the results row recorded; without it
    the count is estimated from the container's duration and frame rate.  A file shorter than recorded gives its
    last frame for the missing ones."""
    import imageio_ffmpeg  # deferred: imageio_ffmpeg

    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is not in the output")
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = meta["size"]
        if not frames:
            frames = max(1, round(float(meta.get("duration") or 0) * float(meta.get("fps") or 0)))
        wanted = sorted({0, (frames - 1) // 2, frames - 1})
        got: dict[int, np.ndarray] = {}
        last = None
        for index, buffer in enumerate(reader):
            last = np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
            if index in wanted:
                got[index] = last
            if index >= wanted[-1]:
                break
    finally:
        reader.close()
    if last is None:
        raise ValueError(f"{path.name} holds no frames")
    picked = [got.get(i, last) for i in wanted]
    return picked + [picked[-1]] * (3 - len(picked))  # a one- or two-frame video still shows three images


def thumbnail(frame: np.ndarray, side: int = THUMB_SIDE):
    """The frame as a PIL image whose longer side fits ``side`` (box filter: cheap, and sharp enough)."""
    from PIL import Image  # deferred: PIL

    image = Image.fromarray(np.ascontiguousarray(frame))
    image.thumbnail((side, side), Image.Resampling.BOX)
    return image


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_data_uri(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


# ------------------------------------------------------------------------------------------------------- charts

CHART_W, HIST_W, CHART_H = 1100, 520, 230  # viewBox sizes: about the CSS pixels they get
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 12, 34
OK_COLOUR, FAILED_COLOUR, BAR_COLOUR = "#2f7d6d", "#c2423b", "#4a6fa5"


def _svg(chart_id: str, label: str, body: list[str], width: int = CHART_W) -> str:
    return (
        f'<svg id="{chart_id}" class="chart" viewBox="0 0 {width} {CHART_H}" role="img" '
        f'aria-label="{html.escape(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def _axes(width: int, y_max: float, y_step: float, y_label: str) -> list[str]:
    """Frame, horizontal grid lines with their values, and the y label."""
    x0, x1, y0, y1 = PAD_L, width - PAD_R, CHART_H - PAD_B, PAD_T
    out = []
    lines = round(y_max / y_step)
    for i in range(lines + 1):
        value = y_step * i
        y = y0 - (y0 - y1) * i / lines
        out.append(f'<line class="grid" x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(value)}</text>')
    out.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/>')
    out.append(
        f'<text class="label" x="12" y="{(y0 + y1) / 2:.1f}" transform="rotate(-90 12 {(y0 + y1) / 2:.1f})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    return out


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _grid(value: float, whole: bool = False) -> tuple[float, float]:
    """(top, step) of a y axis holding ``value``: a step of 1, 2 or 5 x 10^k (whole numbers for counts) and at
    most five steps, so the grid lines get round labels."""
    value = value if value > 0 else 1.0
    base = 10 ** math.floor(math.log10(value / 5))
    step = next(m * base for m in (1, 2, 5, 10) if m * base * 5 >= value * (1 - 1e-12))
    if whole:
        step = max(1, round(step))
    return step * math.ceil(value / step - 1e-9), step


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h >= 48:
        return f"{h // 24}d {h % 24}h"
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def throughput_svg(t: Throughput) -> str:
    """Stacked bars of ok and failed videos per minute in each time bin."""
    per_minute = 60.0 / t.bin_s
    ok, failed = t.ok * per_minute, t.failed * per_minute
    y_max, y_step = _grid(float((ok + failed).max()) if len(ok) else 1.0)
    x0, x1, y0 = PAD_L, CHART_W - PAD_R, CHART_H - PAD_B
    step = (x1 - x0) / len(ok)
    scale = (y0 - PAD_T) / y_max
    body = _axes(CHART_W, y_max, y_step, "videos / min")
    for i, (a, b) in enumerate(zip(ok, failed)):
        x = x0 + i * step + step * 0.08
        w = max(step * 0.84, 0.5)
        offset = _duration(i * t.bin_s)
        tip = f"+{offset}: {_number(a)} ok/min, {_number(b)} failed/min"
        if a:
            body.append(
                f'<rect class="ok" x="{x:.1f}" y="{y0 - a * scale:.1f}" width="{w:.1f}" '
                f'height="{a * scale:.1f}" fill="{OK_COLOUR}"><title>{tip}</title></rect>'
            )
        if b:
            body.append(
                f'<rect class="failed" x="{x:.1f}" y="{y0 - (a + b) * scale:.1f}" width="{w:.1f}" '
                f'height="{b * scale:.1f}" fill="{FAILED_COLOUR}"><title>{tip}</title></rect>'
            )
    every = math.ceil(len(ok) / 6)  # bins per labelled tick: at most about seven labels, on bin edges
    edges = list(range(0, len(ok) + 1, every))
    for edge in edges:
        body.append(
            f'<text class="tick" x="{x0 + edge * step:.1f}" y="{y0 + 16}" '
            f'text-anchor="{_anchor(edge, len(ok))}">+{_duration(edge * t.bin_s)}</text>'
        )
    body.append(
        f'<text class="label" x="{(x0 + x1) / 2:.1f}" y="{CHART_H - 2}" text-anchor="middle">'
        f"time since {t.start:%Y-%m-%d %H:%M:%S} UTC ({_duration(t.bin_s)} bins)</text>"
    )
    return _svg("chart-throughput", "videos finished per minute over time", body)


def _anchor(i: int, last: int) -> str:
    """Tick labels at the ends of an axis stay inside the chart."""
    return "start" if i == 0 else "end" if i == last else "middle"


def histogram_svg(
    chart_id: str,
    data: np.ndarray,
    x_label: str,
    lo: float | None = None,
    hi: float | None = None,
    bins: int | None = None,
    percent: bool = False,
) -> str:
    """Counts of ``data`` in equal bins over [lo, hi] (the data's range when not given); by default about two
    bins per square root of the count, 5 to 20."""
    width = HIST_W
    bins = bins or int(np.clip(2 * math.ceil(math.sqrt(len(data))), 5, 20))
    lo = float(data.min()) if lo is None else lo
    hi = float(data.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0 if not percent else min(1.0, lo + 0.05)
        lo = hi - (1.0 if not percent else 0.05)
    counts, edges = np.histogram(np.clip(data, lo, hi), bins=bins, range=(lo, hi))
    y_max, y_step = _grid(float(counts.max()), whole=True)
    x0, x1, y0 = PAD_L, width - PAD_R, CHART_H - PAD_B
    step = (x1 - x0) / bins
    scale = (y0 - PAD_T) / y_max
    fmt = (lambda v: f"{v * 100:.0f}%") if percent else (lambda v: f"{_number(v)} s")
    body = _axes(width, y_max, y_step, "videos")
    for i, c in enumerate(counts):
        if c:
            body.append(
                f'<rect class="bar" x="{x0 + i * step + 1:.1f}" y="{y0 - c * scale:.1f}" '
                f'width="{max(step - 2, 0.5):.1f}" height="{c * scale:.1f}" fill="{BAR_COLOUR}">'
                f"<title>{fmt(edges[i])} to {fmt(edges[i + 1])}: {c}</title></rect>"
            )
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        body.append(
            f'<text class="tick" x="{x:.1f}" y="{y0 + 16}" text-anchor="{_anchor(i, 4)}">'
            f"{fmt(lo + (hi - lo) * i / 4)}</text>"
        )
    body.append(
        f'<text class="label" x="{(x0 + x1) / 2:.1f}" y="{CHART_H - 2}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
    )
    return _svg(chart_id, x_label, body, width)


# --------------------------------------------------------------------------------------------------------- page

CSS = """
:root { --ink:#1d2430; --muted:#5f6b7a; --line:#dde2e8; --bg:#f5f7fa; --card:#fff; --ok:#2f7d6d; --bad:#c2423b; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1200px; margin:0 auto; padding:28px 24px 48px; }
header h1 { font-size:22px; margin:0 0 4px; font-weight:650; }
header p { margin:0; color:var(--muted); }
header code { font-size:13px; background:#e9edf2; padding:1px 6px; border-radius:4px; word-break:break-all; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:18px 20px;
          margin-top:18px; }
section h2 { font-size:15px; margin:0 0 12px; font-weight:620; letter-spacing:.01em; }
.totals { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:12px; }
.total { border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.total .value { display:block; font-size:26px; font-weight:650; font-variant-numeric:tabular-nums; }
.total .name { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.05em; }
.total.ok .value { color:var(--ok); } .total.failed .value { color:var(--bad); }
.row { display:grid; grid-template-columns:repeat(auto-fit,minmax(420px,1fr)); gap:18px; }
.row section { margin-top:0; }
.charts { margin-top:18px; }
svg.chart { width:100%; height:auto; display:block; }
svg .grid { stroke:#eceff3; } svg .axis { stroke:#9aa5b1; }
svg text { font:11px system-ui,sans-serif; fill:var(--muted); } svg .label { font-size:12px; fill:var(--ink); }
.note, .stats { color:var(--muted); font-size:13px; margin:8px 0 0; }
.legend span { display:inline-block; width:10px; height:10px; border-radius:2px; margin:0 4px 0 12px; }
table { width:100%; border-collapse:collapse; font-size:13px; }
th { text-align:left; color:var(--muted); font-weight:600; border-bottom:1px solid var(--line); padding:6px 8px; }
td { border-bottom:1px solid #eef1f4; padding:6px 8px; vertical-align:top; }
td.when { white-space:nowrap; font-variant-numeric:tabular-nums; }
td.id { white-space:nowrap; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
td.error { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; white-space:pre-wrap;
           word-break:break-word; color:#6d2420; }
.sheet { display:grid; grid-template-columns:repeat(auto-fill,minmax(330px,1fr)); gap:14px; }
figure.contact { margin:0; border:1px solid var(--line); border-radius:8px; padding:8px; background:#fafbfc; }
figure.contact .frames { display:grid; grid-template-columns:repeat(3,1fr); gap:4px; }
figure.contact img { width:100%; height:auto; display:block; border-radius:3px; background:#000;
                     outline:1px solid rgba(0,0,0,.08); outline-offset:-1px;
                     image-rendering:pixelated; }
figure.contact figcaption { margin-top:6px; font-size:12px; color:var(--muted); }
figure.contact figcaption b { color:var(--ink); font-family:ui-monospace,Menlo,Consolas,monospace; font-weight:600; }
.missing { color:var(--bad); font-size:13px; padding:18px 8px; text-align:center; border:1px dashed #e3b7b3;
           border-radius:4px; word-break:break-word; }
"""

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_page(location: str, s: Summary, sheet: list[ContactEntry]) -> str:
    """The whole page; every value that came from the results table is escaped here."""
    e = html.escape
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>ditfarm report: {e(location)}</title>",
            f"<style>{CSS}</style></head><body><main>",
            f"<header><h1>Render report</h1><p><code>{e(location)}</code> &middot; generated "
            f"{s.generated_at:%Y-%m-%d %H:%M:%S} UTC</p></header>",
            unreadable_html(s),
            totals_html(s),
            throughput_html(s),
            '<div class="row charts">',
            distribution_html(
                "Seconds per video",
                histogram_svg("hist-seconds", s.seconds, "seconds per video") if len(s.seconds) else None,
                s.seconds,
                lambda v: f"{v:.2f} s",
            ),
            distribution_html(
                "Cache skip fraction",
                histogram_svg(
                    "hist-skip", s.skipped, "fraction of block computations skipped", 0.0, 1.0, bins=20, percent=True
                )
                if len(s.skipped)
                else None,
                s.skipped,
                lambda v: f"{v * 100:.1f}%",
            ),
            "</div>",
            failures_html(s),
            sheet_html(sheet, s.ok_rows.num_rows),
            "</main></body></html>",
        ]
    )


def unreadable_html(s: Summary) -> str:
    """A warning naming each results part the page leaves out because it cannot be read."""
    if not s.unreadable:
        return ""
    e = html.escape
    items = "".join(f"<li><code>results/{e(name)}</code>: {e(reason)}</li>" for name, reason in s.unreadable)
    return (
        f'<section id="unreadable"><h2>Results parts left out</h2><p class="note">{len(s.unreadable)} part(s) '
        "cannot be read; the rows they held are not counted below.  Move them out of <code>results/</code>, or "
        f"rerun with <code>--repair</code> (it moves them aside).</p><ul>{items}</ul></section>"
    )


def totals_html(s: Summary) -> str:
    items = [
        ("total-ids", "ids", s.ids, ""),
        ("total-ok", "ok", s.ok, "ok"),
        ("total-failed", "failed", s.failed, "failed"),
        ("total-rows", "result rows", s.rows, ""),
        ("total-retries", "attempts beyond the first", s.retries, ""),
    ]
    if s.duplicates:
        items.append(("total-duplicates", "duplicate manifest rows", s.duplicates, "failed"))
    cards = "".join(
        f'<div class="total {cls}"><span class="value" id="{key}" data-value="{value}">{value:,}</span>'
        f'<span class="name">{name}</span></div>'
        for key, name, value, cls in items
    )
    return f'<section id="totals"><h2>Totals (each id&#39;s best row: ok wins)</h2><div class="totals">{cards}</div></section>'


def throughput_html(s: Summary) -> str:
    notes = []
    if s.untimed_rows:
        notes.append(f"{s.untimed_rows:,} rows have no finished_at and are not shown.")
    if s.earlier_rows:
        notes.append(f"{s.earlier_rows:,} rows finished before this run started and are not shown.")
    if s.throughput is None:
        chart = '<p class="note">No timestamped rows yet.</p>'
    else:
        t = s.throughput
        minutes = len(t.ok) * t.bin_s / 60
        chart = throughput_svg(t) + (
            f'<p class="legend note"><span style="background:{OK_COLOUR}"></span>ok'
            f'<span style="background:{FAILED_COLOUR}"></span>failed &middot; {int(t.ok.sum()):,} ok in '
            f"{_duration(minutes * 60)} ({t.ok.sum() / max(minutes, 1e-9):.2f} per minute on average)</p>"
        )
    title = "This run's throughput" if s.this_run else "Throughput"
    if s.this_run and s.throughput is not None and not (s.throughput.ok.sum() + s.throughput.failed.sum()):
        notes.insert(
            0,
            "This run has rendered nothing new: the ids it met were done already.  The totals, the "
            "distributions, the failures and the contact sheet cover every run's rows.",
        )
    return (
        f'<section id="throughput"><h2>{title}</h2>{chart}'
        + "".join(f'<p class="note">{n}</p>' for n in notes)
        + "</section>"
    )


def distribution_html(title: str, svg: str | None, data: np.ndarray, fmt) -> str:
    if svg is None:
        return f'<section><h2>{title}</h2><p class="note">No values recorded.</p></section>'
    stats = (
        f"{len(data):,} videos &middot; median {fmt(float(np.median(data)))} &middot; "
        f"p90 {fmt(float(np.percentile(data, 90)))} &middot; mean {fmt(float(data.mean()))}"
    )
    return f'<section><h2>{title}</h2>{svg}<p class="stats">{stats}</p></section>'


def failures_html(s: Summary) -> str:
    if not s.failures:
        return '<section id="failures"><h2>Failures</h2><p class="note">No failed ids.</p></section>'
    rows = "".join(failure_row_html(r) for r in s.failures)
    more = s.failed - len(s.failures)
    tail = f'<p class="note" id="failures-more">and {more:,} more</p>' if more > 0 else ""
    return (
        f'<section id="failures"><h2>Failures ({_count(s.failed, "id")}, newest first)</h2><table>'
        f"<thead><tr><th>id</th><th>attempts</th><th>finished (UTC)</th><th>error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{tail}</section>"
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def failure_row_html(r: dict) -> str:
    e = html.escape
    attempts = "" if r["attempts"] is None else str(r["attempts"])
    finished = "" if r["finished_at"] is None else r["finished_at"].strftime("%Y-%m-%d %H:%M:%S")
    return (
        f'<tr><td class="id">{e(str(r["id"]))}</td><td>{attempts}</td><td class="when">{finished}</td>'
        f'<td class="error">{e(r["error"] or "")}</td></tr>'
    )


def sheet_html(sheet: list[ContactEntry], ok_total: int) -> str:
    if not sheet:
        return '<section id="contact-sheet"><h2>Contact sheet</h2><p class="note">No ok videos yet.</p></section>'
    figures = "".join(contact_html(entry) for entry in sheet)
    return (
        f'<section id="contact-sheet"><h2>Contact sheet: first, middle and last frames of {len(sheet)} of '
        f'{ok_total:,} ok videos</h2><div class="sheet">{figures}</div></section>'
    )


def contact_html(entry: ContactEntry) -> str:
    e, row = html.escape, entry.row
    if entry.images:
        frames = "".join(
            f'<img src="{uri}" alt="{label} frame of {e(row["id"])}">'
            for uri, label in zip(entry.images, ("first", "middle", "last"))
        )
    else:
        frames = f'<div class="missing">missing: {e(entry.problem or "no frames")}</div>'
    info = [
        f"seed {row['seed']}" if row.get("seed") is not None else None,
        f"{row['seconds']:.2f} s" if row.get("seconds") is not None else None,
        f"skip {row['skipped_fraction'] * 100:.0f}%" if row.get("skipped_fraction") is not None else None,
    ]
    caption = " &middot; ".join(i for i in info if i)
    return (
        f'<figure class="contact" data-id="{e(row["id"])}"><div class="frames">{frames}</div>'
        f"<figcaption><b>{e(row['id'])}</b> {caption}</figcaption></figure>"
    )


__all__ = ["write_report", "REPORT_NAME", "summarise", "sample_rows"]
