"""The registry of model families: every folder is matched to the one family that renders it (a diffusers folder
by its pipeline class and transformer class, a ditfarm folder by its card's kind), loading and the dry run's
checks go through it, and a folder no family renders is refused by both alike, naming what it is and listing
what ditfarm renders."""

import json
import shutil
from types import SimpleNamespace

import pytest

from ditfarm.pipelines import family as registry
from ditfarm.pipelines.checks import ModelChecks, check_nonempty_prompt
from ditfarm.pipelines.denoise import SamplerSettings
from ditfarm.pipelines.family import Family, families, family_of_folder, register_family
from ditfarm.pipelines.folder_checks import ModelFolderError
from ditfarm.pipelines.loading import load_pipeline
from ditfarm.pipelines.model_checks import model_checks
from ditfarm.pipelines.tiny.weights import BUNDLED_FOLDER

pytestmark = [pytest.mark.unit]


def refused_alike(folder, *named: str) -> str:
    """The load and the dry run's checks refuse ``folder`` with the same message, which names each of ``named``."""
    messages = []
    for load in (load_pipeline, model_checks):
        with pytest.raises(ModelFolderError) as refused:
            load(str(folder))
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    assert all(n in messages[0] for n in named), messages[0]
    return messages[0]


def test_each_folder_finds_its_family(small_wan_folder, small_cogvideox_folder, small_hunyuan_video_folder, tmp_path):
    from ditfarm.pipelines.families.hunyuan_video15 import make_small_hunyuan_video15_folder

    assert {"tiny", "wan", "cogvideox", "hunyuan_video", "hunyuan_video15"} <= {f.name for f in families()}
    assert family_of_folder(make_small_hunyuan_video15_folder(tmp_path / "15")).name == "hunyuan_video15"
    assert family_of_folder(small_wan_folder).name == "wan"
    assert family_of_folder(small_cogvideox_folder).name == "cogvideox"
    assert family_of_folder(small_hunyuan_video_folder).name == "hunyuan_video"
    assert family_of_folder(BUNDLED_FOLDER).name == "tiny"


def test_a_diffusers_folder_of_a_pipeline_nobody_renders_is_refused_listing_the_families(small_wan_folder, tmp_path):
    folder = tmp_path / "mochi"
    shutil.copytree(small_wan_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "MochiPipeline"}))
    refused_alike(
        folder, "_class_name 'MochiPipeline' is not supported", "wan (", "WanPipeline", "tiny (", "CogVideoXPipeline"
    )


def test_a_known_pipeline_class_holding_a_transformer_its_family_does_not_know_is_refused(small_wan_folder, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(small_wan_folder, folder)
    config = folder / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "SkyReelsV2Transformer3DModel"}))
    refused_alike(folder, str(config), "'SkyReelsV2Transformer3DModel' is not one the wan family renders")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "CogVideoXPipeline"}))
    refused_alike(folder, "'SkyReelsV2Transformer3DModel' is not one the cogvideox family renders")


def test_an_image_conditioned_hunyuan_video_folder_is_refused_by_name(small_hunyuan_video_folder, tmp_path):
    folder = tmp_path / "i2v"
    shutil.copytree(small_hunyuan_video_folder, folder)
    config = folder / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "image_condition_type": "latent_concat"}))
    refused_alike(folder, str(config), "image_condition_type is 'latent_concat'", "HunyuanVideo text-to-video")


def test_a_hunyuan_video_dry_run_refuses_a_negative_prompt(small_hunyuan_video_folder):
    """Its guidance is embedded: no negative pass would read the negative prompt."""
    checks = model_checks(str(small_hunyuan_video_folder))
    checks.check_negative("")
    with pytest.raises(ValueError, match="negative prompt would be ignored"):
        checks.check_negative("blurry")
    assert not checks.classifier_free_guidance


def test_a_card_of_an_unknown_kind_and_a_folder_of_neither_kind_are_refused(tmp_path):
    card = tmp_path / "carded" / "ditfarm_model.json"
    card.parent.mkdir()
    card.write_text(json.dumps({"kind": "sora"}))
    refused_alike(card.parent, "kind 'sora' is not supported", "tiny (")
    (tmp_path / "empty").mkdir()
    refused_alike(tmp_path / "empty", "neither model_index.json", "nor ditfarm_model.json", "wan (")


def test_two_families_may_not_claim_one_pipeline_class():
    class Impostor(Family):
        name = "impostor"
        renders = "nothing"
        pipeline_classes = ("WanPipeline",)

        def check_folder(self, folder):
            return {}

        def load(self, folder, card, options):
            raise AssertionError

        def checks(self, folder, card):
            raise AssertionError

    with pytest.raises(ValueError, match="families wan and impostor both claim WanPipeline"):
        register_family(Impostor)
    assert "impostor" not in {f.name for f in families()}


def test_a_registered_family_is_what_loading_and_the_dry_run_use(tmp_path, monkeypatch):
    """A family registered from outside ditfarm's own modules gets its folders: the registry, not a list of
    names, decides."""
    calls = []

    class Toy(Family):
        name = "toy"
        renders = "a test's toy model"
        pipeline_classes = ("ToyPipeline",)
        defaults = SamplerSettings(4, 16, 16, 3, 1.0)
        cache_defaults = {"bwcache": 0.3}

        def check_folder(self, folder):
            calls.append("check")
            return {"defaults": {"steps": 5}}

        def load(self, folder, card, options):
            calls.append(("load", options.device, options.encode_and_decode))
            return SimpleNamespace(name="a toy pipeline")

        def checks(self, folder, card):
            return ModelChecks(self.sampler_defaults(card), lambda s: None, check_nonempty_prompt)

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    register_family(Toy)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "ToyPipeline"}))
    loaded = load_pipeline(tmp_path, encode_and_decode=False)
    assert loaded.name == "a toy pipeline"
    assert loaded.cache_settings.knob_defaults == {"bwcache": (0.3, "the toy family's default")}
    checks = model_checks(tmp_path)
    assert checks.defaults == SamplerSettings(4, 16, 16, 5, 1.0)  # the card over the family's
    assert checks.cache_settings == loaded.cache_settings
    assert calls == ["check", ("load", "cpu", False), "check"]
