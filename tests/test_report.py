"""The HTML report of an output, opened in headless Chromium: no errors, no network, and it shows what the
results table holds.

Chromium is required, not optional: without it these tests fail and say how to install it (.ci/run does).
"""

import uuid
from datetime import datetime, timedelta, timezone

import boto3
import numpy as np
import pyarrow as pa
import pytest
from browser import BrowserMissing, Chromium

from ditfarm.jobs.driver import RenderSettings, prompt_task, publish_video, render_tasks
from ditfarm.jobs.report import sample_rows, write_report
from ditfarm.jobs.results import RESULT_SCHEMA, read_all_results, read_results
from ditfarm.pipelines.base import VideoDefaults
from ditfarm.pipelines.video_io import write_mp4
from ditfarm.storage.stores import S3Store, open_output
from ditfarm.types import RenderedVideo

pytestmark = [pytest.mark.s3, pytest.mark.browser, pytest.mark.process]

GOOD = [
    "red circle moving left on blue background",
    "white square moving up on green gradient background",
    "yellow triangle moving right on black background",
    "blue circle moving down on white background",
]
REFUSED = "purple circle moving left on blue background"  # not in the tiny vocabulary
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2"> & </td>'

# Everything a test reads off a page, in one evaluation.
PAGE_FACTS = """(() => {
  const total = k => { const el = document.getElementById('total-' + k);
                       return el ? [Number(el.dataset.value), Number(el.textContent.replace(/,/g, ''))] : null; };
  return {
    totals: Object.fromEntries(['ids', 'ok', 'failed', 'rows', 'retries'].map(k => [k, total(k)])),
    contacts: Array.from(document.querySelectorAll('.contact')).map(f => ({
      id: f.dataset.id,
      images: Array.from(f.querySelectorAll('img')).map(i => i.complete ? i.naturalWidth : 0),
      sources: Array.from(f.querySelectorAll('img')).map(i => i.src),
      missing: f.querySelector('.missing') ? f.querySelector('.missing').textContent : null })),
    failures: Array.from(document.querySelectorAll('#failures tbody tr')).map(r => r.cells[3].textContent),
    more: document.getElementById('failures-more') ? document.getElementById('failures-more').textContent : null,
    charts: Array.from(document.querySelectorAll('svg.chart')).map(s => s.id),
    throughput: document.getElementById('throughput').textContent,
    external: Array.from(document.querySelectorAll('[src],[href]'))
                   .map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => !u.startsWith('data:')),
    scripts: document.scripts.length,
    pwned: typeof window.pwned,
  };
})()"""


@pytest.fixture(scope="module")
def browser():
    try:
        chromium = Chromium()
    except BrowserMissing as err:  # fail, not skip: a report nobody opened in a browser is not tested
        missing = str(err)
    else:
        missing = None
    if missing:
        pytest.fail(missing, pytrace=False)
    with chromium:
        yield chromium


def open_clean(browser, target) -> dict:
    """Open a page, insist that it raised nothing and fetched nothing, and return its facts."""
    page = browser.open(target)
    try:
        assert page.errors == [], page.errors
        assert page.requests == [], page.requests
        return page.evaluate(PAGE_FACTS)
    finally:
        page.close()


def expected_totals(out) -> dict:
    """The counts straight from the results table, for comparison with the page."""
    latest = read_results(out).to_pylist()
    every = read_all_results(out).to_pylist()
    return {
        "ids": len(latest),
        "ok": sum(r["status"] == "ok" for r in latest),
        "failed": sum(r["status"] == "failed" for r in latest),
        "rows": len(every),
        "retries": sum(max((r["attempts"] if r["attempts"] is not None else 1) - 1, 0) for r in every),
    }


def page_totals(facts: dict) -> dict:
    """The totals as the page shows them; the machine-readable and the displayed number must agree."""
    for name, (value, shown) in facts["totals"].items():
        assert value == shown, (name, value, shown)
    return {name: value for name, (value, _) in facts["totals"].items()}


def assert_decoded(contact: dict) -> None:
    assert contact["missing"] is None, contact
    assert len(contact["images"]) == 3 and all(w > 0 for w in contact["images"]), contact


def test_the_error_collector_sees_errors_and_requests(browser, tmp_path):
    """An empty error list means something only if a broken page gives a full one."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
        '<script>console.error("deliberate", 42); null.boom();</script></body></html>'
    )
    page = browser.open(broken)
    assert any("deliberate 42" in e for e in page.errors), page.errors
    assert any("TypeError" in e and "boom" in e for e in page.errors), page.errors
    assert page.requests == ["http://127.0.0.1:9/x.png"]
    page.close()
    # The report's own policy (only inline styles and data: images) turns a stray external reference into an error.
    policy = tmp_path / "policy.html"
    policy.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src '
        "'none'; img-src data:; style-src 'unsafe-inline'\"></head><body>"
        '<img src="https://example.invalid/x.png"></body></html>'
    )
    page = browser.open(policy)
    assert any("Content Security Policy" in e for e in page.errors), page.errors
    page.close()


def test_sample_is_spread_over_the_ids_and_deterministic():
    ids = [f"v{i}" for i in range(10)]
    assert sample_rows(ids, 3) == ["v0", "v4", "v9"]
    assert sample_rows(ids, 1) == ["v0"] and sample_rows(ids, 0) == [] and sample_rows(ids, 50) == ids
    assert sample_rows(ids, 4) == sample_rows(list(ids), 4) == ["v0", "v3", "v6", "v9"]


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """A real job with the built-in tiny model: four videos and a refused prompt, then a rerun that retries the
    refused one (so there are more rows than ids)."""
    out = tmp_path_factory.mktemp("report") / "out"
    tasks = [prompt_task(p, video_id=f"v{i}") for i, p in enumerate(GOOD)] + [prompt_task(REFUSED, video_id="bad")]
    settings = RenderSettings(model="tiny", steps=8, cache="bwcache", flush_every=2)
    started = datetime.now(timezone.utc)
    first = render_tasks(tasks, out, settings, progress=False)
    second = render_tasks(tasks, out, settings, progress=False)
    assert (first.ok, first.failed, second.skipped, second.failed) == (4, 1, 4, 1)
    return out, started


@pytest.mark.slow
def test_report_of_a_tiny_job(tiny_job, browser):
    out, started = tiny_job
    uri = write_report(out, sample=3, started_at=started)
    assert uri == str((out / "report.html").resolve())
    assert [p.name for p in out.iterdir() if "report" in p.name] == ["report.html"]  # published whole, no temp left
    facts = open_clean(browser, uri)

    expected = expected_totals(out)
    assert page_totals(facts) == expected
    assert expected == {"ids": 5, "ok": 4, "failed": 1, "rows": 6, "retries": 0}
    assert facts["external"] == [] and facts["scripts"] == 0
    assert facts["charts"] == ["chart-throughput", "hist-seconds", "hist-skip"]

    assert [c["id"] for c in facts["contacts"]] == ["v0", "v1", "v3"]  # 3 of the 4 ok ids, first to last
    for contact in facts["contacts"]:
        assert_decoded(contact)
        first, _, last = contact["sources"]
        assert first != last  # the objects move: the first and the last frames differ
    assert len(facts["failures"]) == 1 and "unknown word(s) 'purple'" in facts["failures"][0]
    assert facts["more"] is None


def old_part(rows: list[dict]) -> pa.Table:
    """A results part as written before rows had ``finished_at``."""
    schema = pa.schema([f for f in RESULT_SCHEMA if f.name != "finished_at"])
    return pa.Table.from_pylist(rows, schema=schema)


def test_hostile_errors_old_parts_and_unreadable_videos(browser, tmp_path):
    """Errors are shown as text, never markup; the failures table is capped; a part without timestamps and a
    video that is missing or not a video leave a note instead of breaking the page."""
    out = tmp_path / "out"
    store = open_output(out)
    store.check_writable()
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    frames[:, :, :, 1] = np.arange(5, dtype=np.uint8)[:, None, None] * 60  # each frame its own green
    store.store_video("fine", lambda path: write_mp4(frames, path))
    store.store_video("junk", lambda path: path.write_bytes(b"this is not an mp4"))
    store.write_part(
        "part-0-old.parquet",
        old_part(
            [
                {"id": "junk", "status": "ok", "seed": 1, "frames": 8, "seconds": 1.0, "attempts": 1},
                {"id": "flaky", "status": "failed", "error": "first try", "attempts": 3},
            ]
        ),
    )
    now = datetime.now(timezone.utc)
    failed = [
        {
            "id": f"f{i:03d}",
            "status": "failed",
            "error": f"{HOSTILE} #{i}",
            "attempts": 0,
            "finished_at": now - timedelta(seconds=205 - i),
        }
        for i in range(205)
    ]
    fresh = [
        {
            "id": "fine",
            "status": "ok",
            "seed": 7,
            "frames": None,
            "seconds": 2.5,
            "skipped_fraction": 0.4,
            "attempts": 2,
            "finished_at": now,
        },
        {"id": "gone", "status": "ok", "seed": 8, "frames": 8, "seconds": 3.0, "attempts": 1, "finished_at": now},
        {"id": "flaky", "status": "failed", "error": "second try", "attempts": 1, "finished_at": now},
    ]
    store.write_part("part-1-new.parquet", pa.Table.from_pylist(failed + fresh, schema=RESULT_SCHEMA))

    facts = open_clean(browser, write_report(store))
    assert facts["pwned"] == "undefined" and facts["scripts"] == 0 and facts["external"] == []
    assert page_totals(facts) == expected_totals(out) == {"ids": 209, "ok": 3, "failed": 206, "rows": 210, "retries": 3}
    assert len(facts["failures"]) == 200 and facts["more"] == "and 6 more"
    assert facts["failures"][0] == "second try"  # newest first
    assert facts["failures"][1] == f"{HOSTILE} #204"  # shown literally
    assert "2 rows have no finished_at" in facts["throughput"]

    by_id = {c["id"]: c for c in facts["contacts"]}
    assert sorted(by_id) == ["fine", "gone", "junk"]
    assert_decoded(by_id["fine"])  # no recorded frame count: taken from the container
    assert len(set(by_id["fine"]["sources"])) == 3  # first, middle and last are different frames
    for broken in ("gone", "junk"):
        assert by_id[broken]["images"] == [] and by_id[broken]["missing"].startswith("missing"), by_id[broken]


class FakeRenderer:
    """Stores a small synthetic mp4 per task without a model; refuses prompts with an unknown colour."""

    capacity = 1

    def render(self, task, settings, out):
        if "purple" in task.prompt:
            raise ValueError("unknown word(s) 'purple'")
        frames = np.zeros((6, 16, 16, 3), np.uint8)
        frames[np.arange(6), :, np.arange(6) * 2] = 255  # a bar moving right
        uri = publish_video(out.open(), task.id, frames, settings, VideoDefaults(fps=8, upscale=1)).uri
        return RenderedVideo(uri, task.seed, 6, 16, 16, 1, "fake", 0.25)


def test_report_on_s3(s3_endpoint, browser, tmp_path):
    s3 = boto3.client("s3")
    bucket = "r-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    out = f"s3://{bucket}/runs/one"
    tasks = [prompt_task(p, video_id=f"s{i}") for i, p in enumerate(GOOD + [REFUSED])]
    summary = render_tasks(tasks, out, RenderSettings(upscale=2), renderer=FakeRenderer(), progress=False)
    assert (summary.ok, summary.failed) == (4, 1)

    uri = write_report(out, sample=2)
    assert uri == f"{out}/report.html"
    assert write_report(S3Store(bucket, "runs/one"), sample=2) == uri  # a store works too; the object is replaced
    head = s3.head_object(Bucket=bucket, Key="runs/one/report.html")
    assert head["ContentType"].startswith("text/html")
    local = tmp_path / "report.html"
    local.write_bytes(s3.get_object(Bucket=bucket, Key="runs/one/report.html")["Body"].read())

    facts = open_clean(browser, local)
    assert page_totals(facts) == expected_totals(out)
    assert facts["totals"]["ok"][0] == 4 and facts["totals"]["failed"][0] == 1
    assert [c["id"] for c in facts["contacts"]] == ["s0", "s3"]
    for contact in facts["contacts"]:
        assert_decoded(contact)
    top = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/one/", Delimiter="/").get("Contents", [])]
    assert [k for k in top if "report" in k] == ["runs/one/report.html"]


def test_the_report_is_refreshed_while_a_job_runs_and_written_whole_at_its_end(tmp_path):
    """With ``report_seconds`` the page appears (and is rewritten) mid-run without holding the driver up; the
    end of the run writes the final one."""
    import re
    import time

    from ditfarm.jobs.driver import RenderJob

    class SlowRenderer:
        capacity = 1

        def render(self, task, settings, out):
            time.sleep(0.3)
            store = out.open()
            frames = np.zeros((3, 8, 8, 3), np.uint8)
            uri = publish_video(store, task.id, frames, settings, VideoDefaults(fps=8, upscale=1)).uri
            return RenderedVideo(uri, task.seed, 3, 8, 8, 1, "fake", 0.0)

    def shown_ok(path):
        match = re.search(r'id="total-ok"[^>]*data-value="(\d+)"', path.read_text()) if path.exists() else None
        return int(match.group(1)) if match else None

    out = tmp_path / "out"
    tasks = [prompt_task(GOOD[0], video_id=f"r{i}") for i in range(8)]
    settings = RenderSettings(upscale=1, flush_every=1)
    job = RenderJob(tasks, str(out), settings, renderer=SlowRenderer(), progress=False, report_seconds=0.2)
    seen_mid_run = []
    for i, _row in enumerate(job):
        if i >= 2:
            seen_mid_run.append(shown_ok(out / "report.html"))
    assert any(n is not None and 0 < n < 8 for n in seen_mid_run), seen_mid_run
    assert shown_ok(out / "report.html") == 8


def test_a_stopped_run_writes_its_report_and_a_rerun_with_nothing_new_keeps_every_runs_rows(tmp_path):
    """SIGTERM mid-run: the run exits 143 after writing report.html with what it stored, and says where.  A rerun
    that renders nothing new rewrites the page with every run's totals, saying this run added nothing."""
    import re
    import signal
    import subprocess
    import sys
    import time

    import pyarrow.parquet as pq

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    prompt = "red circle moving left on blue background"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(12)], "prompt": [prompt] * 12}), manifest)
    command = [
        sys.executable,
        "-m",
        "ditfarm.commands.cli",
        "render",
        str(manifest),
        "--out",
        str(out),
        "--steps",
        "10",
        "--no-progress",
        "--flush-every",
        "1",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list((out / "videos").glob("*.mp4"))) < 2 if (out / "videos").exists() else True:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert f"report: {out}/report.html" in stderr, stderr[-2000:]
    stored = len(read_results(out))
    page = (out / "report.html").read_text()
    assert re.search(rf'id="total-ok" data-value="{stored}"', page), stored

    finished = subprocess.run(command[:-2], capture_output=True, text=True, timeout=600)  # the rest of the rows
    assert finished.returncode == 0 and f"report {out}/report.html" in finished.stdout, finished.stderr[-2000:]
    again = subprocess.run(command[:-2], capture_output=True, text=True, timeout=600)  # nothing new
    assert "0 ok, 0 failed, 12 skipped" in again.stdout, again.stdout
    page = (out / "report.html").read_text()
    assert 'id="total-ok" data-value="12"' in page and "This run has rendered nothing new" in page
