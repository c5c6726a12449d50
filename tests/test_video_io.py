import numpy as np
import pytest

from ditfarm.pipelines.video_io import read_mp4, write_mp4

pytestmark = [pytest.mark.process]  # ffmpeg encodes the videos


def test_mp4_round_trip_with_upscale(tmp_path):
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    frames[:] = (0, 64, 255)
    for t in range(8):
        frames[t, 10:18, 2 + 2 * t : 10 + 2 * t] = (255, 0, 0)
    path = write_mp4(frames, tmp_path / "v.mp4", upscale=4)
    back = read_mp4(path)
    assert back.shape == (8, 128, 128, 3)
    down = back[:, 2::4, 2::4].astype(int)  # centre pixel of each upscaled block
    assert np.abs(down - frames).mean() < 4
    moving_square = down[np.arange(8), 14, 6 + 2 * np.arange(8)]  # a pixel inside the square in every frame
    assert np.abs(moving_square - [255, 0, 0]).max() < 40
    with open(path, "rb") as f:
        assert b"ftyp" in f.read(64)
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="even"):
        write_mp4(np.zeros((2, 7, 8, 3), np.uint8), tmp_path / "x.mp4")
