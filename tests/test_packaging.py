"""The wheel, not the editable install, must hold every module and data file and render on its own.

The editable install's import finder maps ``ditfarm.*`` to the source folders, so an import that works in the
test environment proves nothing about the wheel.  These tests compare the wheel's file list with the folders
themselves, then install the wheel into a folder of its own and run it with ``python -S``: no ``.pth`` file is
processed, so no editable finder exists, and the site-packages that hold torch & co. are added by hand, after
the wheel's folder.
"""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.process]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from setup import MAPPED  # noqa: E402 - the package -> folder map the build itself uses

sys.path.pop(0)
MAPPED_FOLDERS = {folder: package.replace(".", "/") for package, folder in MAPPED.items()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Built from a clean copy of the sources: an in-tree build/ folder left by an earlier build would otherwise
    fill the wheel with modules the current configuration no longer finds."""
    source = tmp_path_factory.mktemp("src") / "ditfarm"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "out", "runs", "__pycache__"),
    )
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        check=True,
    )
    (path,) = dist.glob("ditfarm-*.whl")
    return path


def source_files() -> set[str]:
    """Every file under the mapped folders, as the wheel should name it (caches and dotfiles aside)."""
    expected = set()
    for folder, package_path in MAPPED_FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT / folder)
            if path.is_dir() or "__pycache__" in rel.parts or path.suffix == ".pyc":
                continue
            if any(part.startswith(".") for part in rel.parts):
                continue
            expected.add(f"{package_path}/{rel.as_posix()}")
    return expected


def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = source_files()
    assert "ditfarm/cache/policies/adaptive.py" in expected  # the walk itself sees subpackages
    assert "ditfarm/pipelines/tiny/weights/transformer/diffusion_pytorch_model.safetensors" in expected
    missing = sorted(expected - names)
    assert not missing, f"files missing from the wheel: {missing}"
    top = {n.split("/")[0] for n in names}
    assert top == {"ditfarm", next(n.split("/")[0] for n in names if ".dist-info/" in n)}
    assert not any(
        n.startswith(tuple(f"{folder}/" for folder in [*MAPPED_FOLDERS, "tests"] if folder != "ditfarm")) for n in names
    )


def test_wheel_imports_and_renders_without_the_editable_finder(wheel, tmp_path):
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *site.getsitepackages()])}
    probe = (
        "import sys, ditfarm.cache, ditfarm.cache.policies, ditfarm.commands.cli\n"
        "assert not any('editable' in repr(f).lower() for f in sys.meta_path), sys.meta_path\n"
        "print(ditfarm.cache.__file__); print(ditfarm.cache.policies.__file__)\n"
    )
    where = subprocess.run(
        [sys.executable, "-S", "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    ).stdout.split()
    assert len(where) == 2 and all(w.startswith(str(target)) for w in where), where
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            "-S",
            "-m",
            "ditfarm.commands.cli",
            "render",
            "--prompt",
            "red circle moving left on blue background",
            "--out",
            str(out),
            "--steps",
            "2",
            "--no-progress",
        ],
        check=True,
        cwd=tmp_path,
        env=env,
    )
    assert len(list((out / "videos").glob("*.mp4"))) == 1


@pytest.mark.parametrize("beside", ["empty folder", "output folder", "clone"])
def test_a_script_beside_a_folder_named_ditfarm_imports_the_installed_ditfarm(beside, tmp_path):
    """A script's folder comes first on sys.path, and a plain folder named ditfarm there (an empty one, a run's
    output, a clone of this repository) would be a namespace package hiding the editable install: the install puts
    a link to the real package on sys.path (packaging_backend/), and a regular package wins over a namespace one."""
    import subprocess

    shadow = tmp_path / "ditfarm"
    shadow.mkdir()
    if beside == "output folder":
        (shadow / "videos").mkdir()
        (shadow / "results").mkdir()
        (shadow / "report.html").write_text("<html></html>")
    elif beside == "clone":
        for name in ["pyproject.toml", "setup.py", *MAPPED_FOLDERS]:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, shadow / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, shadow / name)
    script = tmp_path / "try.py"
    script.write_text(
        "import ditfarm, ditfarm.commands.cli\n"
        "print(ditfarm.__file__, ditfarm.commands.cli.__file__)\n"
        "print(ditfarm.load_pipeline.__module__, ditfarm.__version__)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    package_file, cli_file = proc.stdout.splitlines()[0].split()
    assert not package_file.startswith(str(shadow)) and not cli_file.startswith(str(shadow)), proc.stdout
    assert Path(cli_file).resolve() == (ROOT / "commands" / "cli.py").resolve()
    assert proc.stdout.splitlines()[1].split()[0] == "ditfarm.pipelines.loading"


def test_the_repository_root_is_not_a_package():
    """No ``__init__.py`` at the root: the install needs no trick there (a copied checkout's tests would import
    the original's subpackages through one)."""
    assert not (ROOT / "__init__.py").exists()
