#!/usr/bin/env python3
"""Refresh constraints.txt: the versions the test suite last passed with.

Installs (the README's commands, .ci/run, the images) use ``pip install -c constraints.txt`` so that an upstream
release cannot turn a fresh machine red overnight; pyproject.toml keeps its ranges for projects that depend on
ditfarm.  Moving forward is this one command:

    python .ci/refresh_constraints.py [--torch VERSION] [-- PYTEST ARGS]

It builds a fresh virtual environment from pyproject.toml's ranges alone (torch pinned, since an unpinned torch
can pull a multi-GB CUDA build: the version in constraints.txt unless --torch names another), runs the suite in
it, and rewrites constraints.txt only when the suite passes.  When the suite fails the file stays as it was and
the command names the packages whose versions changed since the file was written: the first suspects.
Its exit status is the suite's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
PROJECT = "ditfarm"
HEADER = """\
# The versions ditfarm's test suite last passed with (Python {python}, Linux x86_64, torch's CPU build).
# Installs use them: pip install -c constraints.txt ... (README, .ci/run, infra/Dockerfile*).
# pyproject.toml keeps version ranges for projects that depend on ditfarm.
# Written by `python .ci/refresh_constraints.py`, only after the suite passed with exactly these versions.
"""
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """name (canonical) -> version of every ``name==version`` line; comments, editables and URLs are skipped."""
    pins = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def public_version(version: str) -> str:
    """The version without its local label: torch's 2.13.0+cpu pins as 2.13.0, which the CUDA builds match too."""
    return version.split("+", 1)[0]


def frozen_pins(freeze_output: str) -> dict[str, str]:
    """What ``pip freeze --all`` lists, less ditfarm and pip themselves, with local labels dropped (setuptools and
    wheel stay: the test extra names them)."""
    return {
        name: public_version(version)
        for name, version in parse_pins(freeze_output).items()
        if name not in (PROJECT, "pip")
    }


def render_constraints(pins: dict[str, str], python: str) -> str:
    return HEADER.format(python=python) + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per package added, removed or moved between two sets of pins, in name order."""
    lines = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None:
            lines.append(f"{name}: new, {after}")
        elif after is None:
            lines.append(f"{name}: {before}, no longer installed")
        else:
            lines.append(f"{name}: {before} -> {after}")
    return lines


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch", help="torch version to install first (default: the one constraints.txt pins)")
    parser.add_argument("--venv", help="where to build the environment (default: a temporary folder, removed after)")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: the README's -q)")
    args = parser.parse_args(argv)

    old = parse_pins(CONSTRAINTS.read_text()) if CONSTRAINTS.exists() else {}
    torch = args.torch or old.get("torch")
    if not torch:
        parser.error("constraints.txt pins no torch: name one with --torch")
    venv = Path(args.venv) if args.venv else Path(tempfile.mkdtemp(prefix="ditfarm-constraints-"))
    try:
        if run([sys.executable, "-m", "venv", "--clear", str(venv)]).returncode:
            return 1
        python = str(venv / "bin" / "python")
        steps = [
            [python, "-m", "pip", "install", "-q", "--upgrade", "pip"],
            [python, "-m", "pip", "install", "-q", f"torch=={torch}"],
            [python, "-m", "pip", "install", "-q", "-e", ".[test]"],
        ]
        for step in steps:
            if run(step).returncode:
                print(
                    "refresh-constraints: the install from pyproject.toml's ranges failed; constraints.txt is "
                    "unchanged",
                    file=sys.stderr,
                )
                return 1
        freeze = run([python, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True).stdout
        new = frozen_pins(freeze)
        moved = changes(old, new)
        suite = run([python, "-m", "pytest", *(args.pytest_args or ["-q"])])
        version = run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    finally:
        if not args.venv:
            shutil.rmtree(venv, ignore_errors=True)

    if suite.returncode:
        print(
            f"refresh-constraints: the suite failed (exit {suite.returncode}); constraints.txt is unchanged.",
            file=sys.stderr,
        )
        print(
            "Packages whose versions changed since constraints.txt was written:"
            if moved
            else "No package version changed since constraints.txt was written.",
            file=sys.stderr,
        )
        for line in moved:
            print(f"  {line}", file=sys.stderr)
        return suite.returncode
    CONSTRAINTS.write_text(render_constraints(new, version))
    print(f"refresh-constraints: the suite passed; constraints.txt rewritten ({len(new)} pins, {len(moved)} changed)")
    for line in moved:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
