"""A broken model folder fails at load, before any rendering, with an error that names the file and the problem."""

import json
import shutil

import pytest

from ditfarm.commands.cli import main as cli
from ditfarm.pipelines.family import family_of_folder
from ditfarm.pipelines.folder_checks import ModelFolderError
from ditfarm.pipelines.loading import load_pipeline

pytestmark = [pytest.mark.unit]


@pytest.fixture
def folder(small_wan_folder, tmp_path):
    copy = tmp_path / "wan"
    shutil.copytree(small_wan_folder, copy)
    return copy


def test_a_whole_small_folder_passes(small_wan_folder):
    family = family_of_folder(small_wan_folder)
    assert family.name == "wan" and family.check_folder(small_wan_folder)["kind"] == "wan"


def test_a_missing_component(folder):
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelFolderError, match=r"wan/vae: missing \(model_index.json names a vae component\)"):
        load_pipeline(folder)


def test_a_component_the_index_does_not_name(folder):
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match=r"model_index.json: names no 'text_encoder' component"):
        load_pipeline(folder)


def test_missing_weights(folder):
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"transformer: no weights \(diffusion_pytorch_model.safetensors"):
        load_pipeline(folder)


def test_a_config_that_does_not_match_the_weights(folder):
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["attention_head_dim"] = 32  # the weights were made with 16
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelFolderError) as err:
        load_pipeline(folder)
    message = str(err.value)
    assert "transformer/config.json does not match the weights" in message and "shape mismatch" in message
    assert "is [32, 16, 1, 2, 2] in diffusion_pytorch_model.safetensors but [64, 16, 1, 2, 2] by the config" in message


def test_more_layers_in_the_config_than_in_the_weights(folder):
    config_path = folder / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_layers"] = 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(
        ModelFolderError,
        match=r"text_encoder/config.json does not match .* are not in the weights "
        r"\(e.g. encoder.block.1",
    ):
        load_pipeline(folder)


def test_truncated_safetensors(folder):
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelFolderError,
        match=r"vae/diffusion_pytorch_model.safetensors: truncated: its header "
        r"promises \d+ bytes, the file holds \d+",
    ):
        load_pipeline(folder)


def test_a_missing_shard_of_a_sharded_component(folder):
    (folder / "text_encoder" / "model.safetensors").rename(folder / "text_encoder" / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "shared.weight": "model-00001-of-00002.safetensors",
            "encoder.final_layer_norm.weight": "model-00002-of-00002.safetensors",
        }
    }
    (folder / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ModelFolderError,
        match=r"model-00002-of-00002.safetensors: missing \(named by "
        r"model.safetensors.index.json\)",
    ):
        load_pipeline(folder)


def test_a_config_that_is_not_json(folder):
    (folder / "vae" / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match=r"vae/config.json: not valid JSON"):
        load_pipeline(folder)


def test_the_cli_refuses_a_bad_folder_before_rendering(folder, tmp_path, capsys):
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 4)
    out = tmp_path / "out"
    assert cli(["render", "--prompt", "a red cat", "--out", str(out), "--model", str(folder), "--no-progress"]) == 2
    assert "diffusion_pytorch_model.safetensors: truncated" in capsys.readouterr().err
    assert not (out / "videos").exists() or not any((out / "videos").iterdir())


def test_a_profile_from_another_model_is_refused_at_load(small_wan_folder, tmp_path, capsys):
    """tiny's shipped profile given to a Wan folder: refused when the renderer starts, naming the profile file."""
    from ditfarm.pipelines.tiny.weights import BUNDLED_FOLDER

    profile = BUNDLED_FOLDER / "cache_profile.json"
    code = cli(
        [
            "render",
            "--prompt",
            "a red cat",
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(small_wan_folder),
            "--cache",
            "adaptive",
            "--profile",
            str(profile),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(profile) in err and "was measured on WanTransformer3DModel with 8 blocks" in err


@pytest.mark.parametrize(
    "fields, named",
    [
        (
            {"transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875},
            ["transformer_2", "missing (model_index.json names a transformer_2 component)"],
        ),
        (
            {"transformer_2": ["diffusers", "WanTransformer3DModel"]},
            ["names a second expert (transformer_2) but no boundary_ratio"],
        ),
        ({"boundary_ratio": 0.9}, ["boundary_ratio=0.9 switches to a second expert", "names no transformer_2"]),
        ({"boundary_ratio": "high"}, ["boundary_ratio=", "switches to a second expert"]),
        (
            {"image_encoder": ["transformers", "CLIPVisionModel"]},
            ["image_encoder=", "an image encoder this kind of Wan folder has no use for"],
        ),
        ({"some_future_field": 3}, ["some_future_field=3 (a field ditfarm does not read)"]),
        (
            {"_class_name": "WanImageToVideoPipeline"},
            ["an image-to-video folder with one transformer needs its image_encoder", "ditfarm renders"],
        ),
        (
            {"_class_name": "WanVACEPipeline"},
            ["_class_name 'WanVACEPipeline' is not supported", "ditfarm renders", "WanImageToVideoPipeline"],
        ),
    ],
)
def test_a_wan22_or_other_folder_ditfarm_would_render_wrong_is_refused_by_name(folder, tmp_path, capsys, fields, named):
    """A half-made two-expert folder, image-to-video and unknown fields: the load, the dry run and the CLI refuse
    them (exit 2), naming each field, before anything renders."""
    from ditfarm.pipelines.model_checks import model_checks

    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **fields}))
    for load in (load_pipeline, model_checks):
        with pytest.raises(ModelFolderError) as refused:
            load(str(folder))
        assert all(n in str(refused.value) for n in named), str(refused.value)
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, manifest = tmp_path / "out", tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "prompt": ["a red cat"]}), manifest)
    for dry in ([], ["--dry-run"]):
        assert cli(["render", str(manifest), "--out", str(out), "--model", str(folder), "--no-progress", *dry]) == 2
        assert named[0] in capsys.readouterr().err
    assert not (out / "videos").exists() or not any((out / "videos").iterdir())


def test_unset_wan22_fields_as_diffusers_writes_them_for_wan21_are_accepted(folder):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["transformer_2"] == [None, None] and index["boundary_ratio"] is None  # diffusers' own save
    assert not index["expand_timesteps"]
    family_of_folder(folder).check_folder(folder)
