"""Latent consistency distillation: a pipeline folder -> a few-step student sampled with :class:`LCMScheduler`.

One step (LCD, Luo et al. 2023, "Latent Consistency Models", Algorithm 1; for video latents as the motion
consistency model, Zhai et al. 2024, and T2V-Turbo, Li et al. 2024, distil ModelScope's UNet3D):

1. latents ``z0`` (b, c, f, h, w) of a batch of clips (frozen VAE, :class:`~.train.LatentBatches`); noise
   ``eps`` (VideoFusion's decomposed noise when ``noise_ratio`` > 0); a point ``n`` of the DDIM solver's grid
   ``t_n = n k - 1`` (``k = skip_steps`` training timesteps apart) and a guidance scale ``s`` per clip;
2. ``x = z_{t_{n+1}}`` noised from ``z0``; the teacher, with classifier-free guidance at ``s``, takes one DDIM
   step from ``t_{n+1}`` to ``t_n``: ``x_prev``;
3. the student's consistency estimate ``f(x, t_{n+1})`` (with ``s - 1`` as ``timestep_cond`` when it embeds
   the guidance) is pulled towards the target network's ``f(x_prev, t_n)`` (Huber or L2 loss); the target
   network is an exponential moving average of the student (``target_ema_decay``, no warm-up).

With ``student = "lora"`` the student is the teacher's UNet plus trainable LoRA adapters: the teacher's calls
run it with the adapters off, the target network's with a second, frozen adapter holding the EMA of the
student's; only the adapters are trained, checkpointed and saved (diffusers' LoRA format).

``f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t)`` (:func:`videofusion.schedulers.lcm.consistency_scalings`),
so f is exact at t = 0 and the grid's last step has a fixed target. Every random draw of step ``k`` is
seeded by ``(seed, k)`` as in ``videofusion train``, whose data, EMA, optimiser and checkpoint machinery
this reuses: a resumed run ends with the weights of an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..adapters.formats import write_lora
from ..io.files import read_json
from ..noise import initial_latents
from ..runtime.devices import pick_device
from ..settings import is_count, is_number
from .lora import adapter_params, load_lora_state, lora_state
from .optimiser import EMA, Optimiser
from .train import (LORA_FILE, LORA_TARGETS, MIXED_PRECISION, LatentBatches, TrainingRun, embed_captions,
                    read_config_file, resolve_model, step_generator)

STUDENTS = ("unet", "lora")   # the whole UNet is trained, or LoRA adapters on the teacher's UNet
LOSSES = ("huber", "l2")


@dataclass
class DistillConfig:
    """What to distil, on what, how long. Read from JSON/TOML by :meth:`from_file` (configs/distill-demo.toml)."""

    model: str                       # the teacher: a pipeline folder (or Hub id)
    output_dir: str                  # checkpoint.pt, model/ (the student with an LCMScheduler) or lora/, loss.png
    data: Any  # as videofusion train: videos+.txt folder, .jsonl, or {"shapes": N, "seed": S, ...}
    num_frames: int = 16
    height: int | None = None        # pixels; None: the model's own size
    width: int | None = None
    steps: int = 1000                # optimizer steps
    batch_size: int = 1              # clips per step
    learning_rate: float = 1e-5
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    student: str = "unet"            # "unet": a copy of the teacher's whole UNet is trained; "lora": LoRA
    #   adapters on the teacher's UNet (needs lora_rank, embed_guidance = false and one guidance_scale number)
    lora_rank: int | None = None     # the LoRA student's rank; saved to lora/ in diffusers' format
    lora_alpha: float | None = None  # LoRA scaling alpha / rank; default: the rank
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # layer names or endings
    guidance_scale: Any = (5.0, 10.0)  # the teacher's classifier-free guidance: [low, high] drawn uniformly per
    #   clip (needs embed_guidance), or one number; the pipeline's convention (1 = no guidance)
    embed_guidance: bool = True      # the student gets time_cond_proj_dim: guidance_scale - 1 as timestep_cond, so
    #   it samples any scale of the range in one UNet call per step; false: the student bakes in one scale
    time_cond_proj_dim: int = 256    # width of that guidance embedding
    skip_steps: int = 20             # k: training timesteps per DDIM solver step; the grid has T / k points and
    #   is the saved LCMScheduler's original_inference_steps
    target_ema_decay: float = 0.95   # mu of the target network (EMA of the student, every step)
    ema_decay: float | None = None   # e.g. 0.999: the saved model holds this EMA of the student (else the student)
    loss: str = "huber"              # "huber": sqrt(d^2 + c^2) - c (pseudo-Huber, c = huber_c), or "l2"
    huber_c: float = 0.001
    noise_ratio: float = 0.0         # VideoFusion's lambda: weight of the base noise shared by frames
    timestep_scaling: float = 10.0   # the boundary condition's time scale (LCMScheduler's key of that name)
    mixed_precision: str = "no"      # "no", "bf16" (CPU or CUDA), "fp16" (CUDA)
    gradient_checkpointing: bool = False
    cache_latents: bool = False      # encode each clip once (frozen VAE, posterior mean)
    checkpoint_every: int = 500      # steps between checkpoints (one at the end too)
    seed: int = 0
    device: str = "auto"
    extra: dict = field(default_factory=dict)  # free-form notes stored in log.json

    def __post_init__(self):
        for name in ("num_frames", "height", "width", "steps", "batch_size", "checkpoint_every", "skip_steps",
                     "time_cond_proj_dim"):
            value = getattr(self, name)
            if (value is not None or name not in ("height", "width")) and not is_count(value):
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if self.student not in STUDENTS:
            raise ValueError(f"student: {self.student!r} is not one of {list(STUDENTS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: {self.loss!r} is not one of {list(LOSSES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: {self.mixed_precision!r} is not one of {list(MIXED_PRECISION)}")
        low, high = self.guidance_range
        if self.student == "lora" and (self.embed_guidance or low != high):
            raise ValueError(f"student: \"lora\" needs embed_guidance = false and one guidance_scale number (a LoRA "
                             f"student cannot embed the guidance), got embed_guidance = "
                             f"{str(self.embed_guidance).lower()}, guidance_scale = {self.guidance_scale!r}")
        if self.student == "lora" and not is_count(self.lora_rank):
            raise ValueError(f"lora_rank: student = \"lora\" needs an integer >= 1, got {self.lora_rank!r}")
        if self.student != "lora" and (self.lora_rank is not None or self.lora_alpha is not None):
            raise ValueError("lora_rank: lora_rank and lora_alpha are for student = \"lora\"")
        if self.lora_alpha is not None and not (is_number(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha: must be a number > 0 or absent, got {self.lora_alpha!r}")
        if not (isinstance(self.lora_target_modules, list) and self.lora_target_modules
                and all(isinstance(t, str) and t for t in self.lora_target_modules)):
            raise ValueError(f"lora_target_modules: must be a non-empty list of layer names, "
                             f"got {self.lora_target_modules!r}")
        if self.embed_guidance and self.time_cond_proj_dim < 2:
            raise ValueError(f"time_cond_proj_dim: must be >= 2 (sines and cosines), got {self.time_cond_proj_dim}")
        if low != high and not self.embed_guidance:
            raise ValueError(f"guidance_scale: a range {[low, high]} needs embed_guidance = true (the student "
                             "must be told the scale); give one number to distil a fixed scale")
        if not 0.0 <= self.target_ema_decay < 1.0:
            raise ValueError(f"target_ema_decay: must be in [0, 1), got {self.target_ema_decay}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: must be in (0, 1) or null, got {self.ema_decay}")
        if not (is_number(self.huber_c) and self.huber_c > 0):
            raise ValueError(f"huber_c: must be > 0, got {self.huber_c!r}")
        if not 0.0 <= self.noise_ratio <= 1.0:
            raise ValueError(f"noise_ratio: must be in [0, 1], got {self.noise_ratio}")
        if not (is_number(self.timestep_scaling) and self.timestep_scaling > 0):
            raise ValueError(f"timestep_scaling: must be > 0, got {self.timestep_scaling!r}")
        if not (is_number(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate!r}")

    @property
    def guidance_range(self) -> tuple[float, float]:
        """``guidance_scale`` as (low, high); ValueError unless one number or two, each >= 1, low <= high."""
        value = self.guidance_scale
        values = [value] * 2 if is_number(value) else list(value) if isinstance(value, (list, tuple)) else None
        if not values or len(values) != 2 or not all(is_number(v) and v >= 1 for v in values) or values[0] > values[1]:
            raise ValueError(f"guidance_scale: must be a number >= 1 or [low, high] with 1 <= low <= high, "
                             f"got {value!r}")
        return float(values[0]), float(values[1])

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "DistillConfig":
        """Read a ``.json`` or ``.toml`` file whose keys are this class's fields."""
        return read_config_file(cls, path, overrides, example="configs/distill-demo.toml")


def solver_grid(num_train_timesteps: int, skip_steps: int) -> torch.Tensor:
    """The DDIM solver's timesteps ``t_n = n k - 1``, n = 1 .. T / k (ascending int64 (T / k,)): the
    distillation grid of :func:`videofusion.schedulers.lcm.lcm_origin_timesteps`."""
    return torch.arange(1, num_train_timesteps // skip_steps + 1, dtype=torch.int64) * skip_steps - 1


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "huber", c: float = 0.001) -> torch.Tensor:
    """Mean ``sqrt((pred - target)^2 + c^2) - c`` (pseudo-Huber, LCM's choice) or mean squared error (``l2``),
    computed in float32; any matching shapes."""
    diff = pred.float() - target.float()
    if kind == "l2":
        return diff.pow(2).mean()
    return (torch.sqrt(diff.pow(2) + c * c) - c).mean()


def check_teacher(folder: str | os.PathLike, config: DistillConfig) -> dict:
    """Refuse what cannot be distilled, from the folder's configs alone (no weights read): a UNet that already
    embeds guidance, a prediction type without x0, a ``skip_steps`` that does not divide the training
    timesteps. Returns the scheduler config."""
    from ..models import UNet3DConditionModel
    unet = UNet3DConditionModel.make_config(read_json(os.path.join(folder, "unet"), "config.json"))
    if unet.time_cond_proj_dim is not None:
        raise ValueError(f"model: the UNet of {folder} already embeds guidance (time_cond_proj_dim="
                         f"{unet.time_cond_proj_dim}); distil a teacher that uses classifier-free guidance")
    scheduler = read_json(os.path.join(folder, "scheduler"), "scheduler_config.json")
    T = scheduler.get("num_train_timesteps", 1000)
    if T % config.skip_steps or config.skip_steps >= T:
        raise ValueError(f"skip_steps: must divide the teacher's num_train_timesteps={T} and be smaller, got "
                         f"{config.skip_steps} (e.g. 20: a 50-step solver grid)")
    if scheduler.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"model: prediction_type {scheduler.get('prediction_type')!r} is not one of "
                         "epsilon, v_prediction, sample")
    return scheduler


def make_student(teacher, config: DistillConfig):
    """The student: a copy of the teacher's UNet; with ``embed_guidance``, the same weights in a UNet with
    ``time_cond_proj_dim`` whose guidance projection starts at zero (so step 0's student is the teacher)."""
    if not config.embed_guidance:
        return copy.deepcopy(teacher)
    student = type(teacher).from_config(teacher.config, time_cond_proj_dim=config.time_cond_proj_dim)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing == ["time_embedding.cond_proj.weight"], (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.to(next(teacher.parameters()).device)


def add_lora_student(pipe, config: DistillConfig) -> tuple[dict, dict]:
    """The LoRA student on ``pipe.unet``: a trainable adapter ``student`` (``lora_rank``, ``lora_alpha``, on
    ``lora_target_modules``, drawn from the run's seed as ``videofusion train`` draws its adapters) and the
    target network's adapter ``target``, a frozen copy of it on the same layers. Returns both: layer ->
    update (``down`` / ``up``). :func:`use_adapter` picks which one a call sees."""
    alpha = config.lora_alpha or config.lora_rank
    student = pipe.lora.add_trainable("unet", "student", config.lora_target_modules, config.lora_rank, alpha,
                                      torch.Generator("cpu").manual_seed(config.seed))
    target = pipe.lora.add_trainable("unet", "target", config.lora_target_modules, config.lora_rank, alpha,
                                     torch.Generator("cpu").manual_seed(config.seed))
    with torch.no_grad():
        for layer, update in student.items():
            for part in ("down", "up"):
                getattr(target[layer], part).copy_(getattr(update, part)).requires_grad_(False)
    return student, target


def use_adapter(unet, name: str | None) -> None:
    """The next calls of a LoRA student's ``unet`` see only adapter ``name`` (weight 1), or none (the teacher)."""
    adapters = unet.lora_adapters
    adapters.enabled = name is not None
    if name is not None:
        adapters.set_active([name], [1.0])


def _per_clip(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(b,) -> (b, 1, 1, 1, 1) in ``like``'s dtype and device, to scale (b, c, f, h, w) latents."""
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def distill(config: DistillConfig, resume: bool = True, progress: bool = True) -> dict:
    """Run (or resume) consistency distillation; returns a summary dict (also written to ``output_dir/log.json``).

    Writes ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end, then the student pipeline (the
    teacher's components with the student UNet and an :class:`~videofusion.schedulers.LCMScheduler`) to
    ``output_dir/model`` and ``loss.png``; with ``student = "lora"``, the adapters alone to
    ``output_dir/lora/pytorch_lora_weights.safetensors`` (diffusers' LoRA format) and the LCMScheduler's config
    to ``output_dir/scheduler``. The summary's ``output`` is where the student is. Every file is written
    atomically; bad settings are refused before any weights load.
    """
    from ..pipelines.core import guidance_embedding
    from ..pipelines.text_to_video import TextToVideoSDPipeline
    from ..schedulers import DDIMScheduler, LCMScheduler
    from ..schedulers.ddim import ddim_step
    from ..schedulers.lcm import consistency_output, consistency_scalings
    from ..schedulers.predictions import predict_x0_eps
    from .data import open_dataset

    device = pick_device(config.device)
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision: fp16 needs a CUDA device; use bf16 on the CPU")
    folder, config = resolve_model(config)
    scheduler_config = check_teacher(folder, config)
    low, high = config.guidance_range
    dataset = open_dataset(config.data, config.num_frames, config.height, config.width)
    run = TrainingRun(config.output_dir, config.steps, config.checkpoint_every, resume)

    pipe = TextToVideoSDPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    pipe.to(device)
    teacher, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for frozen in (teacher, vae, text_encoder):
        frozen.requires_grad_(False).eval()
    solver = DDIMScheduler.from_config(scheduler_config)  # the teacher's noise schedule
    abar = solver.alphas_cumprod.to(device)  # (T,)
    grid = solver_grid(solver.config.num_train_timesteps, config.skip_steps).to(device)
    prediction_type = solver.config.prediction_type

    lora = config.student == "lora"
    if lora:  # one UNet: the teacher with no adapter, the student's, or the target network's
        adapters, target_adapters = add_lora_student(pipe, config)
        student = target_net = teacher
        trainable, target_params = adapter_params(adapters), adapter_params(target_adapters)
    else:
        student = make_student(teacher, config).train()
        student.requires_grad_(True)
        target_net = copy.deepcopy(student).requires_grad_(False).eval()
        trainable, target_params = list(student.parameters()), list(target_net.parameters())
    if config.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    select = (lambda name: use_adapter(teacher, name)) if lora else (lambda name: None)
    opt = Optimiser([{"params": trainable, "lr": config.learning_rate}], config)
    target = EMA(trainable, config.target_ema_decay, shadow=target_params, warmup=False)

    if run.state is not None:
        state = run.state
        if lora:
            load_lora_state({"unet": adapters}, state["lora"])
            load_lora_state({"unet": target_adapters}, state["target"])
        else:
            student.load_state_dict(state["unet"])
            target_net.load_state_dict(state["target"])
        opt.load_state_dict(state)
    batches = LatentBatches(dataset, vae, device, config.cache_latents)
    with torch.no_grad():
        empty = embed_captions(tokenizer, text_encoder, [""], device)  # (1, tokens, d): the unconditional caption

    def state_fn() -> dict:
        weights = {"lora": lora_state({"unet": adapters}), "target": lora_state({"unet": target_adapters})} if lora \
            else {"unet": student.state_dict(), "target": target_net.state_dict()}
        return {**weights, **opt.state_dict(), "config": dataclasses.asdict(config)}

    def consistency(model, x: torch.Tensor, t: torch.Tensor, context, cond) -> torch.Tensor:
        """f(x, t): the model's x0 estimate through the boundary condition; x (b, c, f, h, w), t (b,)."""
        out = model(x, t, encoder_hidden_states=context, timestep_cond=cond, return_dict=False)[0].float()
        x0, _ = predict_x0_eps(out, x, _per_clip(abar[t], x), prediction_type)
        c_skip, c_out = consistency_scalings(t, config.timestep_scaling)
        return consistency_output(x0, x, _per_clip(c_skip, x), _per_clip(c_out, x))

    def step_fn(step: int) -> float:
        g = step_generator(config.seed, step)
        torch.manual_seed(g.initial_seed())  # dropout and anything else drawing from the global RNG
        captions, z0, _ = batches.draw(g, config.batch_size)  # z0: (b, c, f, h, w)
        b = z0.shape[0]
        noise = initial_latents(z0.shape, g, device, z0.dtype,
                                noise="decomposed" if config.noise_ratio > 0 else "independent",
                                noise_ratio=config.noise_ratio)
        n = torch.randint(len(grid), (b,), generator=g).to(device)
        start = grid[n]  # (b,) t_{n+1}
        prev = (start - config.skip_steps).clamp(min=0)  # (b,) t_n; the first point's is t = 0
        scale = (low + (high - low) * torch.rand(b, generator=g, dtype=torch.float64)).float().to(device)  # (b,)
        x = solver.add_noise(z0, noise, start)
        with torch.no_grad():
            context = embed_captions(tokenizer, text_encoder, captions, device)  # (b, tokens, d)
        cond = guidance_embedding(scale.cpu() - 1.0, config.time_cond_proj_dim).to(device) \
            if config.embed_guidance else None  # (b, time_cond_proj_dim)
        with torch.autocast(device.type, dtype=opt.autocast_dtype, enabled=opt.autocast_dtype is not None):
            select("student")
            student.train()
            pred = consistency(student, x, start, context, cond)
            if lora:
                teacher.eval()
            with torch.no_grad():
                select(None)
                out = teacher(torch.cat([x, x]), torch.cat([start, start]),
                              encoder_hidden_states=torch.cat([empty.expand(b, -1, -1), context]),
                              return_dict=False)[0].float()
                uncond, conditional = out.chunk(2)
                guided = uncond + _per_clip(scale, x) * (conditional - uncond)  # classifier-free guidance
                x0, eps = predict_x0_eps(guided, x, _per_clip(abar[start], x), prediction_type)
                x_prev = ddim_step(x0, eps, _per_clip(abar[prev], x), 0.0)  # one solver step t_{n+1} -> t_n
                select("target")
                goal = consistency(target_net, x_prev, prev, context, cond)
                select("student")
        loss = consistency_loss(pred, goal, config.loss, config.huber_c)
        opt.step(loss, step)
        target.update(step)
        return loss.item()

    run.run(step_fn, state_fn, progress, desc="distilling")
    opt.use_average()
    student.eval()
    pipe.unet = student
    pipe.scheduler = LCMScheduler.from_config(
        scheduler_config, original_inference_steps=solver.config.num_train_timesteps // config.skip_steps,
        timestep_scaling=config.timestep_scaling)
    pipe.to("cpu")
    if lora:
        output = run.out / LORA_FILE
        alpha = config.lora_alpha or config.lora_rank
        write_lora(output, {"unet": adapters}, config.lora_rank, alpha, {"unet": config.lora_target_modules})
        pipe.scheduler.save_pretrained(str(run.out / "scheduler"))
    else:
        output = run.out / "model"
        pipe.save_pretrained(str(output))
    return run.finish(f"consistency loss, {config.steps} steps, guidance {low:g}-{high:g}",
                      {"device": str(device), "output": str(output), "config": dataclasses.asdict(config)})
