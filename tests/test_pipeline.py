import numpy as np
import pytest

import ditfarm
from ditfarm.pipelines.tiny.vocab import PromptError

pytestmark = [pytest.mark.unit]

PROMPT = "red circle moving left on blue background"


def test_same_seed_same_frames_other_seed_other_frames(random_model_folder):
    pipe = ditfarm.load_pipeline(random_model_folder)
    a = pipe.generate(PROMPT, seed=7, steps=3)
    b = pipe.generate(PROMPT, seed=7, steps=3)
    c = pipe.generate(PROMPT, seed=8, steps=3)
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_determinism_survives_a_fresh_load(random_model_folder):
    first = ditfarm.load_pipeline(random_model_folder).generate(PROMPT, seed=3, steps=2, num_frames=4)
    second = ditfarm.load_pipeline(random_model_folder).generate(PROMPT, seed=3, steps=2, num_frames=4)
    assert first.shape == (4, 32, 32, 3) and np.array_equal(first, second)


def test_vocabulary_error_from_generate(random_model_folder):
    pipe = ditfarm.load_pipeline(random_model_folder)
    with pytest.raises(PromptError, match="'dog'.*knows only"):
        pipe.generate("dog moving left on blue background", seed=0, steps=1)


def test_bad_settings_are_refused(random_model_folder):
    pipe = ditfarm.load_pipeline(random_model_folder)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        pipe.generate(PROMPT, steps=0)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        pipe.generate(PROMPT, height=30, steps=1)


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        ditfarm.load_pipeline("no-such-model")
