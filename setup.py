"""Package discovery for the one import package ``ditfarm``, whose subpackages live in top-level folders.

setuptools' own ``find`` cannot map folders to a different package prefix, and a hand-written package list
silently drops any subpackage nobody remembered to add.  So every package under each mapped folder is found
here, and every non-Python file inside a package's folder (weights, configs, profiles) ships as its data.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
MAPPED = {  # import package -> folder; docs/architecture.md orders them in layers
    "ditfarm": "ditfarm",
    "ditfarm.storage": "storage",
    "ditfarm.pipelines": "pipelines",
    "ditfarm.cache": "cache",
    "ditfarm.worker": "worker",
    "ditfarm.cluster": "cluster",
    "ditfarm.jobs": "jobs",
    "ditfarm.tools": "tools",
    "ditfarm.commands": "commands",
}
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = {".py", ".pyc", ".pyo"}


def discover(root: Path = ROOT) -> tuple[list[str], dict[str, list[str]]]:
    """(packages, package_data): every package under the mapped folders and each one's non-Python files."""
    packages: list[str] = []
    package_data: dict[str, list[str]] = {}
    for name, folder in MAPPED.items():
        base = root / folder
        for sub in [""] + find_packages(str(base)):
            package = name + ("." + sub if sub else "")
            pkg_dir = base / sub.replace(".", "/") if sub else base
            packages.append(package)
            data = [str(p.relative_to(pkg_dir)) for p in _data_files(pkg_dir)]
            if data:
                package_data[package] = sorted(data)
    return packages, package_data


def _data_files(pkg_dir: Path):
    """Files under pkg_dir that belong to this package: not Python, not in a subpackage, not caches."""
    for path in sorted(pkg_dir.iterdir()):
        if path.is_dir():
            if path.name in SKIPPED_DIRS or path.name.startswith(".") or (path / "__init__.py").exists():
                continue
            yield from _data_files_below(path)
        elif path.suffix not in SKIPPED_SUFFIXES and not path.name.startswith("."):
            yield path


def _data_files_below(folder: Path):
    for path in sorted(folder.rglob("*")):
        if (
            path.is_file()
            and not any(part in SKIPPED_DIRS for part in path.parts)
            and path.suffix not in SKIPPED_SUFFIXES
        ):
            yield path


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import discover() from it
    PACKAGES, PACKAGE_DATA = discover()
    setup(packages=PACKAGES, package_dir=MAPPED, package_data=PACKAGE_DATA, include_package_data=False)
