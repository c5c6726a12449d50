"""The architecture of ``tiny``: a diffusers WanTransformer3DModel in pixel space (3 channels in and out, no VAE).

Patch (1, 4, 4) turns an 8x32x32 video into 512 tokens; 8 blocks of width 128 (2.3 M parameters, trained on a GPU)
render a video in seconds on a laptop CPU while still being the same module tree as Wan2.1, so every hook written
against ``tiny`` attaches to the real model unchanged.  (Until the GPU run, tiny was 6 blocks of width 96 trained on
two CPU cores; see training/TRAINING.md.)

The transformer reads 3 + 3 channels: the noisy pixels and a fixed (t, y, x) coordinate grid, concatenated the way
diffusers' Wan image-to-video pipeline concatenates its condition latents.  Wan's only positional signal is RoPE,
which is relative: on a plain background nothing tells the model where "left" or "the first frame" is, so it
cannot learn that "moving right" starts on the left.  Real footage carries that in its content; our synthetic
scenes do not, hence the grid.
"""

import torch

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=6,  # 3 pixel channels + the POSITION_CHANNELS grid
    out_channels=3,
    text_dim=32,
    freq_dim=64,
    ffn_dim=512,
    num_layers=8,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=256,
)
TEXT_MAX_TOKENS = 16
DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH = 8, 32, 32
POSITION_CHANNELS = 3


def position_grid(batch: int, frames: int, height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(batch, 3, frames, height, width) coordinates t, y, x, each spanning [-1, 1] whatever the size."""
    axes = [
        torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device)
        if n > 1
        else torch.zeros(1, dtype=dtype, device=device)
        for n in (frames, height, width)
    ]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.unsqueeze(0).expand(batch, -1, -1, -1, -1)
