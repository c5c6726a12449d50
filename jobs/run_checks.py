"""What a run refuses before anything renders, decided the same way by `ditfarm render --dry-run` and by the run.

A setting that every row would fail (a device this torch cannot use, a missing or uncalibrated cache profile, a
step count the cache was not calibrated for) stops the run at once with exit 2 and one message, instead of failing
a million rows one by one; the dry run says the same.  Per-row overrides (steps, sizes) are checked row by row by
``check_row``, with the messages the loaded model and cache would give.

A gang run's model and profile live where its ranks run; the driver checks them only where it can see them (the
built-in model, a folder on this machine), and never fetches an ``s3://`` model just to check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..types import RenderSettings
from ..uris import is_s3


@dataclass
class RunChecks:
    model: object | None  # pipelines.checks.ModelChecks; None where the driver cannot see the model
    policy: object | None  # the cache policy the ranks will run (its calibration), or None (no cache, not checked)
    knob: object | None = None  # the cache's KnobChoice as the model's card says it; None where it cannot be read

    def check_row(self, task, settings: RenderSettings, inputs_exist: bool = False):
        """The row's sampler settings, or ValueError naming what the model or the cache refuses.
        ``inputs_exist`` (the dry run): each image the row names exists, by its metadata alone (one HEAD per
        object, nothing downloaded); the run itself leaves reading them to the rank that encodes the row."""
        from .manifest import row_images, row_lora, sampler_overrides  # deferred: pyarrow

        overrides = sampler_overrides(task, settings)
        if inputs_exist:
            check_images_exist(row_images(task, settings))
            check_lora_exists(row_lora(task, settings)["lora"])
        if self.model is None:
            return None
        self.model.check_prompt(task.prompt)
        if task.negative_prompt:
            self.model.check_negative(task.negative_prompt)
        self.model.check_row_images(row_images(task, settings))
        resolved = self.model.settings(**overrides)
        if self.policy is not None:
            self.policy.check_steps(resolved.steps)
        return resolved


def check_images_exist(images: dict) -> None:
    """ValueError naming the first image of a row that does not exist or cannot be read."""
    from ..storage.inputs import StorageError, input_file_size  # deferred: pyarrow

    for name, source in images.items():
        if source is None:
            continue
        try:
            input_file_size(source)
        except StorageError as err:
            raise ValueError(f"{name} {err}") from None


def check_lora_exists(lora: str) -> None:
    """ValueError naming a row's LoRA that does not exist: a local file or folder, or an ``s3://`` object by its
    metadata (a folder prefix is read by the rank that loads it)."""
    from ..storage.inputs import StorageError, input_file_size  # deferred: pyarrow

    if not lora:
        return
    if not is_s3(lora):
        if not Path(lora).exists():
            raise ValueError(f"LoRA {lora} does not exist")
        return
    if lora.endswith(".safetensors"):
        try:
            input_file_size(lora)
        except StorageError as err:
            raise ValueError(f"LoRA {err}") from None


def check_device(device: str) -> None:
    """Refuse a device this process's torch cannot use, naming what it has."""
    import torch  # deferred: torch

    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device torch knows: {err}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"--device {device}: no CUDA device is usable here (torch {torch.__version__}, {build}); "
                "render with --device cpu, or install a CUDA torch on a machine with a GPU"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"--device {device}: ditfarm renders on cpu or cuda")


def model_is_visible(settings: RenderSettings) -> bool:
    """Whether this process can read the model's configs without fetching it: always in process (it loads the
    model anyway); on gangs, the built-in model and folders present on this machine."""
    if settings.gangs == 0:
        return True
    return not is_s3(str(settings.model)) and (settings.model == "tiny" or Path(settings.model).exists())


def check_run(settings: RenderSettings, read_model: bool = False) -> RunChecks:
    """Everything the run as a whole would refuse, raised as ValueError (exit 2); the checks for its rows.
    ``read_model``: read the model's configs wherever it is (the dry run, which exists to check every row)."""
    from ..cache.policies import POLICY_FOR_CONFIG  # deferred: torch
    from ..cache.presets import build_config, choose_knob, resolve_knob  # deferred: torch

    settings.validate()
    resolve_knob(settings.cache, settings.cache_knob)
    if settings.gangs == 0:  # a gang's ranks run on other nodes, whose devices the driver cannot see
        check_device(settings.device)
        if settings.quantize:
            from ..pipelines.quantize import check_quantization  # deferred: torch

            check_quantization(settings.quantize, settings.device)
    if not read_model and not model_is_visible(settings):
        return RunChecks(None, None)
    from ..pipelines.model_checks import model_checks  # deferred: torch

    model = model_checks(settings.model)
    settings.check_guidance_split(model.classifier_free_guidance)
    config = build_config(
        settings.cache, settings.cache_knob, settings.profile or model.cache_profile, model.cache_settings
    )
    policy = POLICY_FOR_CONFIG[type(config)](config) if config is not None else None
    if policy is not None:  # the run's own step count: every row without steps of its own would fail
        policy.check_steps(settings.steps or model.defaults.steps)
    return RunChecks(model, policy, choose_knob(settings.cache, settings.cache_knob, model.cache_settings))


def visible_model_checks(settings: RenderSettings):
    """The model's checks where this process can read its configs without fetching it, else None: what a run
    with a renderer of its own (checked by its caller) still needs to know the model's defaults."""
    if not model_is_visible(settings):
        return None
    from ..pipelines.model_checks import model_checks  # deferred: torch

    try:
        return model_checks(settings.model)
    except (ValueError, OSError):  # the renderer's own load says what is wrong with the model
        return None
