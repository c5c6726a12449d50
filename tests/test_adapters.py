"""Model adapters: every family's insides are known to its adapter alone.  The layers that cache, shard and
schedule (cache/, cluster/, worker/, jobs/) name no block, unit, attention projection or rotary embedding of any
model; they ask ``adapter_for(transformer)``."""

import ast
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from ditfarm.pipelines.adapters import UNIT_ROLES, TransformerAdapter, WanAdapter, adapter_for, register_adapter

pytestmark = [pytest.mark.unit]

ROOT = Path(__file__).resolve().parents[1]
# Module attributes of diffusers' Wan (and of DiT blocks in general) that only an adapter may name.
MODEL_INTERNALS = {
    "attn1",
    "attn2",
    "ffn",
    "blocks",
    "rope",
    "rotary_emb",
    "patch_embedding",
    "condition_embedder",
    "scale_shift_table",
    "proj_out",
    "norm_out",
    "norm_q",
    "norm_k",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
}
UNIT_MODULE_NAMES = {"attn1", "attn2", "ffn"}  # also as strings (getattr)


def internals_named(path: Path) -> list[str]:
    """Where ``path`` names a model internal: an attribute or a keyword argument of that name, a string naming a
    unit module, or any name with "rotary" in it.  A cache profile's own per-block records (``profile.blocks``,
    ``self.blocks`` inside ``CacheProfile``) and an adapter's ``blocks()`` are not a model's."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    profile_nodes = {
        id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "CacheProfile" for n in ast.walk(c)
    }
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and node.attr in MODEL_INTERNALS:
            owner = ast.unparse(node.value)
            profile_own = owner == "self" and id(node) in profile_nodes
            if node.attr == "blocks" and (owner.endswith("profile") or "adapter" in owner or profile_own):
                continue
            name = node.attr
        elif isinstance(node, ast.Constant) and node.value in UNIT_MODULE_NAMES:
            name = node.value
        elif isinstance(node, (ast.Name, ast.arg)) and "rotary" in (getattr(node, "id", None) or node.arg or ""):
            name = getattr(node, "id", None) or node.arg
        if name is not None:
            found.append((node.lineno, f"{path.relative_to(ROOT)}:{node.lineno}: {name}"))
    return [hit for _, hit in sorted(found)]


def test_caches_gangs_workers_and_jobs_name_no_model_internals():
    files = [p for folder in ("cache", "cluster", "worker", "jobs") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 40
    assert [hit for path in files for hit in internals_named(path)] == []


def test_the_check_finds_a_model_internal(tmp_path, monkeypatch):
    """Not vacuous: the same walk flags the code this layout replaced."""
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f(transformer, rotary_emb):\n    for block in transformer.blocks:\n"
        "        block.attn1.set_processor(None)\n    return profile.blocks, getattr(block, 'ffn')\n"
    )
    assert internals_named(probe) == [
        "probe.py:1: rotary_emb",
        "probe.py:2: blocks",
        "probe.py:3: attn1",
        "probe.py:4: ffn",
    ]


def small_wan(**config) -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(
        **{
            "patch_size": (1, 2, 2),
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "in_channels": 4,
            "out_channels": 4,
            "text_dim": 16,
            "freq_dim": 16,
            "ffn_dim": 32,
            "num_layers": 3,
            "rope_max_seq_len": 32,
            **config,
        }
    )


def test_wan_and_tiny_transformers_get_the_wan_adapter(tiny_pipe):
    for transformer in (small_wan(), tiny_pipe.transformer):
        adapter = adapter_for(transformer)
        assert isinstance(adapter, WanAdapter)
        assert adapter.blocks() == list(transformer.blocks)
        units = adapter.unit_modules()
        assert len(units) == len(UNIT_ROLES) * len(transformer.blocks)
        assert units[:3] == [transformer.blocks[0].attn1, transformer.blocks[0].attn2, transformer.blocks[0].ffn]
        assert adapter.self_attentions() == [b.attn1 for b in transformer.blocks]
    wan = adapter_for(small_wan())
    assert wan.heads() == 2 and wan.patch_size() == (1, 2, 2)
    assert wan.token_count((1, 4, 3, 8, 8)) == 3 * 4 * 4
    assert wan.identity()["num_blocks"] == 3 and wan.identity() != adapter_for(small_wan(num_layers=2)).identity()


def test_the_identity_tells_apart_what_must_not_share_a_profile(tiny_pipe):
    """Two experts of one architecture, a LoRA'd or a quantized transformer: each is its own model to a cache
    profile, refused by name; a profile recorded before these marks existed still fits the plain transformer."""
    import copy

    from ditfarm.cache import CacheProfile, ProfileMismatchError, model_identity
    from ditfarm.pipelines.adapters import mark_identity, same_model
    from ditfarm.pipelines.tiny.weights import BUNDLED_FOLDER

    plain = tiny_pipe.transformer
    shipped = CacheProfile.load(BUNDLED_FOLDER / "cache_profile.json")
    assert set(shipped.model) == {"class", "num_blocks", "config_hash"}  # written before the marks
    shipped.check_model(plain)
    for marks, named in (
        ({"component": "transformer_2"}, "component transformer_2"),
        ({"loras": [["s3://loras/style.safetensors", 0.8]]}, "LoRAs s3://loras/style.safetensors x0.8"),
        ({"quantization": "int8"}, "int8 weights"),
    ):
        other = copy.deepcopy(plain)
        mark_identity(other, **marks)
        assert not same_model(model_identity(plain), model_identity(other))
        with pytest.raises(ProfileMismatchError, match=named):
            shipped.check_model(other)
        measured = copy.deepcopy(shipped)
        measured.model = model_identity(other)
        measured.check_model(other)
        with pytest.raises(ProfileMismatchError, match=f"measured on .*{named}.*but this model is"):
            measured.check_model(plain)
    with pytest.raises(ValueError, match="not an identity mark: expert"):
        mark_identity(plain, expert=2)


def test_a_transformer_without_an_adapter_is_refused_by_name():
    from ditfarm import cache

    class Unknown(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="no adapter for Unknown"):
        adapter_for(Unknown())
    with pytest.raises(TypeError, match="no adapter for Unknown"):
        cache.enable(Unknown(), cache.BWCacheConfig(threshold=0.1))


def test_a_new_family_is_one_registered_adapter():
    """A model with other module names: registering its adapter is all the unit cache needs to hook it."""
    from ditfarm.cache.units import unit_modules

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.cross, self.mlp = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    class OtherDiT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(), Block()])

    @register_adapter(OtherDiT)
    class OtherAdapter(TransformerAdapter):
        family = "other"

        def blocks(self):
            return list(self.transformer.layers)

        def units(self, block):
            return {"self_attention": block.attn, "cross_attention": block.cross, "feed_forward": block.mlp}

    model = OtherDiT()
    assert isinstance(adapter_for(model), OtherAdapter)
    assert unit_modules(model) == [m for layer in model.layers for m in (layer.attn, layer.cross, layer.mlp)]


def test_a_family_without_sequence_parallelism_says_so_by_name():
    class Plain(torch.nn.Module):
        pass

    @register_adapter(Plain)
    class PlainAdapter(TransformerAdapter):
        family = "plain"

        def blocks(self):
            return []

        def units(self, block):
            return {}

    with pytest.raises(TypeError, match="the plain model adapter does not say how its token sequence is split"):
        adapter_for(Plain()).sharded_forward(0, 2, lambda x: x)
