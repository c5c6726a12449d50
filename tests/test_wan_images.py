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
