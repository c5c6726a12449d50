"""The wheel, not just the editable install, must give `import ditfarm`, the bundled model and the command."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
    )
    (path,) = dist.glob("ditfarm-*.whl")
    return path


def test_wheel_holds_one_package_and_the_model(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"ditfarm", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for sub in ("cache", "cluster", "jobs", "pipelines"):
        assert f"ditfarm/{sub}/__init__.py" in names
    assert "ditfarm/pipelines/tiny/weights/transformer/diffusion_pytorch_model.safetensors" in names
    assert "ditfarm/pipelines/tiny/weights/text_encoder.safetensors" in names
    assert not any(n.startswith(("cache/", "jobs/", "tests/")) for n in names)


def test_wheel_installs_and_renders(wheel, tmp_path):
    venv = tmp_path / "venv"
    # System site-packages supply torch & co.; the venv's own ditfarm (from the wheel) shadows any editable one.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "ditfarm"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], check=True)
    where = subprocess.run(
        [py, "-c", "import ditfarm, ditfarm.jobs.cli; print(ditfarm.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert where.startswith(str(venv)), where
    out = tmp_path / "out"
    subprocess.run(
        [exe, "render", "--prompt", "red circle moving left on blue background", "--out", str(out)]
        + ["--steps", "2", "--no-progress"],
        check=True,
        cwd=tmp_path,
    )
    assert len(list((out / "videos").glob("*.mp4"))) == 1
