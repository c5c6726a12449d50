"""Reproducible installs: constraints.txt pins every dependency inside pyproject.toml's ranges, the README's
install commands use it exactly as .ci/run does, and the refresh command rewrites it only after a green suite
(otherwise it names what moved)."""

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = [pytest.mark.s3, pytest.mark.process]

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"


def load_refresh():
    spec = importlib.util.spec_from_file_location("refresh_constraints", ROOT / ".ci" / "refresh_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refresh = load_refresh()


def readme_commands() -> list[str]:
    """The README's first two fenced shell commands (install and render; install and test)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [block.strip() for block in blocks[:2]]


def test_every_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = refresh.parse_pins(CONSTRAINTS.read_text())
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt pins no {name}"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement.specifier}"
        )
    assert pins["moto"] != "5.2.6"  # refuses HeadObject under a policy that grants what AWS requires


def test_readme_install_commands_use_the_constraints_and_are_what_ci_runs():
    commands = readme_commands()
    assert len(commands) == 2 and all("pip install -c constraints.txt" in c for c in commands)
    ci = (ROOT / ".ci" / "run").read_text()
    for command in commands:
        assert command in ci.splitlines(), f".ci/run does not run the README's command {command!r}"
    assert "torch==" not in " ".join(commands) + ci  # torch's one pin is the constraints file's


def test_constraints_file_is_what_the_refresh_writes():
    """No hand edits: the file is the refresh's rendering of its own pins, ditfarm itself and local labels out."""
    text = CONSTRAINTS.read_text()
    pins = refresh.parse_pins(text)
    python = re.search(r"Python (\d+\.\d+)", text).group(1)
    assert refresh.render_constraints(pins, python) == text
    assert "ditfarm" not in pins and not any("+" in v for v in pins.values())


FREEZE = """\
-e /work/ditfarm
pip==26.0
moto==5.2.7
pyarrow==27.0.0
torch==2.13.0+cpu
zipp==3.20.0
"""


def fake_steps(monkeypatch, freeze: str, suite_rc: int):
    """Stand in for pip and pytest: every step succeeds, pip freeze prints `freeze`, pytest exits `suite_rc`."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[1:4] == ["-m", "pip", "freeze"]:  # with --all
            return subprocess.CompletedProcess(cmd, 0, stdout=freeze)
        if cmd[1:3] == ["-m", "pytest"]:
            return subprocess.CompletedProcess(cmd, suite_rc)
        if cmd[1:2] == ["-c"]:
            return subprocess.CompletedProcess(cmd, 0, stdout="3.11\n")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(refresh, "run", run)
    return calls


@pytest.fixture
def old_constraints(tmp_path, monkeypatch):
    path = tmp_path / "constraints.txt"
    path.write_text(
        refresh.render_constraints(
            {"moto": "5.2.5", "pyarrow": "26.0.1", "torch": "2.13.0", "six": "1.17.0", "zipp": "3.20.0"}, "3.11"
        )
    )
    monkeypatch.setattr(refresh, "CONSTRAINTS", path)
    return path


def test_a_failing_suite_leaves_the_file_and_names_what_moved(old_constraints, monkeypatch, capsys, tmp_path):
    before = old_constraints.read_text()
    calls = fake_steps(monkeypatch, FREEZE, suite_rc=1)
    assert refresh.main(["--venv", str(tmp_path / "venv"), "--", "-q", "-x"]) == 1
    assert old_constraints.read_text() == before
    err = capsys.readouterr().err
    assert "constraints.txt is unchanged" in err
    moved = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert moved == ["moto: 5.2.5 -> 5.2.7", "pyarrow: 26.0.1 -> 27.0.0", "six: 1.17.0, no longer installed"]
    installs = [c for c in calls if "install" in c]
    assert [c[-1] for c in installs] == ["pip", "torch==2.13.0", ".[test]"]  # ranges alone, torch pinned
    assert not any("-c" in c for c in installs)
    assert [c for c in calls if "pytest" in c][0][3:] == ["-q", "-x"]


def test_a_passing_suite_rewrites_the_file(old_constraints, monkeypatch, capsys, tmp_path):
    fake_steps(monkeypatch, FREEZE, suite_rc=0)
    assert refresh.main(["--venv", str(tmp_path / "venv"), "--torch", "2.14.0"]) == 0
    assert refresh.parse_pins(old_constraints.read_text()) == {
        "moto": "5.2.7",
        "pyarrow": "27.0.0",
        "torch": "2.13.0",
        "zipp": "3.20.0",
    }
    assert "moto: 5.2.5 -> 5.2.7" in capsys.readouterr().out
