"""Models and the denoising loop: every model is a diffusers pipeline around a diffusers transformer."""
