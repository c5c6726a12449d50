"""A row's images (the first frame of an image-to-video render, the last frame of a first-last-frame one): read
from a local path or an ``s3://`` URI through the storage layer by the process that encodes them, or taken as a
PIL image from the Python API, and refused by name when missing, unreadable, not an image, or too large.

Resizing is the pipeline's, as diffusers' pipelines resize (their ``VideoProcessor``); this module only gives
them an RGB image, as diffusers' ``load_image`` does (EXIF orientation applied)."""

from __future__ import annotations

import io
import warnings

from ..storage.errors import StorageError
from ..storage.inputs import read_input_file

MAX_IMAGE_PIXELS = 64_000_000  # 64 MP: past any video's frame; a larger file is a mistake or an attack
MAX_IMAGE_BYTES = 256 * 1024 * 1024  # an image file past this is refused before it is read
IMAGE_INPUTS = ("image", "last_image")  # the names a row and ``generate`` give them


def load_image(source, name: str = "image"):
    """An RGB PIL image from ``source`` (a path, an ``s3://`` URI or a PIL image); ValueError naming ``name``,
    the source and the problem otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError  # deferred: PIL

    if isinstance(source, Image.Image):
        check_pixels(source.size, name, "the given image")
        return ImageOps.exif_transpose(source).convert("RGB")
    if not isinstance(source, str) or not source:
        raise ValueError(f"{name} must be a path, an s3:// URI or a PIL image, got {source!r}")
    try:
        data = read_input_file(source, MAX_IMAGE_BYTES)
    except StorageError as err:  # missing, unreadable, too large: the row's problem, named by its URI
        raise ValueError(f"{name} {err}") from None
    with warnings.catch_warnings():  # Pillow's own bomb warning: the limit below is ours
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            check_pixels(image.size, name, source)
            image.load()
        except Image.DecompressionBombError:  # so large Pillow refuses to open it
            raise ValueError(
                f"{name} {source} has more than the {MAX_IMAGE_PIXELS // 1_000_000} MP an input image may have"
            ) from None
        except UnidentifiedImageError:
            raise ValueError(f"{name} {source} is not an image Pillow can read") from None
        except OSError as err:  # truncated or corrupt data
            raise ValueError(f"{name} {source} cannot be decoded: {err}") from None
    return ImageOps.exif_transpose(image).convert("RGB")


def check_pixels(size: tuple[int, int], name: str, source: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{name} {source} is {width}x{height} ({width * height / 1e6:.0f} MP), more than the "
            f"{MAX_IMAGE_PIXELS // 1_000_000} MP an input image may have"
        )
