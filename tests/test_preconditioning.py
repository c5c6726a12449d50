"""The tiny model's preconditioning: the coefficients do what their derivation says, and a preconditioned folder
samples through the shared loop (input scaled, output turned back into a velocity)."""

import pytest
import torch

from ditfarm.pipelines.tiny.preconditioning import PreconditionedFlowMatchScheduler, coefficients

pytestmark = [pytest.mark.unit]


@pytest.mark.parametrize("sigma", [0.02, 0.3, 0.5, 0.8, 0.98])
def test_target_has_unit_variance_and_no_linear_part_left(sigma):
    gen = torch.Generator().manual_seed(0)
    sd = 0.6
    x0 = torch.randn(400_000, generator=gen) * sd
    eps = torch.randn(400_000, generator=gen)
    x = (1 - sigma) * x0 + sigma * eps
    skip, out, c_in = coefficients(torch.tensor(sigma), sd)
    target = ((eps - x0) - skip * x) / out
    assert abs(float(target.var()) - 1.0) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([target, x]))[0, 1])) < 0.01  # nothing left that x predicts
    assert abs(float((c_in * x).var()) - 1.0) < 0.01


def test_end_points():
    skip, out, _ = coefficients(torch.tensor([0.0, 1.0]), 0.6)
    torch.testing.assert_close(skip, torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.6]))


def test_preconditioned_folder_samples_through_the_loop(tmp_path):
    from diffusers import WanTransformer3DModel

    import ditfarm
    from ditfarm.pipelines.tiny.model_config import TRANSFORMER_CONFIG, position_grid
    from ditfarm.pipelines.tiny.text_encoder import WordTextEncoder
    from ditfarm.pipelines.tiny.weights import save_model_folder

    torch.manual_seed(0)
    model = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    save_model_folder(tmp_path / "pre", model, WordTextEncoder(), sigma_data=0.5)
    pipe = ditfarm.load_pipeline(tmp_path / "pre")
    assert isinstance(pipe.scheduler, PreconditionedFlowMatchScheduler) and pipe.scheduler.config.sigma_data == 0.5

    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["hidden_states"]), with_kwargs=True
    )
    after = {}
    try:
        frames = pipe.generate(
            "red circle moving left on blue background",
            seed=3,
            steps=3,
            on_step=lambda i, latents: after.setdefault(i, latents.clone()),
        )
    finally:
        hook.remove()
    assert frames.shape == (8, 32, 32, 3)
    # step 0 is pure noise at sigma 1: in(1) = 1; the grid channels are not scaled
    noise = ditfarm.pipelines.denoise.initial_noise((1, 3, 8, 32, 32), 3, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(seen[0][:, :3], noise)
    # step 1 (calls 2 and 3: cond, uncond) reads the latents after step 0 scaled by in(sigma_1); the grid as is
    _, _, c_in = coefficients(pipe.scheduler.sigmas[1].float(), 0.5)
    assert float(c_in) > 1.05
    torch.testing.assert_close(seen[2][:, :3], after[0] * c_in)
    torch.testing.assert_close(seen[2][:, 3:], position_grid(1, 8, 32, 32))
