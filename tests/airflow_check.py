"""Run inside an Airflow virtual environment (tests/test_infra_tools.py builds one per Airflow version): load a
DAG file through Airflow's own DagBag and report, as JSON on the last line of stdout, what Airflow makes of it.

    python airflow_check.py DAG_FILE FAKE_RAY_BIN CASES_JSON

- the import errors and DAG ids the DagBag holds;
- the logical date of the first scheduled run after 2026-12-06 00:30 UTC (what ``{{ ds }}`` names);
- for each case (a fake ``ray`` in FAKE_RAY_BIN answers as the case says), what the render task does: success,
  skip, retry or fail, read from the exception Airflow sees.
"""

import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone


def main(dag_file: str, fake_ray_bin: str, cases_json: str) -> None:
    home = tempfile.mkdtemp(prefix="airflow-home-")
    os.environ.update(
        {"AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "True"}
    )
    import airflow
    from airflow.exceptions import AirflowException, AirflowFailException, AirflowSkipException
    from airflow.models import DagBag
    from airflow.timetables.base import TimeRestriction

    folder = tempfile.mkdtemp(prefix="dags-")
    shutil.copy(dag_file, folder)
    bag = DagBag(dag_folder=folder)
    report = {
        "airflow": airflow.__version__,
        "import_errors": {os.path.basename(k): str(v) for k, v in bag.import_errors.items()},
        "dags": sorted(bag.dags),
        "outcomes": {},
    }
    if "ditfarm_nightly" in bag.dags:
        dag = bag.dags["ditfarm_nightly"]
        after = datetime(2026, 12, 6, 0, 30, tzinfo=timezone.utc)
        info = dag.timetable.next_dagrun_info(
            last_automated_data_interval=None, restriction=TimeRestriction(earliest=after, latest=None, catchup=True)
        )
        report["first_run"] = {"run_after": info.run_after.isoformat(), "ds": info.logical_date.strftime("%Y-%m-%d")}
        submit = dag.get_task("render").python_callable
        base_path = os.environ["PATH"]
        for case, env in json.loads(cases_json).items():
            os.environ.update(env)
            os.environ["PATH"] = f"{fake_ray_bin}{os.pathsep}{base_path}"
            try:
                submit(day=env["DITFARM_DAY"], ray_address="http://ray-head.test:8265", ray_auth_token="t" * 64)
                outcome = "success"
            except AirflowSkipException:
                outcome = "skip"
            except AirflowFailException:
                outcome = "fail"
            except AirflowException:
                outcome = "retry"
            report["outcomes"][case] = outcome
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
