"""``ditfarm train-router``: train HarmoniCa's router on a model, resumably.

Step-wise denoising training (SDT), as in the released code, image-free.  Each iteration samples one video from
noise with a training prompt.  Step 0 computes every unit (its logit is fixed at 5, not trained) and fills the
caches.  At every later step t, on the same x_t:

- teacher: every unit computed, caches untouched -> eps_T (CFG-combined);
- student: each unit outputs r fresh + (1 - r) cached with r = sigmoid(P[t, u]), and refreshes its cache with the
  fresh output where r > tau_train (0.1) -> eps_S (CFG-combined).

The loss of step t is the image error proxy objective, L_t = lambda(t) mean (eps_T - eps_S)^2 / mean eps_T^2 +
beta mean_u r[t, u], and the sampler steps on eps_S (detached), so later steps see the caches and the trajectory
that the router's own earlier decisions produced, as at inference.  Gradients reach only P (AdamW); after each
iteration P is clamped to [-5, 5].

lambda(t) (IEPO) is refreshed every ``lambda_every`` iterations: from fixed noise, the final latents with the router
softly on for the steps >= i, against those with it on for the steps > i; lambda(i) is the mean squared difference,
the final video's error that caching at step i adds given the caching after it (T samplings per refresh).  Two
deviations, both to make beta mean the same on any model: the MSE term is relative to the teacher's mean square,
and lambda is normalised to mean 1.  And one so that a short run does not collapse: lambda is floored at
``lambda_floor`` (0.1) of its mean.  Measured with the router of the moment, lambda is near 0 at most steps (the
final video's error sits in a few of them), and a router trained against that reuses everything there until the
next refresh; on tiny that drove the mean r to 0.08 and the per-step error to 0.7 within 26 iterations.

One rollout computes each transformer call three times (teacher, student, and the student's backward), so an
iteration costs about three videos; tiny at 30 steps trains in minutes on two CPU cores.  A checkpoint
(``run_dir/checkpoint.pt``) after every ``save_every`` iterations makes a rerun continue where the last stopped.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..cache.policies.harmonica import ROUTER_FILE, Router
from ..cache.profile import model_identity
from ..cache.units import unit_modules
from ..pipelines.denoise import initial_noise, reset_caches, seeded_generator
from ..pipelines.loading import load_pipeline
from ..pipelines.tiny.scenes import sample_scene_spec
from .lora_options import apply_lora
from .settings import RouterTraining

HOOK = "ditfarm_router_training"
FIXED_LOGIT = 5.0


class _Branch(BaseState):
    def __init__(self, num_units: int):
        super().__init__()
        self.num_units = num_units
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * self.num_units


class _BlendHook(ModelHook):
    """On one unit: the teacher's plain output, or the student's blend of fresh and cached."""

    _is_stateful = True

    def __init__(self, blender: _Blender, index: int):
        super().__init__()
        self.blender = blender
        self.state_manager = blender.state_manager
        self.index = index

    def new_forward(self, module, *args, **kwargs):
        fresh = self.fn_ref.original_forward(*args, **kwargs)
        weights = self.blender.weights
        if weights is None:  # teacher
            return fresh
        state = self.state_manager.get_state()
        u, cached = self.index, state.outputs[self.index]
        if cached is None:
            state.outputs[u] = fresh.detach()
            return fresh
        r = weights[u]
        if float(r.detach()) > self.blender.tau_train:
            state.outputs[u] = fresh.detach()
        return r * fresh + (1 - r) * cached

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class _Blender:
    def __init__(self, transformer, tau_train: float):
        self.transformer = transformer
        self.units = unit_modules(transformer)
        self.state_manager = StateManager(_Branch, (len(self.units),))
        self.weights: torch.Tensor | None = None  # None: the teacher (no cache read or written)
        self.tau_train = tau_train

    def attach(self):
        for i, module in enumerate(self.units):
            HookRegistry.check_if_exists_or_initialize(module).register_hook(_BlendHook(self, i), HOOK)
        # the blend hooks hold their own StateManager: the transformer's cache_context reaches them only through
        # its list of child registries, which diffusers caches and which new registries make stale
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()

    def detach(self):
        for module in self.units:
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(HOOK, recurse=False)
        self.state_manager.reset()


class RouterTrainer:
    """SDT with IEPO on one pipe.  ``prompts``: training prompts, drawn in turn.

    Videos are sampled by the model's own steps (``pipe.denoise_steps``: its inputs, guidance and scheduler).  A
    model whose experts take turns over the steps gets a router per expert, over the steps of its own segment
    (counted from its first, as its cache counts them); the experts' first steps compute every unit."""

    def __init__(
        self,
        pipe,
        prompts: list[str],
        config: RouterTraining,
        run_dir: Path,
        steps: int | None = None,
        guidance_scale: float | None = None,
        log=print,
    ):
        if not prompts:
            raise ValueError("router training needs at least one prompt")
        self.pipe, self.prompts, self.config, self.run_dir, self.log = pipe, prompts, config, Path(run_dir), log
        self.settings = pipe.settings(steps=steps, guidance_scale=guidance_scale)
        self.experts = dict(pipe.transformers())
        self.blenders = {name: _Blender(t, config.tau_train) for name, t in self.experts.items()}
        self.segment = self._segments()  # per step: (expert, step within its segment)
        idle = [name for name in self.experts if all(e != name for e, _ in self.segment)]
        if idle:
            raise ValueError(
                f"{', '.join(idle)} runs no step of a {self.settings.steps}-step video: train at more steps, so that "
                "every expert runs"
            )
        device = pipe.execution_device  # the router trains where the model runs (--device cuda on GPUs)
        generator = torch.Generator().manual_seed(config.seed)
        self.logits: dict[str, torch.nn.Parameter] = {}
        for name, blender in self.blenders.items():
            length = sum(e == name for e, _ in self.segment)
            logits = torch.randn(length, len(blender.units), generator=generator).clamp(-5, 5)
            logits[0] = FIXED_LOGIT
            self.logits[name] = torch.nn.Parameter(logits.to(device))
        self.optimizer = torch.optim.AdamW(list(self.logits.values()), lr=config.lr)
        self.lam = torch.ones(self.settings.steps, device=device)
        self.iteration = 0
        self.history: list[dict] = []
        self.identity = {name: model_identity(t) for name, t in self.experts.items()}
        self._resume()

    def _segments(self) -> list[tuple[str, int]]:
        """Which expert runs each step, and its index in that expert's segment (the model's own schedule)."""
        steps_of = self.pipe.denoise_steps(self.settings, torch.Generator().manual_seed(0))
        names = {id(t): name for name, t in self.experts.items()}
        try:
            timesteps = steps_of.schedule(self.settings.steps, 0, self.pipe.execution_device)
            return [
                (names[id(steps_of.transformer_at(i))], int(steps_of.context(i).get("step_index", i)))
                for i in range(len(timesteps))
            ]
        finally:
            steps_of.release()

    @property
    def num_units(self) -> int:
        return sum(len(b.units) for b in self.blenders.values())

    # -- checkpoints --------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _run_key(self) -> dict:
        c = self.config
        first = next(iter(self.experts))
        key = {
            "model": self.identity[first],
            "steps": self.settings.steps,
            "guidance_scale": self.settings.guidance_scale,
            "beta": c.beta,
            "tau_train": c.tau_train,
            "lambda_floor": c.lambda_floor,
            "units": len(self.blenders[first].units),
        }
        if len(self.experts) > 1:
            key["experts"] = {name: self.identity[name] for name in self.experts if name != first}
            key["guidance_scale_2"] = self.settings.second_guidance_scale
        return key

    def _resume(self) -> None:
        if not self.checkpoint_path.exists():
            return
        device = self.lam.device
        saved = torch.load(self.checkpoint_path, weights_only=False, map_location=device)
        if saved["key"] != self._run_key():
            raise ValueError(
                f"{self.checkpoint_path} holds a run of another model or setting ({saved['key']}); "
                f"this one is {self._run_key()}: use another --run-dir"
            )
        with torch.no_grad():
            for name, logits in saved["logits"].items():
                self.logits[name].copy_(logits)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lam = saved["lambda"].to(device)
        self.iteration = saved["iteration"]
        self.history = saved["history"]
        self.log(f"train-router: resuming {self.checkpoint_path} at iteration {self.iteration}")

    def save_checkpoint(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(
            {
                "key": self._run_key(),
                "logits": {name: logits.detach().cpu() for name, logits in self.logits.items()},
                "optimizer": self.optimizer.state_dict(),
                "lambda": self.lam.cpu(),
                "iteration": self.iteration,
                "history": self.history,
            },
            tmp,
        )
        tmp.replace(self.checkpoint_path)  # a kill mid-write leaves the previous checkpoint

    # -- one sampling run ---------------------------------------------------------------------------------------
    def _predict(self, steps_of, conditioning, latents, t, i: int):
        """The guided prediction at (latents, t) of step i under its expert's blender weights, as the model's own
        loop computes it."""
        transformer = steps_of.transformer_at(i)
        scale = steps_of.guidance_at(i, self.settings.guidance_scale)
        use_cfg = steps_of.uses_guidance(i, scale) and conditioning.uncond is not None
        context = {"step_index": i, "num_inference_steps": self.settings.steps, **steps_of.context(i)}
        outputs = {}
        for name in ("cond", "uncond") if use_cfg else ("cond",):
            with transformer.cache_context(name, **context):
                inputs = steps_of.inputs(i, t, latents, conditioning.branch(name))
                outputs[name] = transformer(**inputs, return_dict=False)[0].float()
        if use_cfg:
            return steps_of.guide(outputs["cond"], outputs["uncond"], scale, i, t)
        return outputs["cond"]

    def _reset(self) -> None:
        for transformer in self.experts.values():
            reset_caches(transformer)

    def _rollout(self, prompt: str, seed: int, weights_at, train: bool = False, backward: bool = True):
        """Sample one video; ``weights_at(step)`` gives the router weights of a step (None: all computed).  With
        ``train``, the router's own weights are used and every step's IEPO loss is computed (and, with
        ``backward``, backpropagated into the logits); returns (final latents, [(error, usage, loss)] per step)."""
        s = self.settings
        with torch.no_grad():
            conditioning = self.pipe.encode_inputs(prompt, "", s)
        generator = seeded_generator(seed)
        latents = initial_noise(self.pipe.latent_shape(s), seed, self.pipe.execution_device, torch.float32, generator)
        steps_of = self.pipe.denoise_steps(s, generator)
        trained_steps = sum(k > 0 for _, k in self.segment)
        self._reset()
        losses = []
        try:
            for i, t in enumerate(steps_of.schedule(s.steps, 0, latents.device)):
                name, k = self.segment[i]
                blender = self.blenders[name]
                if train and k > 0:
                    blender.weights = None
                    with torch.no_grad():
                        teacher = self._predict(steps_of, conditioning, latents, t, i)
                    with torch.set_grad_enabled(backward):
                        blender.weights = torch.sigmoid(self.logits[name][k])
                        student = self._predict(steps_of, conditioning, latents, t, i)
                        error = (teacher - student).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)
                        usage = blender.weights.mean()
                        loss = self.lam[i] * error + self.config.beta * usage
                        if backward:
                            (loss / trained_steps).backward()
                    losses.append((float(error.detach()), float(usage.detach()), float(loss.detach())))
                    prediction = student.detach()
                else:  # an expert's first step in training (every unit computed: fills its caches), or sampling
                    with torch.no_grad():
                        weights = weights_at(i) if weights_at is not None else None
                        blender.weights = (
                            torch.ones(len(blender.units), device=latents.device) if weights is None else weights
                        )
                        prediction = self._predict(steps_of, conditioning, latents, t, i)
                blender.weights = None
                with torch.no_grad():
                    latents = steps_of.after_step(i, steps_of.step(i, t, prediction, latents))
            latents = steps_of.finish(latents, conditioning)
        finally:
            for blender in self.blenders.values():
                blender.weights = None
            self._reset()
            steps_of.release()
        return latents, losses

    def _probabilities_at(self, i: int) -> torch.Tensor:
        name, k = self.segment[i]
        return torch.sigmoid(self.logits[name][k].detach())

    def refresh_lambda(self) -> None:
        """IEPO's lambda(i): the final latents' error that the router adds at step i, given it on after i."""
        with self._blending():
            self._refresh_lambda()

    def _refresh_lambda(self) -> None:
        steps = self.settings.steps
        prompt, seed = self.prompts[0], 10_000 + self.config.seed
        reference, _ = self._rollout(prompt, seed, lambda i: None)
        previous, lam = reference, torch.zeros(steps, device=self.lam.device)
        trained = [i for i, (_, k) in enumerate(self.segment) if k > 0]  # an expert's first step computes all
        for start in reversed(trained):
            final, _ = self._rollout(
                prompt, seed, lambda i, start=start: self._probabilities_at(i) if i >= start else None
            )
            lam[start] = (final - previous).pow(2).mean()
            previous = final
        mean = lam[trained].mean()
        self.lam = (lam / mean).clamp_min(self.config.lambda_floor) if mean > 0 else torch.ones_like(lam)
        for i, (_, k) in enumerate(self.segment):
            if k == 0:
                self.lam[i] = 0.0
        self.log(f"train-router: lambda refreshed (max/mean {float(self.lam.max()):.2f})")

    @contextlib.contextmanager
    def _blending(self):
        for blender in self.blenders.values():
            blender.attach()
        try:
            yield
        finally:
            for blender in self.blenders.values():
                blender.detach()

    def evaluate(self, prompt: str, seed: int) -> float:
        """The IEPO loss of the current router on one (prompt, seed), no update: what training lowers."""
        with self._blending():
            _, losses = self._rollout(prompt, seed, None, train=True, backward=False)
        return float(np.mean([loss for _, _, loss in losses]))

    # -- the loop ------------------------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> list[dict]:
        c = self.config
        until = c.iterations if until is None else min(until, c.iterations)
        with self._blending():
            while self.iteration < until:
                if self.iteration % c.lambda_every == 0:
                    self._refresh_lambda()
                start = time.perf_counter()
                prompt = self.prompts[self.iteration % len(self.prompts)]
                self.optimizer.zero_grad()
                _, losses = self._rollout(prompt, c.seed * 100_003 + self.iteration, None, train=True)
                for logits in self.logits.values():
                    if logits.grad is not None:
                        logits.grad[0] = 0.0
                self.optimizer.step()
                with torch.no_grad():
                    for logits in self.logits.values():
                        logits.clamp_(-5, 5)
                        logits[0] = FIXED_LOGIT
                error, usage, loss = (float(np.mean(col)) for col in zip(*losses))
                self.iteration += 1
                self.history.append(
                    {
                        "iteration": self.iteration,
                        "loss": loss,
                        "error": error,
                        "usage": usage,
                        "seconds": time.perf_counter() - start,
                    }
                )
                self.log(
                    f"train-router: iteration {self.iteration}/{c.iterations} loss {loss:.4f} "
                    f"(relative error {error:.4f}, mean r {usage:.3f})"
                )
                if self.iteration % c.save_every == 0 or self.iteration == until:
                    self.save_checkpoint()
        return self.history

    def router(self) -> Router:
        """The trained router: the first transformer's, with each other expert's in it (``Router.experts``)."""
        c = self.config
        training = {
            **asdict(c),
            "steps": self.settings.steps,
            "guidance_scale": self.settings.guidance_scale,
            "iterations_done": self.iteration,
            "final_loss": self.history[-1]["loss"] if self.history else math.nan,
        }
        routers = {
            name: Router(model=self.identity[name], logits=logits.detach().cpu().tolist(), training=dict(training))
            for name, logits in self.logits.items()
        }
        first, *others = routers
        routers[first].experts = {name: routers[name] for name in others}
        return routers[first]


def tiny_training_prompts(n: int = 64, seed: int = 7) -> list[str]:
    """Prompts from tiny's training split (the bench's held-out prompts are never among them)."""
    rng = np.random.default_rng(seed)
    return [sample_scene_spec(rng).prompt for _ in range(n)]


def run_command(args) -> int:

    def fail(message: str) -> int:
        print(f"ditfarm train-router: {message}", file=sys.stderr)
        return 2

    for name in ("iterations", "lambda_every", "save_every"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.beta >= 0:
        return fail(f"--beta must be >= 0, got {args.beta}")
    if args.prompts and not args.prompts.exists():
        return fail(f"prompts file {args.prompts} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device=args.device)
    problem = apply_lora(pipe, args)
    if problem:
        return fail(problem)
    if args.prompts:
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    elif getattr(pipe, "model_name", "") == "tiny":
        prompts = tiny_training_prompts()
    else:
        return fail(f"model {args.model} has no built-in training prompts: pass --prompts P.txt")
    for prompt in prompts:
        try:
            pipe.check_prompt(prompt)
        except ValueError as err:
            return fail(str(err))
    out = args.out
    if out is None:
        profile = pipe.default_cache_profile()
        if profile is None:
            return fail(f"model {args.model} ships no cache profile to put the router beside: pass --out")
        out = Path(profile).with_name(ROUTER_FILE)
    config = RouterTraining(
        iterations=args.iterations,
        beta=args.beta,
        lr=args.lr,
        lambda_every=args.lambda_every,
        save_every=args.save_every,
        seed=args.seed,
    )
    try:
        trainer = RouterTrainer(
            pipe, prompts, config, args.run_dir, steps=args.steps, guidance_scale=args.guidance_scale
        )
    except ValueError as err:
        return fail(str(err))
    trainer.train()
    router = trainer.router()
    router.save(out)
    shares = [
        f"{name}: {(r.probabilities() > 0.1)[1:].mean():.1%}"
        for name, r in {"transformer": router, **router.experts}.items()
    ]
    if len(shares) == 1:
        where = f"{shares[0].split(': ')[1]} of the units after step 0"
    else:
        where = f"of the units after each expert's first step {'; '.join(shares)}"
    print(f"wrote {out}: at tau 0.1 the router computes {where}")
    return 0
