"""The contract between the driver and the renderers (in-process or Ray gangs): run settings in, a stored video's
description out.  Both sides import it; it imports neither."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .choices import DTYPE_NAMES

EXIT_TRY_LATER = 75  # EX_TEMPFAIL: nothing is wrong with the job, the cluster could not run it; a rerun resumes
EXIT_LEASE_LOST = 3  # another run took the output over while this one held it (this run was paused or cut off)
EXIT_MANIFEST_FAILED = 4  # the manifest broke partway (a corrupt row group); what was stored before it stays
EXIT_OUTPUT_FAILED = 5  # the output stopped taking writes partway (a full disk, a dead endpoint)


class RunAborted(Exception):
    """The run stopped partway for a reason of the whole run, after some rows were done; ``exit_code`` says which
    (EXIT_MANIFEST_FAILED, EXIT_OUTPUT_FAILED).  What was stored keeps its rows, and a rerun resumes."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


class NoRenderersLeft(Exception):
    """Nothing is left to render on (every gang failed and the cluster has no room for another).  Not a row's
    failure: the job stops, and the rows it did not render are left for a rerun instead of being failed."""


@dataclass(frozen=True)
class RowInputs:
    """What one video is rendered from, as one value from its manifest row to the rank that renders it: its text,
    its seed, the sampler values it sets (``sampler``: num_frames, height, width, steps, guidance_scale(_2); a value
    left out or None is the model's default), and the inputs a family or a feature adds by name (``extra``:
    images, LoRAs).  It crosses to gang ranks as it is."""

    prompt: str
    seed: int
    negative_prompt: str = ""
    sampler: Mapping[str, object] = field(default_factory=dict)
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderSettings:
    """Run-wide choices; a manifest row's own values win over these, and these over the model's defaults."""

    model: str = "tiny"
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None  # the second expert's (Wan2.2 A14B); None: the model's, else guidance_scale
    upscale: int | None = None  # None: the model's (its card: tiny 8, Wan2.1 1)
    fps: int | None = None  # None: the model's (tiny 8, Wan2.1 16)
    device: str = "cpu"
    dtype: str = "auto"  # pipelines.precision: auto (bf16 on CUDA, float32 on CPU), bf16, fp16, fp32
    offload_text_encoder: bool = False  # the text encoder waits in host memory between prompts
    offload_experts: bool = False  # a two-expert model's idle expert waits in host memory
    image: str | None = None  # the first frame (a path or s3:// URI) of every row that names none
    last_image: str | None = None  # the last frame, likewise
    lora: str | None = None  # a diffusers-format LoRA (a path or s3:// URI) for every row that names none
    lora_scale: float = 1.0  # its scale, for every row that names none
    quantize: str | None = None  # "int8" or "fp8": the transformer blocks' weights through torchao; None: as loaded
    compile: str | None = None  # torch.compile backend for the transformer's repeated blocks ("inductor"); None: eager
    cfg_parallel: bool = False  # a gang's two halves run the cond and uncond passes at once (sp = 2 x Ulysses)
    flush_every: int = 32  # a results part is written after this many rows ...
    flush_seconds: float = 60.0  # ... or this long after the oldest unwritten row, whichever comes first
    cache: str = "none"  # block-cache policy (ditfarm.cache.presets.POLICIES)
    cache_knob: float | None = None  # the policy's speed/fidelity knob (None: its default)
    profile: str | None = None  # cache profile JSON (None: the model's shipped profile, if any)
    sp: int = 1  # sequence-parallel ranks per video (a gang)
    gangs: int | str = 0  # Ray gangs side by side; 0: in this process without Ray (sp must be 1); "auto": as many
    # as the cluster holds
    collective_timeout_s: float = 300.0  # every collective of a gang gives up after this long
    start_timeout_s: float = 600.0  # the first gangs wait this long for a node with room (one an autoscaler adds)
    retries: int = 2  # a video whose gang fails is rendered again on a fresh gang up to this many more times
    video_timeout_s: float | None = None  # a video's loop fails as its row past this; None: scaled to its size
    threads: int | None = None  # torch CPU threads per render (gang rank: also its Ray CPUs); None: what it is given
    max_steps: int = 1000  # no row may ask for more steps (a typo of 10**9 would allocate its schedule and hang)
    overlap: bool = True  # a video's fixed costs (text encoding, decoding, mp4 encoding, storing) run beside the
    # next video's denoising loop; False: between loops (a GPU without memory for two videos at once)

    def validate(self) -> None:
        if not isinstance(self.sp, int) or self.sp < 1:
            raise ValueError(f"sp must be a positive integer, got {self.sp!r}")
        if self.gangs != "auto" and (not isinstance(self.gangs, int) or self.gangs < 0):
            raise ValueError(f"gangs must be a non-negative integer or 'auto', got {self.gangs!r}")
        if self.cfg_parallel and (self.sp < 2 or self.sp % 2):
            raise ValueError(f"cfg_parallel splits a gang in two halves: sp must be even and >= 2, got {self.sp}")
        if self.sp > 1 and self.gangs == 0:
            raise ValueError("sequence parallelism (sp > 1) runs on Ray gangs: give gangs >= 1")
        for name in (
            "upscale",
            "fps",
            "num_frames",
            "height",
            "width",
            "steps",
            "threads",
        ):  # a bad run-wide value refuses the
            value = getattr(self, name)  # run, not every row
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer (or None: the model's), got {value!r}")
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        check_step_cap(self.steps, self.max_steps)
        for name in ("guidance_scale", "guidance_scale_2"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:  # NaN and infinities too
                raise ValueError(f"{name} must be a finite number in [0, 100], got {value!r}")

        if not isinstance(self.lora_scale, (int, float)) or not -100 <= self.lora_scale <= 100:
            raise ValueError(f"lora_scale must be a finite number in [-100, 100], got {self.lora_scale!r}")
        if self.lora is not None and (not isinstance(self.lora, str) or not self.lora.strip()):
            raise ValueError(f"lora must be a path or an s3:// URI, got {self.lora!r}")

        if self.quantize not in (None, "int8", "fp8"):
            raise ValueError(f"unknown quantization {self.quantize!r}; choose int8 or fp8 (or none)")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPE_NAMES)}")
        if not isinstance(self.flush_every, int) or self.flush_every < 1:
            raise ValueError(f"flush_every must be a positive integer, got {self.flush_every!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {self.retries!r}")
        if not self.start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be positive, got {self.start_timeout_s!r}")
        if self.video_timeout_s is not None and not 0 < self.video_timeout_s < float("inf"):
            raise ValueError(f"video_timeout_s must be a positive number of seconds, got {self.video_timeout_s!r}")
        if not self.flush_seconds > 0:
            raise ValueError(f"flush_seconds must be positive, got {self.flush_seconds!r}")

    def check_guidance_split(self, classifier_free_guidance: bool) -> None:
        """CFG parallelism splits the two guidance passes; a model with its guidance embedded runs one, so a gang's
        second half would only repeat the first."""
        if self.cfg_parallel and not classifier_free_guidance:
            raise ValueError(
                f"--cfg-parallel: {self.model} runs no classifier-free guidance (its guidance is embedded, one "
                "pass per step), so there is no second pass to split; use --sp for the whole gang instead"
            )


def check_step_cap(steps: int | None, max_steps: int) -> None:
    """A run's or a row's steps within the run's cap: a schedule of 10**9 steps allocates gigabytes before the
    first step and would hold the job for years."""
    if isinstance(steps, int) and steps > max_steps:
        raise ValueError(f"steps {steps} is more than this run's cap of {max_steps} (--max-steps)")


@dataclass
class RenderedVideo:
    """A video that is already stored at ``uri`` (by whichever process decoded it), and what it was rendered
    with.  Frames never travel back to the driver."""

    uri: str
    seed: int
    num_frames: int
    height: int
    width: int
    steps: int
    model: str
    skipped_fraction: float | None = None
    attempts: int = 1  # renders it took: 1, plus one per gang that failed under it
    phases: VideoPhases | None = None  # where its time went, and rank 0's peak accelerator memory
    video_bytes: int | None = None  # the stored mp4's size, read back from the storage after publishing
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None  # the second expert's, where the model has two
    fps: int | None = None  # the mp4's frame rate and upscale: part of what the stored video shows
    upscale: int | None = None
    video_digest: str | None = None  # the stored bytes' digest (StoredVideo.digest) and, on a local disk, their time
    video_mtime_ns: int | None = None
    cache_knob: float | None = None  # the knob the renderer's cache used, and where it came from (KnobChoice)
    cache_knob_source: str | None = None

    @classmethod
    def of(
        cls,
        uri: str,
        video_bytes: int | None,
        seed: int,
        sampler: dict,
        model: str,
        skipped_fraction: float | None,
        phases: VideoPhases | None,
        attempts: int = 1,
        video_format: tuple[int, int] | None = None,
        digest: str | None = None,
        mtime_ns: int | None = None,
        knob: tuple[float | None, str | None] = (None, None),
    ) -> RenderedVideo:
        """The record of a stored video, the same whether it was rendered in the driver's process or by a gang
        (``sampler``: the video's sampler settings as a dict; ``video_format``: the mp4's (fps, upscale))."""
        fps, upscale = video_format or (None, None)
        return cls(
            uri,
            seed,
            sampler["num_frames"],
            sampler["height"],
            sampler["width"],
            sampler["steps"],
            model,
            skipped_fraction,
            attempts,
            phases=phases,
            video_bytes=video_bytes,
            guidance_scale=sampler.get("guidance_scale"),
            guidance_scale_2=sampler.get("guidance_scale_2"),
            fps=fps,
            upscale=upscale,
            video_digest=digest,
            video_mtime_ns=mtime_ns,
            cache_knob=knob[0],
            cache_knob_source=knob[1],
        )


@dataclass(frozen=True)
class VideoPhases:
    """Seconds a video spent in text encoding, denoising, decoding and storing (on rank 0), and the most
    accelerator memory rank 0 held during its loop (None on the CPU).  Results columns of the same names."""

    text_seconds: float | None = None
    denoise_seconds: float | None = None
    decode_seconds: float | None = None
    peak_gpu_bytes: int | None = None
    store_seconds: float | None = None  # encoding the mp4, verifying it and publishing it

    def as_row(self) -> dict:
        return {
            "text_seconds": self.text_seconds,
            "denoise_seconds": self.denoise_seconds,
            "decode_seconds": self.decode_seconds,
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "store_seconds": self.store_seconds,
        }

    def own_seconds(self) -> float | None:
        """The video's own cost: its phases added up, not the time it also spent waiting for a loop or a
        publisher busy with another video (None when no phase was measured)."""
        parts = [
            v
            for v in (self.text_seconds, self.denoise_seconds, self.decode_seconds, self.store_seconds)
            if v is not None
        ]
        return round(sum(parts), 4) if parts else None
