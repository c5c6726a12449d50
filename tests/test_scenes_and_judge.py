import numpy as np
import pytest

from ditfarm.pipelines.tiny.scenes import is_held_out, render_scene, sample_scene_spec, training_batch
from ditfarm.pipelines.tiny.vocab import parse_prompt
from ditfarm.tools.adherence import held_out_cases, judge, judge_ground_truth, summarise

pytestmark = [pytest.mark.unit]


def test_training_split_never_contains_held_out_prompts():
    rng = np.random.default_rng(0)
    assert not any(is_held_out(sample_scene_spec(rng)) for _ in range(3000))
    assert all(is_held_out(spec) for spec, _ in held_out_cases(50, two_object_prob=0.5))


def test_training_batch_shapes_and_range():
    videos, prompts = training_batch(np.random.default_rng(1), 4, 8, 32, 32)
    assert videos.shape == (4, 3, 8, 32, 32) and len(prompts) == 4
    assert videos.min() >= -1 and videos.max() <= 1


def test_masks_match_the_painted_pixels():
    spec = parse_prompt("red square moving right on blue background")
    scene = render_scene(spec, np.random.default_rng(3))
    red = (scene.frames == np.array([1.0, 0.0, 0.0], np.float32)).all(-1)
    assert np.array_equal(red, scene.masks)
    assert scene.masks.sum(axis=(1, 2)).min() > 20  # the shape stays in frame


def test_judge_accepts_every_ground_truth_video():
    cases = held_out_cases(60, two_object_prob=0.3)
    summary = summarise(judge_ground_truth(cases))
    assert summary["foreground_colour"] == summary["direction"] == summary["background_colour"] == 1.0


def test_judge_rejects_wrong_colour_direction_and_background():
    spec = parse_prompt("red circle moving left on blue background")
    frames = (render_scene(spec, np.random.default_rng(5)).frames * 255).astype(np.uint8)
    assert judge(frames, spec).direction_ok
    wrong = judge(frames, "yellow circle moving right on green background")
    assert not wrong.foreground_ok and not wrong.direction_ok and not wrong.background_ok
    static = judge(np.repeat(frames[:1], 8, axis=0), spec)
    assert static.foreground_ok and not static.direction_ok
