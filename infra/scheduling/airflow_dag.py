"""The nightly CronJob (nightly-cronjob.yaml) as an Airflow DAG: each day, submit that day's manifest to the
long-lived Ray cluster with `ray job submit` and wait for the render.

- ``max_active_runs=1``: one run of this DAG at a time.  Like the CronJob's ``concurrencyPolicy: Forbid`` this
  guards only what Airflow sees: the render is a Ray job on the cluster, and it goes on when the task's process
  dies (a worker restart, a timeout, a task marked failed by hand).  The lease on ``--out`` is the real guard: a
  second render on the same output while the first is alive exits 2 with "... is held by run ..." before
  touching anything, and the task then ends as *skipped* (exit 99, ``skip_on_exit_code``): the previous run is
  still going, nothing failed.
- ``{{ ds }}`` (the run's logical date) names the manifest and the output, so a retry, a clear or a backfill
  of a day resumes that day's output: ids already ok are skipped.
- Exit codes: 0 done; 99 skipped (the output is held by a run that is still alive); 75 no room on the cluster
  for any gang, or no job result at all (cluster unreachable): retried after ``retry_delay``, growing, and the
  retry resumes; 2 bad input; 1 some rows failed after ditfarm's own --retries (see OUT/report.html); 130/143
  stopped.  Airflow retries every failure alike: a retry of 2 fails again at once, a retry of 1 renders only the
  failed rows again.
- Settings (Airflow Variables): ``ditfarm_ray_address`` (e.g. http://ditfarm-head-svc:8265) and
  ``ditfarm_ray_auth_token`` (the cluster's token; Airflow masks Variables whose name contains "token").
"""

from datetime import datetime, timedelta

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

SUBMIT = r"""
set -uo pipefail
day="{{ ds }}"
submission="ditfarm-$day-$(date -u +%H%M%S)"
log="$(mktemp)"
{
  ray job submit --address "$RAY_ADDRESS" --submission-id "$submission" -- \
    ditfarm render "s3://renders/manifests/$day/" --out "s3://renders/out/$day" \
    --model s3://models/wan2.1-t2v-1.3b --device cuda --sp 4 --gangs auto --cache adaptive --no-progress
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

with DAG(
    dag_id="ditfarm_nightly",
    schedule="0 1 * * *",
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
    BashOperator(
        task_id="render",
        bash_command=SUBMIT,
        skip_on_exit_code=[99],
        env={
            "RAY_ADDRESS": "{{ var.value.ditfarm_ray_address }}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": "{{ var.value.ditfarm_ray_auth_token }}",
        },
        append_env=True,  # keep PATH (the `ray` CLI, of the cluster's Ray version) and the rest
        execution_timeout=timedelta(hours=20),  # the Ray job goes on after a timeout; the retry then skips
    )
