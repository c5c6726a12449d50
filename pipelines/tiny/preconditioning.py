"""Preconditioning of the ``tiny`` transformer (EDM's c_skip / c_out / c_in, worked out for rectified flow).

Sampling wants the velocity v = eps - x0 at x_s = (1 - s) x0 + s eps.  Asked for v directly, a small pixel-space
model must copy the noise of its input to its output, which at high noise is almost all of v; the first,
un-preconditioned 1 M parameter ``tiny`` did this badly (at s = 0.98 its error was a third above that of the plain
prior mean of the data), and the first steps of sampling, where layout and direction of motion are decided,
suffered.  So, as EDM does for x0, the transformer's output F only carries what cannot be had linearly from its
input:

    v = skip(s) * x_s + out(s) * F(in(s) * x_s)

with, for data of per-pixel variance sd^2 independent of the noise,

    var_x(s) = (1 - s)^2 sd^2 + s^2                             variance of x_s
    skip(s)  = (s - (1 - s) sd^2) / var_x(s)                     the best linear predictor of v from x_s
    out(s)   = sqrt(1 + sd^2 - (s - (1 - s) sd^2)^2 / var_x(s))  the spread of what remains, so F's target has unit
                                                                 variance at every s
    in(s)    = 1 / sqrt(var_x(s))                                unit-variance input

skip goes from -1 at s = 0 (v ~ -x0 = -x_s) to 1 at s = 1 (v ~ eps = x_s).  Training regresses F on
(v - skip x_s) / out.  At sampling time the scheduler below applies in() and turns F back into v, so the shared
denoising loop, classifier-free guidance (affine in F, hence the same in v) and the block caches are unchanged.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import register_to_config


def coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(skip, out, in) at noise level ``sigma`` (any shape; broadcast against the video yourself)."""
    sd2 = sigma_data**2
    var_x = (1 - sigma) ** 2 * sd2 + sigma**2
    cov = sigma - (1 - sigma) * sd2
    skip = cov / var_x
    out = torch.sqrt((1 + sd2 - cov**2 / var_x).clamp_min(1e-12))
    return skip, out, torch.rsqrt(var_x)


class PreconditionedFlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler scheduler for a model trained with the preconditioning above."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, sigma_data: float = 0.6):
        super().__init__(num_train_timesteps=num_train_timesteps, shift=shift)

    def _sigma(self, timestep, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32, device=like.device).reshape(-1)[:1]
        return (t / self.config.num_train_timesteps).reshape(1, 1, 1, 1, 1)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        _, _, c_in = coefficients(self._sigma(timestep, sample), self.config.sigma_data)
        return sample * c_in.to(sample.dtype)

    def velocity(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """The velocity v = skip x + out F that the transformer's output F stands for at this timestep."""
        skip, out, _ = coefficients(self._sigma(timestep, sample), self.config.sigma_data)
        return skip * sample.float() + out * model_output.float()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, **kwargs):
        return super().step(self.velocity(model_output, timestep, sample), timestep, sample, *args, **kwargs)
