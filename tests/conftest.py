import os

import pytest

# Tests share two cores with whatever else runs; one thread per test process keeps timings sane.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_pipe():
    import ditfarm

    return ditfarm.load_pipeline("tiny")


@pytest.fixture(scope="session")
def random_model_folder(tmp_path_factory):
    """A tiny-architecture model folder with random weights: for code paths where quality does not matter."""
    import torch
    from diffusers import WanTransformer3DModel

    from ditfarm.pipelines.tiny.model_config import TRANSFORMER_CONFIG
    from ditfarm.pipelines.tiny.text_encoder import WordTextEncoder
    from ditfarm.pipelines.tiny.weights import save_model_folder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("random-tiny")
    save_model_folder(folder, WanTransformer3DModel(**TRANSFORMER_CONFIG), WordTextEncoder())
    return folder
