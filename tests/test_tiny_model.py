"""The shipped tiny model and the cache profile shipped beside it belong together."""

from ditfarm.cache import CacheProfile, model_identity


def test_shipped_profile_belongs_to_the_shipped_model(tiny_pipe):
    profile = CacheProfile.load(tiny_pipe.default_cache_profile())
    assert profile.model == model_identity(tiny_pipe.transformer)
    assert profile.mask_iou is not None
    assert 0 < len(profile.foreground_blocks) < len(profile.blocks)
