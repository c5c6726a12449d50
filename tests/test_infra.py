"""The deployment files parse, every ditfarm command in them is one the CLI accepts, the `ray up` config is one
Ray's own schema accepts, and the schedulers' submit scripts turn ditfarm's exit codes into the right outcome
(the lease's "is held by run" refusal is a skip, 75 is a retry) against a fake `ray` and against a real head."""

import ast
import copy
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml

from ditfarm.commands.cli import build_parser

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.process]

INFRA = Path(__file__).resolve().parents[1] / "infra"
RAY_UP = INFRA / "ray-up" / "gpu-cluster.yaml"
CRONJOB = INFRA / "scheduling" / "nightly-cronjob.yaml"
DAG = INFRA / "scheduling" / "airflow_dag.py"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
K8S_YAML = sorted(p for p in INFRA.rglob("*.yaml") if p != RAY_UP)

# A command, as opposed to a mention of one in backticks (`ditfarm render`) in prose.
COMMAND = re.compile(r"ditfarm render(?!`)")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ")", "}", ";;"}
REDIRECTION = re.compile(r"^\d*(>|<|>>|>&|<&)")


def ditfarm_commands(text: str) -> list[list[str]]:
    """Every `ditfarm ...` command in a shell or entrypoint string (line continuations joined), up to the next
    shell operator or redirection."""
    words = shlex.split(text.replace("\\\n", " "), comments=False)
    commands, current = [], None
    for word in words:
        if word == "ditfarm":
            current = []
            commands.append(current)
        elif current is not None:
            if word in SHELL_OPERATORS or REDIRECTION.match(word):
                current = None
            else:
                current.append(word)
    return commands


def render_commands(text: str) -> list[list[str]]:
    """The argv (after `ditfarm`) of every `ditfarm render` command in a text of shell, prose or both: each taken
    from its own start to the end of its logical line, so prose around it is never shell-split."""
    joined = re.sub(r"\\[ \t]*\n", " ", text)
    found = []
    for match in COMMAND.finditer(joined):
        line = joined[match.start() :].split("\n", 1)[0]
        found.append(ditfarm_commands(line)[0])
    return found


def uncomment(text: str, prefix: str = "#") -> str:
    """Only the comment lines' text (the other lines blank), with the comment marker taken off."""
    return "\n".join(
        line.strip()[len(prefix) :] if line.strip().startswith(prefix) else "" for line in text.splitlines()
    )


def strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def python_texts(source: str) -> list[str]:
    """A Python file's string constants (docstrings, bash_command scripts) and its comments."""
    texts = [n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    comments = [
        t.string[1:] for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT
    ]
    return texts + ["\n".join(comments)]


def commands_in(path: Path) -> list[list[str]]:
    """Every `ditfarm render` command in an infra file, wherever the file keeps it."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        texts = [s for d in yaml.safe_load_all(text) if d for s in strings(d)] + [uncomment(text)]
    elif path.suffix == ".py":
        texts = python_texts(text)
    elif path.suffix == ".sh":
        texts = [re.sub(r"(?m)^\s*#.*$", "", text), uncomment(text)]
    else:  # Markdown, Dockerfiles: commands in code blocks and prose alike
        texts = [text]
    return [argv for t in texts for argv in render_commands(t)]


INFRA_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", INFRA_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_ditfarm_render_command_in_infra_is_one_the_cli_accepts(path):
    commands = commands_in(path)
    assert len(commands) == len(COMMAND.findall(path.read_text())), "a command the extraction missed"
    for argv in commands:
        args = build_parser().parse_args(argv)  # SystemExit on an unknown flag or a bad value
        assert args.command == "render" and args.out


def test_the_deployment_files_each_hold_their_commands():
    """Not vacuous: each deployment file has its command found, reading and writing s3:// on the whole cluster."""
    counts = {p.relative_to(INFRA).as_posix(): len(commands_in(p)) for p in INFRA_FILES}
    for name in (
        "ray-up/gpu-cluster.yaml",
        "kuberay/rayjob.yaml",
        "scheduling/nightly-cronjob.yaml",
        "scheduling/airflow_dag.py",
    ):
        assert counts.get(name, 0) >= 1, name
    assert counts["README.md"] >= 3
    for name in (
        "ray-up/gpu-cluster.yaml",
        "kuberay/rayjob.yaml",
        "scheduling/nightly-cronjob.yaml",
        "scheduling/airflow_dag.py",
    ):
        for argv in commands_in(INFRA / name):
            args = build_parser().parse_args(argv)
            assert args.manifest.startswith("s3://") and args.out.startswith("s3://"), name
            assert args.gangs == "auto" and args.device == "cuda" and args.sp == 4, name
            assert not args.force, f"{name}: --force would defeat the lease"


@pytest.mark.parametrize("path", K8S_YAML, ids=lambda p: p.name)
def test_kubernetes_files_are_manifests(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs and all("apiVersion" in d and "kind" in d for d in docs)


def test_ray_up_config_validates_against_rays_schema():
    """As written (a misspelt key fails Ray's schema, which allows no extra fields) and as `ray up` sees it after
    filling in the provider's defaults (`prepare_config`, then Ray's own `validate_config`)."""
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(RAY_UP.read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))

    assert config["provider"]["type"] == "aws"
    assert "REPLACE-ME" in config["provider"]["region"] and "REPLACE-ME" in config["provider"]["availability_zone"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head drives; gangs go to GPU nodes
    (gpu,) = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu["resources"]["GPU"] == 8 and gpu["resources"]["CPU"] >= 8
    assert 0 < gpu["min_workers"] < gpu["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"].endswith("/ditfarm:gpu") and "--entrypoint=" in config["docker"]["run_options"]
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address" in c for c in config["worker_start_ray_commands"])


def test_a_bad_ray_up_key_is_caught_by_the_schema():
    """The schema check has teeth: one misspelt field fails it."""
    import ray

    config = yaml.safe_load(RAY_UP.read_text())
    config["available_node_types"]["gpu_8x"]["min_worker"] = 1
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_rayjob_reads_and_writes_s3_with_credentials_from_a_secret():
    (job,) = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    (argv,) = render_commands(job["spec"]["entrypoint"])
    args = build_parser().parse_args(argv)
    assert args.manifest.startswith("s3://") and args.out.startswith("s3://") and args.gangs == "auto"
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        for volume in pod.get("volumes", []):
            assert set(volume) == {"name", "emptyDir"}, f"a shared volume: {volume}"  # node-local caches only
        for container in pod["containers"]:
            env = {e["name"]: e for e in container["env"]}
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name and "value" not in env[name]
            # secrets only, and the grace `ray job stop` gives a run before SIGKILL (read on the head)
            assert all(n.startswith("AWS_") or n == "RAY_JOB_STOP_WAIT_TIME_S" for n in env)
            assert env["RAY_JOB_STOP_WAIT_TIME_S"]["value"] == "60"


def test_clusters_authenticate_with_the_token_the_submitter_uses_and_run_the_pinned_ray():
    """Ray 2.60 authenticates by default: the long-lived cluster takes its token from the Secret the scheduled
    submitter reads (same name, KubeRay's key ``auth_token``), the RayJob has KubeRay make one, and both run the
    Ray that the images pin (head, workers and drivers must agree)."""
    import re

    (cluster,) = [d for d in yaml.safe_load_all((INFRA / "kuberay" / "raycluster.yaml").read_text()) if d]
    (job,) = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    (container,) = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": cluster["spec"]["authOptions"]["secretName"], "key": "auth_token"}
    versions = {cluster["spec"]["rayVersion"], job["spec"]["rayClusterSpec"]["rayVersion"]}
    (pinned,) = re.findall(r"^ray==([0-9.]+)$", (INFRA.parent / "constraints.txt").read_text(), re.M)
    versions.add(pinned)
    assert len(versions) == 1, versions
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):  # the images install at the constraints' versions
        installs = [line for line in (INFRA / dockerfile).read_text().splitlines() if "pip install" in line]
        assert installs and all("-c constraints.txt" in line for line in installs), dockerfile


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_images_copy_everything_the_build_reads(dockerfile):
    """`pip install .` in the image reads setup.py (package discovery), every mapped folder and the in-tree build
    backend (pyproject.toml's backend-path)."""
    copied = set()
    for line in (INFRA / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            copied.update(line.split()[1:-1])
    sys.path.insert(0, str(INFRA.parent))
    from setup import MAPPED  # the folders the build maps to packages

    sys.path.pop(0)
    import tomllib

    backend = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())["build-system"].get("backend-path", [])
    assert {"pyproject.toml", "setup.py", "README.md", "constraints.txt", *MAPPED.values(), *backend} <= copied
    ignored = {
        line.strip()
        for line in (INFRA.parent / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", "build", ".venv"} <= ignored and not copied & ignored  # a small context that has what is copied


def test_the_cpu_image_installs_the_torch_the_constraints_pin():
    import re

    (pinned,) = re.findall(r"^torch==(\S+)$", (INFRA.parent / "constraints.txt").read_text(), re.M)
    assert re.findall(r"torch==(\S+)", (INFRA / "Dockerfile").read_text()) == [pinned]


def test_readme_commands_are_valid():
    """Every `ditfarm render` / `ditfarm status` line in the README's code blocks parses with the real CLI."""
    text = (INFRA.parent / "README.md").read_text()
    blocks = text.split("```")[1::2]
    checked = 0
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if "ditfarm render" in line or "ditfarm status" in line:
                for argv in ditfarm_commands(line.split("#")[0]):
                    assert build_parser().parse_args(argv).command in ("render", "status")
                    checked += 1
    assert checked >= 8


# --- the schedulers' submit scripts -------------------------------------------------------------------------


def cronjob() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(CRONJOB.read_text()) if d]
    return doc


def cron_script() -> str:
    (container,) = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/bash", "-c"]
    (script,) = container["args"]
    return script


def dag_calls() -> dict[str, ast.Call]:
    tree = ast.parse(DAG.read_text())
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls[node.func.id] = node
    return calls


def dag_constant(node: ast.AST):
    """A keyword's value: a literal, or the name of a module-level constant (how the DAG keeps its script)."""
    if isinstance(node, ast.Name):
        for stmt in ast.parse(DAG.read_text()).body:
            if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == node.id for t in stmt.targets):
                return ast.literal_eval(stmt.value)
        raise AssertionError(f"{node.id} is not a module-level constant")
    return ast.literal_eval(node)


def dag_script() -> str:
    """The DAG's submit script (it reads the day from DITFARM_DAY, which the task sets from {{ ds }})."""
    (operator,) = [c for name, c in dag_calls().items() if name == "PythonOperator"]
    kwargs = {k.arg: k.value for k in operator.keywords}
    assert kwargs["python_callable"].id == "submit"
    script = dag_constant(ast.Name("SUBMIT"))
    assert "{{" not in script and "{%" not in script, "the script is run as it is, not templated"
    return script


def test_cronjob_forbids_overlap_and_acts_on_the_exit_code():
    spec = cronjob()["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    rules = job["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    (codes,) = [r["onExitCodes"] for r in fail]
    assert codes["operator"] == "In" and set(codes["values"]) == {1, 2, 3, 4, 130, 143}  # 5 and 75 are retried
    assert job["backoffLimit"] >= 3  # 75 is retried
    script = cron_script()
    assert "is held by run " in script and "exit 75" in script and "--force" not in script
    text = CRONJOB.read_text()
    assert "outlives its submitter" in text  # the comment saying why Forbid is not enough


def test_dag_runs_one_at_a_time_with_retries_and_skips_a_held_output():
    calls = dag_calls()
    dag = {k.arg: k.value for k in calls["DAG"].keywords}
    assert dag_constant(dag["max_active_runs"]) == 1
    assert dag_constant(dag["catchup"]) is False
    default_args = {ast.literal_eval(k): v for k, v in zip(dag["default_args"].keys, dag["default_args"].values)}
    assert ast.literal_eval(default_args["retries"]) >= 3
    operator = {k.arg: k.value for k in calls["PythonOperator"].keywords}
    op_kwargs = dag_constant(operator["op_kwargs"])
    assert op_kwargs["day"] == "{{ ds }}"  # the run's logical date: its trigger time under CronTriggerTimetable
    schedule = dag["schedule"]
    assert schedule.func.id == "CronTriggerTimetable" and dag_constant(schedule.args[0]) == "0 1 * * *"
    assert {k.arg: dag_constant(k.value) for k in schedule.keywords} == {"timezone": "UTC"}  # the CronJob's clock
    script = dag_script()
    assert "is held by run " in script and "exit 99" in script and "exit 75" in script


FAKE_RAY = r'''#!{python}
"""A stand-in for `ray`: `ray job submit` as Ray 2.60 prints it (dashboard/modules/job/cli.py), the job's
logs and outcome taken from $FAKE_RAY_CASE."""
import json, os, sys

argv = sys.argv[1:]
with open(os.environ["FAKE_RAY_ARGV"], "a") as f:
    f.write(json.dumps(argv) + "\n")
assert argv[:2] == ["job", "submit"], argv
job = argv[argv.index("--submission-id") + 1]
case = os.environ["FAKE_RAY_CASE"]
if case == "unreachable":
    print("Traceback (most recent call last):\n  ...\nConnectionError: Failed to connect to Ray at address: "
          + argv[argv.index("--address") + 1], file=sys.stderr)
    sys.exit(1)
print("Job submission server address: " + argv[argv.index("--address") + 1])
print("-" * 40 + "\nJob '%s' submitted successfully\n" % job + "-" * 40)
print("Tailing logs until the job exits (disable with --no-wait):")
logs = os.environ.get("FAKE_RAY_LOGS", "")
print(logs)
code = {{"ok": 0, "held": 2, "bad-input": 2, "rows-failed": 1, "no-room": 75, "sigterm": 143, "lease-lost": 3,
         "manifest-broken": 4, "output-failed": 5}}.get(case)
if case == "stopped":
    print("Job '%s' was stopped" % job)
    sys.exit(0)
if code == 0:
    print("-" * 40 + "\nJob '%s' succeeded\n" % job + "-" * 40)
    sys.exit(0)
print("-" * 40 + "\nJob '%s' failed\n" % job + "-" * 40)
print("Status message: Job entrypoint command failed with exit code %d, last available logs (truncated to "
      "20,000 chars):\n%s" % (code, logs))
sys.exit(1)
'''


def lease_refusal(tmp_path) -> str:
    """The message a second run on a held output prints, from the real lease code (not a copy of its text)."""
    from ditfarm.storage.lease import Lease, LeaseHeld
    from ditfarm.storage.stores import open_output

    store = open_output(str(tmp_path / "held-out"))
    holder = Lease(store, "run-last-night").acquire()
    try:
        with pytest.raises(LeaseHeld) as refused:
            Lease(store, "run-tonight").acquire()
    finally:
        holder.release()
    return f"ditfarm render: {refused.value}"


# case: (the job's logs, the CronJob script's exit code, the DAG script's)
CASES = {
    "ok": ("12 ok, 0 failed, 0 skipped; videos in s3://renders/out/<day>/videos", 0, 0),
    "held": (None, 0, 99),
    "bad-input": ("ditfarm render: manifest s3://renders/manifests/<day>/: no parquet files", 2, 2),
    "rows-failed": ("10 ok, 2 failed, 0 skipped", 1, 1),
    "no-room": ("ditfarm render: no gang is left (2 retired: the cluster has no room ...)", 75, 75),
    "unreachable": ("", 75, 75),
    "stopped": ("ditfarm render: stopped by SIGTERM", 143, 143),
    "sigterm": ("ditfarm render: stopped by SIGTERM", 143, 143),
    "lease-lost": ("ditfarm render: lost the output's lease: ...", 3, 3),
    "manifest-broken": ("ditfarm render: stopped partway: the manifest could not be read past ...", 4, 4),
    "output-failed": ("ditfarm render: stopped partway: the output stopped taking writes ...", 5, 5),
}


@pytest.fixture
def fake_ray(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text(FAKE_RAY.format(python=sys.executable))
    (bin_dir / "ray").chmod(0o755)
    return bin_dir


def run_script(script: str, bin_dir: Path, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script],
        env={**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("scheduler", ["cronjob", "airflow"])
@pytest.mark.parametrize("case", list(CASES))
def test_submit_script_turns_ditfarm_exit_codes_into_outcomes(scheduler, case, fake_ray, tmp_path):
    """The script as the scheduler runs it (CronJob args / the DAG's bash_command), `ray` faked: a held output
    is a skip, no room (or no answer) a retry-later 75, the rest passed on."""
    day = "2025-06-01"
    script = cron_script() if scheduler == "cronjob" else dag_script()
    logs, cron_code, dag_code = CASES[case]
    if logs is None:
        logs = lease_refusal(tmp_path)
    argv_file = tmp_path / "argv.jsonl"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "RAY_ADDRESS": "http://ray-head.test:8265",
        "DITFARM_DAY": day,
        "FAKE_RAY_CASE": case,
        "FAKE_RAY_LOGS": logs.replace("<day>", day),
        "FAKE_RAY_ARGV": str(argv_file),
    }
    proc = run_script(script, fake_ray, env)
    expected = cron_code if scheduler == "cronjob" else dag_code
    assert proc.returncode == expected, (proc.returncode, proc.stdout, proc.stderr)
    if case == "held":
        assert "previous run still holds" in proc.stderr and "is held by run run-last-night" in proc.stdout

    (argv,) = [json.loads(line) for line in argv_file.read_text().splitlines()]  # submitted once, no retry loop
    assert argv[:4] == ["job", "submit", "--address", "http://ray-head.test:8265"]
    assert argv[argv.index("--submission-id") + 1].startswith(f"ditfarm-{day}-")
    command = argv[argv.index("--") + 1 :]
    assert command[:2] == ["ditfarm", "render"]
    args = build_parser().parse_args(command[1:])  # the command as expanded by bash, parsed by the CLI
    assert args.manifest == f"s3://renders/manifests/{day}/" and args.out == f"s3://renders/out/{day}"


# --- the same script against a real Ray head -----------------------------------------------------------------

FAKE_DITFARM = r'''#!{python}
"""A stand-in for `ditfarm` inside the Ray job: checks its arguments with the real parser, then prints and exits
as the plan file says."""
import json, os, sys

from ditfarm.commands.cli import build_parser

args = build_parser().parse_args(sys.argv[1:])
plan = json.loads(open(os.environ["FAKE_DITFARM_PLAN"]).read())
print("rendering %s into %s" % (args.manifest, args.out))
print(plan["stderr"], file=sys.stderr)
sys.exit(plan["code"])
'''


@pytest.fixture(scope="module")
def ray_head_with_fake_ditfarm():
    """`ray start --head` with token authentication, its jobs finding a fake `ditfarm` first on PATH."""
    from helpers import free_port

    venv_bin = Path(sys.executable).parent
    temp_dir = Path(tempfile.mkdtemp(prefix="rinf-", dir="/tmp"))
    fake_bin = temp_dir / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "ditfarm").write_text(FAKE_DITFARM.format(python=sys.executable))
    (fake_bin / "ditfarm").chmod(0o755)
    plan = temp_dir / "plan.json"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
        "PATH": f"{fake_bin}{os.pathsep}{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FAKE_DITFARM_PLAN": str(plan),
    }
    dashboard = free_port()
    subprocess.run(
        [
            venv_bin / "ray",
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=1",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=180,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 300  # `ray start` returns before the job agent takes submissions
        while True:
            probe = subprocess.run(
                [venv_bin / "ray", "job", "submit", "--address", address, "--", "true"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, probe.stdout + probe.stderr
            time.sleep(2)
        yield {"address": address, "env": env, "plan": plan, "bin": venv_bin}
    finally:
        subprocess.run([venv_bin / "ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_cronjob_script_reads_ditfarms_exit_code_back_through_a_real_ray_job_submit(
    ray_head_with_fake_ditfarm, tmp_path
):
    """Pins what the script relies on in Ray itself: `ray job submit` exits 1 for any failed job and prints the
    entrypoint's code in the status message; the script recovers it (2 held: skip; 75: retry later)."""
    head = ray_head_with_fake_ditfarm
    held = lease_refusal(tmp_path)
    env = {**head["env"], "RAY_ADDRESS": head["address"], "DITFARM_DAY": "2025-06-02"}
    env["PATH"] = f"{head['bin']}{os.pathsep}{env['PATH']}"  # the real `ray` for the submitter
    script = cron_script()
    for code, stderr, expected in [
        (2, held, 0),
        (2, "ditfarm render: manifest: no parquet files", 2),
        (75, "ditfarm render: no gang is left", 75),
    ]:
        head["plan"].write_text(json.dumps({"code": code, "stderr": stderr}))
        time.sleep(1.1)  # submission ids are per second
        proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == expected, (code, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
        assert "rendering s3://renders/manifests/2025-06-02/ into s3://renders/out/2025-06-02" in proc.stdout
