"""The command line starts in well under a second: `--help`, `--version`, `render --help`, `status` and every
tool command's `--help` import neither torch, diffusers, transformers nor ray (checked with `python -X importtime`,
which lists every module a process imports), and `render --help` still lists every cache policy.  Each command is
declared with argparse in its own module (commands/), so each has its own `--help`."""

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


TOOL_HELP = [
    ["profile", "--help"],
    ["calibrate", "--help"],
    ["bench", "--help"],
    ["bench", "cache", "--help"],
    ["bench", "gpu", "--help"],
    ["eval-adherence", "--help"],
    ["train-tiny", "--help"],
    ["train-router", "--help"],
]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["render", "--help"], ["status", "OUT"], *TOOL_HELP])
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
    if args[-1] == "--help":
        assert f"usage: ditfarm {' '.join(args[:-1])}".rstrip() in printed, printed


def test_each_command_declares_its_flags_in_its_own_module():
    """`ditfarm --help` lists every command, and each command module's parser holds its flags: a flag of one
    command is refused by another, and a tool's defaults are the tool's own (no argv handed on unparsed)."""
    from ditfarm.commands.cli import COMMANDS, build_parser
    from ditfarm.tools.settings import RouterTraining

    parser = build_parser()
    names = {"render", "status", "profile", "calibrate", "bench", "eval-adherence", "train-tiny", "train-router"}
    assert set(parser._subparsers._group_actions[0].choices) == names and len(COMMANDS) == len(names)
    args = parser.parse_args(["train-router"])
    assert args.iterations == RouterTraining().iterations and args.beta == RouterTraining().beta
    args = parser.parse_args(["bench", "cache", "--json", "x.json", "--methods", "adaptive:0.5"])
    assert args.bench == "cache" and args.methods == "adaptive:0.5" and args.threads == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "cache", "--json", "x.json", "--lambdas", "0.1"])  # calibrate's flag
    with pytest.raises(SystemExit):
        parser.parse_args(["calibrate", "harmonica", "--out", "p.json"])  # not a method it calibrates
