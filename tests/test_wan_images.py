"""A row's images: read from a path or a URI by the process that encodes them, refused by name when missing,
unreadable, not an image or too large; and each Wan folder kind takes the images it renders from and refuses the
others by name.  (Exactness with images: test_diffusers_oracle.py.)"""

import numpy as np
import pytest
from PIL import Image

from ditfarm.pipelines.families.wan import (
    WAN21_FLF2V,
    WAN21_I2V,
    WAN21_T2V,
    WAN22_A14B,
    WAN22_I2V_A14B,
    WAN22_TI2V,
    check_wan_images,
)
from ditfarm.pipelines.images import MAX_IMAGE_PIXELS, load_image
from ditfarm.storage.errors import redact


@pytest.mark.unit
def test_an_image_is_read_from_a_path_or_given_and_bad_ones_are_refused_naming_the_source(tmp_path):
    good = tmp_path / "frame.png"
    Image.fromarray(np.full((6, 8, 4), 200, np.uint8)).save(good)
    image = load_image(str(good))
    assert image.mode == "RGB" and image.size == (8, 6)
    assert load_image(Image.new("L", (4, 4))).mode == "RGB"

    text = tmp_path / "notes.png"
    text.write_text("not pixels")
    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noisy)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    for source, problem in (
        (str(tmp_path / "missing.png"), "does not exist"),
        (str(text), "is not an image Pillow can read"),
        (str(truncated), "cannot be decoded"),
        (str(tmp_path), "is not a file"),
    ):
        with pytest.raises(ValueError) as refused:
            load_image(source, "last_image")
        assert str(refused.value).startswith(f"last_image {source}") and problem in str(refused.value), refused.value
    with pytest.raises(ValueError, match="must be a path, an s3:// URI or a PIL image"):
        load_image(3)


@pytest.mark.unit
def test_an_image_past_64_megapixels_is_refused_before_it_is_decoded(tmp_path):
    big = tmp_path / "big.png"
    side = int(MAX_IMAGE_PIXELS**0.5) + 8  # a one-colour PNG: small on disk, past the limit in pixels
    Image.new("RGB", (side, side)).save(big)
    with pytest.raises(ValueError, match=r"big.png is \d+x\d+ \(\d+ MP\), more than the 64 MP"):
        load_image(str(big))


@pytest.mark.unit
@pytest.mark.parametrize(
    "variant, images, problem",
    [
        (WAN21_T2V, {"image": "a.png"}, "renders from text alone and takes no image"),
        (WAN22_A14B, {"last_image": "b.png"}, "takes no last_image"),
        (WAN21_I2V, {}, "renders from a first frame: the row needs an image"),
        (WAN21_I2V, {"image": "a.png", "last_image": "b.png"}, "takes no last_image (a first-last-frame folder does)"),
        (WAN21_FLF2V, {"image": "a.png"}, "renders between two frames: the row needs a last_image too"),
        (WAN22_I2V_A14B, {"last_image": "b.png"}, "renders from a first frame"),
        (WAN22_TI2V, {"image": "a.png", "last_image": "b.png"}, "takes no last_image"),
    ],
)
def test_each_wan_kind_refuses_the_images_it_cannot_take_by_name(variant, images, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_wan_images(variant, images)


@pytest.mark.unit
@pytest.mark.parametrize(
    "variant, images",
    [
        (WAN21_T2V, {}),
        (WAN22_TI2V, {}),
        (WAN22_TI2V, {"image": "a.png"}),
        (WAN21_I2V, {"image": "a.png"}),
        (WAN21_FLF2V, {"image": "a.png", "last_image": "b.png"}),
        (WAN22_I2V_A14B, {"image": "a.png", "last_image": "b.png"}),
    ],
)
def test_each_wan_kind_takes_the_images_it_renders_from(variant, images):
    check_wan_images(variant, images)


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def render_image_manifest(tmp_path, folder, images: list, out: str, capsys) -> tuple[int, dict, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ditfarm.commands.cli import main as cli
    from ditfarm.jobs.results import read_results

    manifest = tmp_path / "m.parquet"
    ids = [f"v{i}" for i in range(len(images))]
    pq.write_table(pa.table({"id": ids, "prompt": ["red cat moving left"] * len(ids), "image": images}), manifest)
    base = ["--out", out, "--model", str(folder), "--steps", "2", "--no-progress"]
    dry_code = cli(["render", str(manifest), *base, "--dry-run"])
    dry = capsys.readouterr().out
    assert dry_code == (1 if "would fail" in dry else 0), dry
    code = cli(["render", str(manifest), *base])
    capsys.readouterr()
    return code, {r["id"]: r for r in read_results(out).to_pylist()}, dry


@pytest.mark.process
def test_a_manifest_of_images_renders_the_good_rows_and_fails_the_others_naming_each_uri(tmp_path, capsys):
    """A good image (JPEG), a missing one and a file that is not an image: the good row is ok with its image in
    the results, the others fail naming their URI and the problem, and the dry run says the same of the
    missing one without reading any image."""
    from ditfarm.pipelines.families.wan import make_small_wan22_ti2v_folder

    folder = make_small_wan22_ti2v_folder(tmp_path / "ti2v")
    good, text = tmp_path / "good.jpg", tmp_path / "text.png"
    good.write_bytes(image_bytes(0, "JPEG"))
    text.write_text("not an image")
    missing = str(tmp_path / "missing.png")
    code, rows, dry = render_image_manifest(
        tmp_path, folder, [str(good), missing, str(text)], str(tmp_path / "out"), capsys
    )
    assert "would render 2" in dry and f"image {missing} does not exist" in dry, dry
    assert code == 1
    assert rows["v0"]["status"] == "ok" and rows["v0"]["image"] == str(good)
    # (errors are stored redacted: with moto's credentials in the environment, "test" in a path is masked)
    assert rows["v1"]["status"] == "failed" and redact(f"image {missing} does not exist") in rows["v1"]["error"]
    assert rows["v2"]["status"] == "failed"
    assert redact(f"image {text} is not an image Pillow can read") in rows["v2"]["error"]


@pytest.mark.s3
@pytest.mark.process
def test_images_on_s3_are_read_by_the_encoding_process_and_bad_ones_fail_by_uri(tmp_path, capsys, s3_endpoint):
    import uuid

    import boto3

    from ditfarm.pipelines.families.wan import make_small_wan_i2v_folder

    folder = make_small_wan_i2v_folder(tmp_path / "i2v")
    s3 = boto3.client("s3")
    bucket = "img-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="frames/good.png", Body=image_bytes(1))
    s3.put_object(Bucket=bucket, Key="frames/text.png", Body=b"not an image")
    good, missing, text = (f"s3://{bucket}/frames/{name}" for name in ("good.png", "gone.png", "text.png"))
    out = f"s3://{bucket}/out"
    code, rows, dry = render_image_manifest(tmp_path, folder, [good, missing, text], out, capsys)
    assert "would render 2" in dry and f"image {missing} does not exist" in dry, dry
    assert code == 1
    assert rows["v0"]["status"] == "ok" and rows["v0"]["image"] == good
    # (errors are stored redacted: with moto's credentials in the environment, "test" in a path is masked)
    assert rows["v1"]["status"] == "failed" and redact(f"image {missing} does not exist") in rows["v1"]["error"]
    assert rows["v2"]["status"] == "failed"
    assert redact(f"image {text} is not an image Pillow can read") in rows["v2"]["error"]


def render_image_rows_on_ranks(rank, world, runs):
    """For each (folder, images, missing, cfg_parallel) of ``runs``, on one gang: a sequence-parallel (or
    CFG-parallel) render of an image row, then of a row whose image is missing: the frames on rank 0, and what
    every rank says of the missing one."""
    from ditfarm.cluster.gang_rank import RankRenderer
    from ditfarm.types import RenderSettings, RowInputs

    out = []
    for folder, images, missing, cfg_parallel in runs:
        renderer = RankRenderer(rank, world, RenderSettings(model=folder, cfg_parallel=cfg_parallel))
        frames = renderer.render(RowInputs("red cat moving left", 5, extra=images)).frames
        try:
            renderer.render(RowInputs("red cat moving left", 5, extra={**images, "image": missing}))
            error = None
        except ValueError as err:
            error = str(err)
        out.append((frames, error))
    return out


@pytest.mark.process
def test_image_rows_render_on_a_two_rank_gang_as_in_one_process_and_a_missing_image_fails_every_rank(tmp_path):
    """Wan2.2 I2V-A14B (sequence- and CFG-parallel) and first-last-frame (both frames and their CLIP embeddings):
    rank 0 reads and encodes the images and every rank receives what they became.  A row rank 0 cannot read fails
    on every rank with rank 0's error instead of leaving the others waiting in a broadcast."""
    from ditfarm.cache.metrics import psnr
    from ditfarm.cluster.local import run_local_gang
    from ditfarm.pipelines.families.wan import make_small_wan22_i2v_a14b_folder, make_small_wan_i2v_folder
    from ditfarm.pipelines.loading import load_pipeline

    a14b = make_small_wan22_i2v_a14b_folder(tmp_path / "i2v-a14b")
    flf2v = make_small_wan_i2v_folder(tmp_path / "flf2v", first_last=True)
    good, end = tmp_path / "good.png", tmp_path / "end.png"
    good.write_bytes(image_bytes(4))
    end.write_bytes(image_bytes(6))
    missing = str(tmp_path / "missing.png")
    first = {"image": str(good), "last_image": None}
    both = {"image": str(good), "last_image": str(end)}
    runs = [(str(a14b), first, missing, False), (str(a14b), first, missing, True), (str(flf2v), both, missing, False)]
    alone = {
        folder: load_pipeline(folder).generate("red cat moving left", seed=5, **images) for folder, images, *_ in runs
    }
    rank0, rank1 = run_local_gang(render_image_rows_on_ranks, 2, runs, timeout_s=240)
    for (folder, *_), (frames, error0), (_, error1) in zip(runs, rank0, rank1):
        assert psnr(frames, alone[folder]) >= 60, folder
        assert error0 == error1 and f"image {missing} does not exist" in error0, (error0, error1)


@pytest.mark.process
def test_the_python_api_takes_pil_images_per_row_and_for_the_run(tmp_path):
    import ditfarm
    from ditfarm.pipelines.families.wan import make_small_wan22_ti2v_folder

    folder = make_small_wan22_ti2v_folder(tmp_path / "ti2v")
    first = Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    other = Image.fromarray(np.random.default_rng(6).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    rows = [
        {"prompt": "red cat moving left", "image": first},
        {"prompt": "red cat moving left", "image": other},  # another video: its own id
        {"prompt": "blue sky"},  # the run's image
    ]
    out = tmp_path / "out"
    results = list(ditfarm.render(rows, str(out), model=str(folder), steps=2, image=first))
    assert [r["status"] for r in results] == ["ok", "ok", "ok"] and len({r["id"] for r in results}) == 3
    assert all(r["image"].endswith(".png") and Image.open(r["image"]).size == (56, 40) for r in results)
    direct = ditfarm.load_pipeline(folder).generate(
        "red cat moving left", steps=2, image=first, seed=results[0]["seed"]
    )
    assert direct.shape == (9, 64, 64, 3)
