"""The deployment files parse, and every ditfarm command in them is one the CLI accepts."""

import shlex
from pathlib import Path

import pytest

import yaml

from ditfarm.jobs.cli import build_parser

INFRA = Path(__file__).resolve().parents[1] / "infra"


def ditfarm_commands(text: str) -> list[list[str]]:
    """Every `ditfarm render ...` command in a shell or entrypoint string (line continuations joined)."""
    words = shlex.split(text.replace("\\\n", " "), comments=False)
    commands, current = [], None
    for word in words:
        if word == "ditfarm":
            current = []
            commands.append(current)
        elif current is not None:
            if word in ("&&", ";", "|"):
                current = None
            else:
                current.append(word)
    return commands


def strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")), ids=lambda p: p.name)
def test_infra_yaml_parses_and_its_commands_are_valid(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs and all("apiVersion" in d and "kind" in d for d in docs)
    commands = [c for d in docs for s in strings(d) if "ditfarm render" in s for c in ditfarm_commands(s)]
    assert len(commands) == path.read_text().count("ditfarm render")  # each one found and checked
    for argv in commands:
        args = build_parser().parse_args(argv)  # SystemExit on an unknown flag or a bad value
        assert args.command == "render" and args.out


def test_example_commands_in_infra_readme_are_valid():
    text = (INFRA / "README.md").read_text()
    blocks = [line for line in text.split("\n\n") if "ditfarm render" in line and "ray job submit" in line]
    assert blocks
    for block in blocks:
        for argv in ditfarm_commands(block):
            assert build_parser().parse_args(argv).command == "render"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_images_copy_everything_the_build_reads(dockerfile):
    """`pip install .` in the image reads setup.py (package discovery) and every mapped folder."""
    copied = set()
    for line in (INFRA / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            copied.update(line.split()[1:-1])
    assert {"pyproject.toml", "setup.py", "README.md", "ditfarm", "pipelines", "cache", "cluster", "jobs"} <= copied


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
