"""The nightly CronJob (nightly-cronjob.yaml) as an Airflow DAG: each day, submit that day's manifest to the
long-lived Ray cluster with `ray job submit` and wait for the render.  It loads on Airflow 2.11 and 3.x alike.

- The day: a run triggered at 01:00 UTC on 2026-12-06 renders 2026-12-06, the day the CronJob's ``date -u``
  names.  ``CronTriggerTimetable`` makes the run's logical date its trigger time on both Airflow 2 and 3 (Airflow
  2's default cron timetable would name the day before: the start of the data interval), and ``{{ ds }}`` is that
  date.  A retry, a clear or a backfill of a run keeps its logical date, so it resumes that day's output: ids
  already ok are skipped; a manual trigger renders the day it is triggered.
- ``max_active_runs=1``: one run of this DAG at a time.  Like the CronJob's ``concurrencyPolicy: Forbid`` this
  guards only what Airflow sees: the render is a Ray job on the cluster, and it goes on when the task's process
  dies (a worker restart, a timeout, a task marked failed by hand).  The lease on ``--out`` is the real guard: a
  second render on the same output while the first is alive exits 2 with "... is held by run ..." before
  touching anything, and the task then ends as *skipped*: the previous run is still going, nothing failed.
- Exit codes of the submit script, and what the task does with them (``outcome``): 0 success; 99 skipped (the
  output is held by a run that is still alive); 75 (no room on the cluster for any gang, or no job result at
  all: the cluster was unreachable) and 5 (the output stopped taking writes partway) are the failures Airflow
  retries, after ``retry_delay``, growing, and the retry resumes; 2 bad input, 1 rows failed after ditfarm's own
  --retries (see OUT/report.html), 3 the lease was taken over, 4 a corrupt manifest, 130/143 stopped on
  purpose: failed at once, whatever retries are left (retrying cannot help, or a person stopped it).
- Settings (Airflow Variables): ``ditfarm_ray_address`` (e.g. http://ditfarm-head-svc:8265) and
  ``ditfarm_ray_auth_token`` (the cluster's token; Airflow masks Variables whose name contains "token").
"""

import os
import subprocess
from datetime import datetime, timedelta

from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.timetables.trigger import CronTriggerTimetable

try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:  # Airflow 2
    from airflow.operators.python import PythonOperator

SUBMIT = r"""
set -uo pipefail
day="$DITFARM_DAY"
submission="ditfarm-$day-$(date -u +%H%M%S)"
log="$(mktemp)"
{
  ray job submit --address "$RAY_ADDRESS" --submission-id "$submission" -- \
    ditfarm render "s3://renders/manifests/$day/" --out "s3://renders/out/$day" \
    --model s3://models/wan2.1-t2v-1.3b --device cuda --sp 4 --gangs auto --start-timeout 1800 --cache adaptive --no-progress
} 2>&1 | tee "$log"
submitted=${PIPESTATUS[0]}
if [ "$submitted" -eq 0 ]; then
  if grep -q "Job '$submission' was stopped" "$log"; then
    echo "ditfarm_nightly: $submission was stopped; a rerun resumes it" >&2
    exit 143
  fi
  exit 0
fi
code="$(sed -n 's/.*Job entrypoint command failed with exit code \([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)"
case "$code" in
  2)
    if grep -q "is held by run " "$log"; then
      echo "ditfarm_nightly: a previous run still holds s3://renders/out/$day (named above); skipping" >&2
      exit 99
    fi
    exit 2 ;;
  "")
    echo "ditfarm_nightly: no job result (ray job submit exited $submitted); retry later" >&2
    exit 75 ;;
  *)
    exit "$code" ;;
esac
"""

SKIPPED = 99  # the output is held by a run that is still alive
RETRIED = (5, 75)  # the output stopped taking writes; no room for any gang, or no job result: a later try can pass


def outcome(code: int) -> str:
    """What the task does with the submit script's exit code: success, skip, retry or fail."""
    if code == 0:
        return "success"
    if code == SKIPPED:
        return "skip"
    return "retry" if code in RETRIED else "fail"


def submit(day: str, ray_address: str, ray_auth_token: str) -> None:
    """Run the submit script for ``day``; its output goes to the task's log.  A code that retrying cannot help
    fails the task at once (AirflowFailException ends it whatever retries are left)."""
    env = {
        **os.environ,
        "DITFARM_DAY": day,
        "RAY_ADDRESS": ray_address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": ray_auth_token,
    }  # os.environ keeps PATH: the `ray` CLI of the cluster's version
    code = subprocess.run(["bash", "-c", SUBMIT], env=env).returncode
    result = outcome(code)
    if result == "skip":
        raise AirflowSkipException(f"s3://renders/out/{day} is held by a run that is still going")
    if result == "retry":
        raise AirflowException(
            f"the render of {day} found no room on the cluster or no answer (exit {code}); "
            "retried, and the retry resumes"
        )
    if result == "fail":
        raise AirflowFailException(f"the render of {day} failed with exit {code}; not retried (see the log)")


with DAG(
    dag_id="ditfarm_nightly",
    schedule=CronTriggerTimetable("0 1 * * *", timezone="UTC"),  # {{ ds }} = the day of the trigger
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 6,
        "retry_delay": timedelta(minutes=10),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=2),
    },
    tags=["ditfarm"],
) as dag:
    PythonOperator(
        task_id="render",
        python_callable=submit,
        op_kwargs={
            "day": "{{ ds }}",
            "ray_address": "{{ var.value.ditfarm_ray_address }}",
            "ray_auth_token": "{{ var.value.ditfarm_ray_auth_token }}",
        },
        execution_timeout=timedelta(hours=20),  # the Ray job goes on after a timeout; the retry then skips
    )
