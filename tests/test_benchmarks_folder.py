"""benchmarks/ is one shared harness plus a file per benchmark, and holds nothing BENCHMARKS.md does not cite: every
script builds on benchmarks/harness.py (its command line, pinned threads, result files that record the machine,
the date and the command), and every script and result file is named in BENCHMARKS.md."""

import ast
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit]

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "benchmarks"


def scripts() -> list[Path]:
    return sorted(p for p in FOLDER.glob("*.py") if p.name != "harness.py")


def test_every_benchmark_script_uses_the_shared_harness():
    assert len(scripts()) >= 10
    apart = []
    for path in scripts():
        tree = ast.parse(path.read_text(), str(path))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        if "harness" not in imported:
            apart.append(path.name)
    assert apart == [], f"benchmarks without the harness: {apart}"


def test_benchmarks_md_cites_every_file_in_benchmarks():
    cited = (ROOT / "BENCHMARKS.md").read_text()
    uncited = [
        p.name for p in sorted(FOLDER.iterdir()) if p.is_file() and p.name != "harness.py" and p.name not in cited
    ]
    assert uncited == [], f"files in benchmarks/ that no figure in BENCHMARKS.md cites: {uncited}"


def test_a_result_records_its_machine_date_and_command(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(FOLDER))
    import harness

    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--json", str(tmp_path / "x.json")])
    written = harness.write_result(tmp_path / "x.json", {"rows": [1, 2]})
    assert written["rows"] == [1, 2] and "cores" in written["machine"] and written["date"][:2] == "20"
    assert written["command"].endswith("benchmarks/x.py --json " + str(tmp_path / "x.json"))
    assert (tmp_path / "x.json").read_text().count('"machine"') == 1


def test_the_device_scripts_assemble_every_subpackage_the_install_maps():
    """A GPU machine gets ditfarm put together from its folders without pip: every folder setup.py maps must be
    copied, or the bench fails there on its first import of a missing layer."""
    import re

    tree = ast.parse((ROOT / "setup.py").read_text())
    mapped = next(
        node.value for node in ast.walk(tree) if isinstance(node, ast.Assign) and node.targets[0].id == "MAPPED"
    )
    folders = {ast.literal_eval(v) for v in mapped.values} - {"ditfarm"}
    for script in FOLDER.glob("device_*.sh"):
        copied = re.search(r"for d in ([\w ]+); do cp -r", script.read_text())
        if copied:
            assert set(copied.group(1).split()) == folders, script.name
