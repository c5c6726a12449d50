import os

import pytest

# Tests share two cores with whatever else runs; one thread per test process keeps timings sane.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Every test names its tier (pyproject.toml's markers): `pytest -m unit` runs the quick ones that need nothing but
# this process; `slow` ones stay in process but render or train for long; the others say what they start.
TIERS = ("unit", "slow", "process", "ray", "s3", "browser")


def pytest_collection_modifyitems(config, items):
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(tier) for tier in TIERS)]
    if untiered:
        raise pytest.UsageError(f"tests without a tier marker ({', '.join(TIERS)}): {', '.join(untiered[:10])}")


def marks_ray(path: str, name: str) -> bool:
    """Whether the test ``name`` of the test file ``path`` carries the ``ray`` tier, read from the file itself
    (the module's ``pytestmark`` or the function's decorators): the xdist controller collects no items."""
    import ast

    tree = _parsed(path)
    if tree is None:
        return False

    def says_ray(node) -> bool:
        return any(isinstance(n, ast.Attribute) and n.attr == "ray" for n in ast.walk(node))

    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            if says_ray(node.value):
                return True
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return any(says_ray(d) for d in node.decorator_list)
    return False


_PARSED: dict = {}


def _parsed(path: str):
    import ast
    from pathlib import Path

    if path not in _PARSED:
        file = Path(__file__).parent.parent / path
        _PARSED[path] = ast.parse(file.read_text()) if file.exists() else None
    return _PARSED[path]


def pytest_xdist_make_scheduler(config, log):
    """The suite runs on two pytest-xdist workers (pyproject.toml).  Every test that starts or joins a Ray cluster
    runs on the same worker, one after another, as they would alone: Ray finds a cluster already running on the
    machine, so two at once would meet.  Every other test is its own unit of work."""
    from xdist.scheduler import LoadScopeScheduling

    class RayTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, rest = nodeid.partition("::")
            return "ray" if marks_ray(path, rest.split("[")[0].split("::")[-1]) else nodeid

    return RayTestsTogether(config, log)


class OutsideUnitTier(AssertionError):
    """A unit test tried to start a process or open a network connection."""


@pytest.fixture(autouse=True)
def unit_tests_stay_in_process(request, monkeypatch):
    """A test marked unit may start no process (Ray, moto, ffmpeg, a CLI) and connect nowhere: it fails if it does."""
    if request.node.get_closest_marker("unit") is None:
        return
    import multiprocessing.process
    import socket
    import subprocess

    def refuse(what):
        def refused(*args, **kwargs):
            raise OutsideUnitTier(f"a unit test may not {what}; mark it with the tier it needs")

        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a subprocess"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("start a process"))
    monkeypatch.setattr(socket.socket, "connect", refuse("open a network connection"))


@pytest.fixture(scope="session")
def tiny_pipe():
    import ditfarm

    return ditfarm.load_pipeline("tiny")


@pytest.fixture(scope="session")
def random_model_folder(tmp_path_factory):
    """A tiny-architecture model folder with random weights: for code paths where quality does not matter.

    Six blocks (the shipped tiny has eight) keep the engine tests' hand-written block masks short."""
    import torch
    from diffusers import WanTransformer3DModel

    from ditfarm.pipelines.tiny.model_config import TRANSFORMER_CONFIG
    from ditfarm.pipelines.tiny.text_encoder import WordTextEncoder
    from ditfarm.pipelines.tiny.weights import save_model_folder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("random-tiny")
    save_model_folder(folder, WanTransformer3DModel(**{**TRANSFORMER_CONFIG, "num_layers": 6}), WordTextEncoder())
    # tiny's searched ladder too, so the engine tests see its rungs (output reuse among them)
    import json

    from ditfarm.pipelines.tiny.weights import BUNDLED_FOLDER, read_model_card

    card = read_model_card(folder)
    card["cache"] = read_model_card(BUNDLED_FOLDER)["cache"]
    (folder / "ditfarm_model.json").write_text(json.dumps(card, indent=2))
    return folder


@pytest.fixture(scope="session")
def small_wan_folder(tmp_path_factory):
    """A complete diffusers Wan folder with random weights and small dimensions (read it, don't change it:
    tests that break folders copy it first)."""
    from ditfarm.pipelines.families.wan import make_small_wan_folder

    return make_small_wan_folder(tmp_path_factory.mktemp("small-wan-shared"))


@pytest.fixture(scope="session")
def small_wan22_a14b_folder(tmp_path_factory):
    """A diffusers Wan2.2 A14B-style folder: two small experts, boundary_ratio 0.875 (read it, don't change it)."""
    from ditfarm.pipelines.families.wan import make_small_wan22_a14b_folder

    return make_small_wan22_a14b_folder(tmp_path_factory.mktemp("small-wan22-a14b"))


@pytest.fixture(scope="session")
def small_wan22_ti2v_folder(tmp_path_factory):
    """A diffusers Wan2.2 TI2V-5B-style folder: the 48-channel 16x VAE, per-token timesteps (read it, don't change
    it)."""
    from ditfarm.pipelines.families.wan import make_small_wan22_ti2v_folder

    return make_small_wan22_ti2v_folder(tmp_path_factory.mktemp("small-wan22-ti2v"))


@pytest.fixture(scope="session", params=["wan2.1-i2v", "wan2.1-flf2v", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"])
def small_wan_image_folder(request, tmp_path_factory):
    """(kind, folder) of each Wan folder that renders from images, small and random (read it, don't change it)."""
    from ditfarm.pipelines.families import wan

    folder = tmp_path_factory.mktemp(f"small-{request.param}")
    make = {
        "wan2.1-i2v": lambda f: wan.make_small_wan_i2v_folder(f),
        "wan2.1-flf2v": lambda f: wan.make_small_wan_i2v_folder(f, first_last=True),
        "wan2.2-i2v-a14b": wan.make_small_wan22_i2v_a14b_folder,
        "wan2.2-ti2v-5b": wan.make_small_wan22_ti2v_folder,
    }[request.param]
    return request.param, make(folder)


@pytest.fixture(scope="session", params=["2b", "5b", "1.5"])
def small_cogvideox_folder(request, tmp_path_factory):
    """A diffusers CogVideoX folder with random weights and small dimensions, as 2B (built-in positions, DDIM), as
    5B (rotary positions, DPM) and as 1.5 (rotary positions, DPM, two latent frames per token) (read it, don't
    change it)."""
    from ditfarm.pipelines.families.cogvideox import make_small_cogvideox_folder

    folder = tmp_path_factory.mktemp(f"small-cogvideox-{request.param}")
    temporal_patch = 2 if request.param == "1.5" else None
    return make_small_cogvideox_folder(folder, rotary=request.param != "2b", temporal_patch=temporal_patch)


@pytest.fixture(scope="session")
def small_hunyuan_video_folder(tmp_path_factory):
    """A diffusers HunyuanVideo 1.0 folder with random weights and small dimensions (read it, don't change it)."""
    from ditfarm.pipelines.families.hunyuan_video import make_small_hunyuan_video_folder

    return make_small_hunyuan_video_folder(tmp_path_factory.mktemp("small-hunyuan-video"))


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on loopback (moto's server); boto3 in this process and in its children finds it
    through the standard AWS_* variables."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
