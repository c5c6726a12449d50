"""--quantize: the transformer blocks' weights through torchao (int8 on any device; fp8 refused where the device
cannot compute in it), marked in the model's identity, with LoRAs loading on top.  Fidelity figures against the
unquantized renders: BENCHMARKS.md (benchmarks/quantize_fidelity.py)."""

import pytest

from ditfarm.cache.metrics import psnr
from ditfarm.types import RenderSettings
from ditfarm.worker.model import load_model

pytestmark = [pytest.mark.slow, pytest.mark.unit]

PROMPT = "red circle moving left on blue background"


def test_int8_quantizes_the_blocks_alone_marks_the_model_and_renders_close_to_float(tmp_path):
    from ditfarm.cache.profile import model_identity
    from ditfarm.pipelines.lora import make_random_lora

    plain = load_model(RenderSettings()).pipe
    pipe = load_model(RenderSettings(quantize="int8")).pipe
    transformer = pipe.transformer
    assert "Int8" in type(transformer.blocks[0].attn1.to_q.weight).__name__
    assert "Int8" in type(transformer.blocks[-1].ffn.net[2].weight).__name__
    assert type(transformer.proj_out.weight).__name__ == "Parameter"  # the head keeps its precision
    assert model_identity(transformer)["quantization"] == "int8"
    reference = plain.generate(PROMPT, seed=1, steps=12)
    quantized = pipe.generate(PROMPT, seed=1, steps=12)
    assert 25 <= psnr(reference, quantized) < 60  # close, and not the float weights
    lora = str(make_random_lora(plain.transformer, tmp_path / "style.safetensors", std=0.1))
    styled = pipe.generate(PROMPT, seed=1, steps=12, lora=lora)  # a LoRA loads on top of int8 blocks
    assert psnr(styled, quantized) < 40 and psnr(styled, plain.generate(PROMPT, seed=1, steps=12, lora=lora)) >= 25


def test_fp8_is_refused_by_name_where_the_device_cannot_compute_in_it():
    from ditfarm.jobs.run_checks import check_run

    with pytest.raises(ValueError, match="--quantize fp8 needs a CUDA GPU with FP8"):
        check_run(RenderSettings(quantize="fp8"))
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        RenderSettings(quantize="int4").validate()


def test_a_profile_measured_on_float_weights_is_not_the_quantized_models():
    from ditfarm.cache import ProfileMismatchError

    with pytest.raises(ProfileMismatchError, match="int8 weights"):
        load_model(RenderSettings(quantize="int8", cache="profiling"))
