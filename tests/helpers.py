"""Test doubles shared by several test modules (pytest puts this folder on sys.path)."""

from ditfarm.jobs.driver import LocalRenderer


class CountingRenderer(LocalRenderer):
    """The in-process renderer, remembering which ids it was asked to render."""

    def __init__(self, settings):
        super().__init__(settings)
        self.rendered = []

    def render(self, task, settings, out):
        self.rendered.append(task.id)
        return super().render(task, settings, out)


def free_port() -> int:
    """A TCP port free on loopback now (for a service a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_ladder():
    """adaptive's ladder from the shipped tiny card (searched at 30 steps; fractions of the schedule)."""
    from ditfarm.cache.presets import ModelCacheSettings
    from ditfarm.pipelines.tiny.weights import BUNDLED_FOLDER, read_model_card

    return ModelCacheSettings.from_card(read_model_card(BUNDLED_FOLDER), 30).adaptive_ladder


def poisoned_model_folder(source, dest, word: str = "triangle"):
    """A copy of a tiny-architecture folder whose text encoder maps ``word`` to inf: any prompt with that word
    drives the loop to NaN (as broken weights or an overflow would), every other prompt renders as before."""
    import shutil

    import safetensors.torch

    from ditfarm.pipelines.tiny.vocab import VOCABULARY

    shutil.copytree(source, dest)
    tables = safetensors.torch.load_file(dest / "text_encoder.safetensors")
    tables["word_table"][list(VOCABULARY).index(word)] = float("inf")
    safetensors.torch.save_file(tables, dest / "text_encoder.safetensors")
    return dest


def rank_that_dies_on(video_id: str, rank: int = 0):
    """A gang member class whose rank ``rank`` exits as it starts rendering ``video_id``, every time: a row that
    kills whichever gang renders it (as an out-of-memory kill or a crashing kernel would).  Defined here, the
    class travels to the Ray workers by value."""
    import os

    import ray

    from ditfarm.cluster.gang import MEMBER_OPTIONS, RankActor

    class RankThatDies(RankActor):
        def render(self, row, publish=None, *args, **kwargs):
            if self.rank == rank and publish is not None and publish.video_id == video_id:
                os._exit(1)
            return super().render(row, publish, *args, **kwargs)

    return ray.remote(**MEMBER_OPTIONS)(RankThatDies)


def rank_that_holds_its_publish(passed: str, release: str):
    """A gang member class whose rank 0, once a video is past its fence, touches the file ``passed`` and holds the
    video there (published, not yet landed) until the file ``release`` exists: a stalled upload or a slow disk at
    the moment a run stops."""
    import os
    import time

    import ray

    from ditfarm.cluster.gang import MEMBER_OPTIONS, RankActor

    class RankThatHoldsItsPublish(RankActor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            fence = self.gate.fence

            def held_fence(key, check=None):
                run = fence(key, check)

                def held():
                    run()
                    open(passed, "a").close()
                    while not os.path.exists(release):
                        time.sleep(0.05)

                return held

            self.gate.fence = held_fence

    return ray.remote(**MEMBER_OPTIONS)(RankThatHoldsItsPublish)
