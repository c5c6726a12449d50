"""Models in object storage: fetched once per node however many processes ask at once, then loaded like folders."""

import multiprocessing as mp
from pathlib import Path

import boto3
import pytest

pytestmark = [pytest.mark.s3, pytest.mark.process]


def _upload(folder: Path, bucket: str, prefix: str) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


def _fetch(uri, cache_dir, queue):
    from ditfarm.pipelines.model_files import fetch_model

    fetched = fetch_model(uri, Path(cache_dir))
    queue.put((str(fetched.path), fetched.downloaded))


def test_concurrent_processes_download_once_and_load(s3_endpoint, random_model_folder, tmp_path, monkeypatch):
    import ditfarm

    _upload(random_model_folder, "models", "team/tiny-random")
    uri = "s3://models/team/tiny-random"
    cache_dir = tmp_path / "node-cache"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fetch, args=(uri, cache_dir, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    answers = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len({path for path, _ in answers}) == 1
    assert sorted(d for _, d in answers) == [False, False, True]  # one download for the whole node
    local = Path(answers[0][0])
    expected = sorted(str(p.relative_to(random_model_folder)) for p in random_model_folder.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == expected
    assert [p.name for p in cache_dir.iterdir() if p.is_dir()] == [local.name]  # no staging folder left behind

    monkeypatch.setenv("DITFARM_MODEL_CACHE", str(cache_dir))
    frames = ditfarm.load_pipeline(uri).generate("red circle moving left on blue background", seed=1, steps=2)
    assert frames.shape == (8, 32, 32, 3)


def test_missing_model_is_a_clear_error_and_leaves_nothing(s3_endpoint, tmp_path):
    from ditfarm.pipelines.model_files import fetch_model

    boto3.client("s3").create_bucket(Bucket="empty-models")
    with pytest.raises(ValueError, match="holds no files"):
        fetch_model("s3://empty-models/nothing-here", tmp_path)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    with pytest.raises(ValueError, match="not an s3"):
        fetch_model("gs://bucket/x", tmp_path)
