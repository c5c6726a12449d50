"""The command line starts in well under a second: `--help`, `--version`, `render --help` and `status` import
neither torch, diffusers, transformers nor ray (checked with `python -X importtime`, which lists every module a
process imports), and `render --help` still lists every cache policy."""

import subprocess
import sys

import pytest

from ditfarm.choices import POLICIES
from ditfarm.jobs.results import ResultsWriter

pytestmark = [pytest.mark.process]

HEAVY = ("torch", "diffusers", "transformers", "ray")


def imported_modules(args: list[str]) -> tuple[set[str], str]:
    """Every module ``ditfarm ARGS`` imports, and what it printed."""
    code = f"import sys; from ditfarm.commands.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=120)
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return modules, proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["render", "--help"], ["status", "OUT"]])
def test_the_cli_starts_without_torch_diffusers_or_ray(args, tmp_path):
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    with ResultsWriter(out) as writer:  # an output with a row, so status reads real results
        writer.add({"id": "a", "status": "ok"})
    modules, printed = imported_modules([str(out) if a == "OUT" else a for a in args])
    assert "ditfarm.commands.cli" in modules  # the listing works
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy[:10]
    if args == ["render", "--help"]:
        assert all(policy in printed for policy in POLICIES), printed
    if args[0] == "status":
        assert "1 ids: 1 ok" in printed or "1 id: 1 ok" in printed, printed
