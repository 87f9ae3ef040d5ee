"""Train or fine-tune the UNet (and optionally the text encoder) of a text-to-video pipeline folder.

One step (DDPM training, Ho et al. 2020, with VideoFusion's decomposed noise, Luo et al. 2023):

1. encode a batch of clips with the frozen VAE: latents ``z0`` of shape (b, c, f, h, w);
2. draw noise ``eps`` with a base shared over the frames: ``eps_i = sqrt(l) * base + sqrt(1 - l) * r_i``
   (``l = noise_ratio``; 0 is standard diffusion), a timestep ``t`` per clip;
3. ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``; the UNet predicts ``eps`` (or ``v``) from
   ``z_t``, ``t`` and the caption's embedding (empty caption with probability ``caption_dropout``, so
   classifier-free guidance works); MSE loss.

Every random draw of step ``k`` (data, noise, timesteps, caption dropout, and through the global RNG,
dropout layers) is seeded by ``(seed, k)``, so a run resumed from a
checkpoint ends with exactly the weights of an uninterrupted run of the same length.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..adapters.formats import write_lora
from ..noise import initial_latents
from ..io.hub import resolve_pretrained
from ..io.saving import atomic_write, atomic_write_text
from ..pipelines.folders import native_geometry
from ..runtime.devices import pick_device
from ..settings import GenerationSettings, is_count
from .lora import TEXT_LORA_TARGETS, adapter_params, add_lora_adapters, load_lora_state, lora_state
from .optimiser import Optimiser
from .plot import loss_plot

MIXED_PRECISION = ("no", "bf16", "fp16")
CHECKPOINT = "checkpoint.pt"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet's attention projections, as diffusers' scripts
LORA_FILE = "lora/pytorch_lora_weights.safetensors"


@dataclass
class TrainConfig:
    """What to train, on what, how long. Read from JSON/TOML by :meth:`from_file`."""

    model: str                       # pipeline folder (or Hub id) to start from
    output_dir: str                  # checkpoint.pt, model/ (the trained pipeline), loss.png, log.json
    data: Any                        # videos+.txt folder, .jsonl, or {"shapes": N, "seed": S, [start_spread, cross_spread, trail,
    #   detailed_captions, extra_colours, extra_share]}
    num_frames: int = 16
    height: int | None = None        # pixels; None: the model's own size (unet sample_size x VAE scale factor)
    width: int | None = None         # pixels; None: the model's own size
    steps: int = 1000                # optimizer steps
    batch_size: int = 1              # clips per step
    learning_rate: float = 1e-5
    text_encoder_learning_rate: float | None = None  # default: learning_rate
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    noise_ratio: float = 0.0         # VideoFusion's lambda: weight of the base noise shared by frames
    caption_dropout: float = 0.1     # probability of training on the empty caption
    timestep_power: float = 1.0      # t = floor(T * (1 - u**p)), u uniform: 1 = uniform t; p > 1 favours high
    #   noise, where the prompt decides the layout and motion (p = 2 puts 39% of clips in the noisiest 15%)
    foreground_weight: float = 1.0   # w > 1: in the MSE, a latent pixel weighs 1 + (w - 1) * (the share of its
    #   pixels that differ from their frame's top-left pixel: the shape, on plain-background data only), the
    #   weights scaled to mean 1 per batch; 1 = the plain MSE
    temporal_weight: float = 1.0     # the error splits into its mean over frames (static) and the rest
    #   (temporal: what differs between frames, i.e. the motion); the loss is |static|^2 + w * |temporal|^2,
    #   so w > 1 makes motion errors cost more; 1 = the plain MSE
    train_text_encoder: bool = False
    lora_rank: int | None = None     # train LoRA adapters of this rank only (the model frozen); saved to lora/
    lora_alpha: float | None = None  # LoRA scaling alpha / rank; default: the rank
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # layer names or endings
    mixed_precision: str = "no"      # "no", "bf16" (CPU or CUDA), "fp16" (CUDA)
    gradient_checkpointing: bool = False
    ema_decay: float | None = None   # e.g. 0.999; the saved model then holds the EMA weights
    cache_latents: bool = False      # encode each clip once (frozen VAE, posterior mean)
    checkpoint_every: int = 500      # steps between checkpoints (one at the end too)
    seed: int = 0
    device: str = "auto"
    unet_from: str | None = None     # pipeline folder whose unet/ weights start the UNet (the rest: model)
    scheduler: dict = field(default_factory=dict)  # scheduler config overrides for training and the saved
    #   model, e.g. {prediction_type = "v_prediction", rescale_betas_zero_snr = true, timestep_spacing = "trailing"}
    extra: dict = field(default_factory=dict)  # free-form notes stored in log.json

    def __post_init__(self):
        for name in ("num_frames", "height", "width", "steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if (value is not None or name not in ("height", "width")) and not is_count(value):
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if not 0.0 <= self.noise_ratio <= 1.0:
            raise ValueError(f"noise_ratio: must be in [0, 1], got {self.noise_ratio}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout: must be in [0, 1), got {self.caption_dropout}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: {self.mixed_precision!r} is not one of {list(MIXED_PRECISION)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: must be in (0, 1) or null, got {self.ema_decay}")
        if not self.foreground_weight >= 1.0:
            raise ValueError(f"foreground_weight: must be >= 1, got {self.foreground_weight}")
        if not self.temporal_weight > 0:
            raise ValueError(f"temporal_weight: must be > 0, got {self.temporal_weight}")
        if not self.timestep_power > 0:
            raise ValueError(f"timestep_power: must be > 0, got {self.timestep_power}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        if self.lora_rank is not None and not is_count(self.lora_rank):
            raise ValueError(f"lora_rank: must be an integer >= 1 or absent, got {self.lora_rank!r}")
        if self.lora_alpha is not None and (self.lora_rank is None or not self.lora_alpha > 0):
            raise ValueError(f"lora_alpha: must be a number > 0, with lora_rank, got {self.lora_alpha!r}")
        if not (isinstance(self.lora_target_modules, list) and self.lora_target_modules
                and all(isinstance(t, str) and t for t in self.lora_target_modules)):
            raise ValueError(f"lora_target_modules: must be a non-empty list of layer names, "
                             f"got {self.lora_target_modules!r}")

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        """Read a ``.json`` or ``.toml`` file whose keys are this class's fields."""
        return read_config_file(cls, path, overrides, example="configs/finetune-demo.toml")


def read_config_file(cls: type, path: str | os.PathLike, overrides: dict[str, Any], example: str):
    """An instance of the dataclass ``cls`` from a ``.json`` or ``.toml`` file whose keys are its fields, with
    ``overrides`` applied; unknown keys and missing required keys are errors naming them (``example``: a
    config file the message points to)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: {path} does not exist")
    if path.suffix == ".toml":
        import tomllib
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".json":
        values = json.loads(path.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"config: {path} must be a .json or .toml file")
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config: unknown keys {unknown}; accepted: {sorted(known)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in values]
    if missing:
        raise ValueError(f"config: {path} does not set {', '.join(missing)} ({example} is an example)")
    return cls(**values)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of every random draw in training step ``step``."""
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + step)


def sample_timesteps(n: int, num_train_timesteps: int, power: float, g: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps in ``[0, T)``: uniform for ``power == 1``, else ``floor(T * (1 - u**power))``
    with ``u`` uniform in [0, 1), so ``power > 1`` draws high-noise steps more often."""
    if power == 1.0:
        return torch.randint(0, num_train_timesteps, (n,), generator=g)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (num_train_timesteps * (1 - u ** power)).long().clamp(0, num_train_timesteps - 1)


def save_loss_curve(losses: list[float], path: Path, title: str = "training loss") -> None:
    """``path`` (PNG, written atomically): the loss per step on a log scale with labelled axes
    (:func:`videofusion.training.plot.loss_plot`)."""
    image = loss_plot(losses, title)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def encode_clips(vae, clips: torch.Tensor) -> torch.Tensor:
    """Clips ``(b, 3, f, h, w)`` in [-1, 1] -> scaled posterior-mean latents ``(b, 4, f, h/8, w/8)``
    (no gradient): what the UNet is trained to denoise."""
    b, c, f, h, w = clips.shape
    frames = clips.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, 3, h, w)
    with torch.no_grad():
        z = vae.encode(frames).latent_dist.mode() * vae.config.scaling_factor  # (b*f, 4, h/8, w/8)
    return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)  # (b, 4, f, h/8, w/8)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, temporal_weight: float = 1.0,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of ``(b, c, f, h, w)`` predictions, with the error split over frames into its static part (the
    mean over ``f``) and its temporal part (the rest): ``|static|^2 + temporal_weight * |temporal|^2``,
    the two being orthogonal, so ``temporal_weight`` 1 is the plain MSE. ``weight`` (broadcast to the
    error, e.g. ``(b, 1, f, h, w)``) is scaled to mean 1 and weights each element."""
    if temporal_weight == 1.0 and weight is None:
        return torch.nn.functional.mse_loss(pred, target)
    error = pred - target
    static = error.mean(2, keepdim=True)  # (b, c, 1, h, w)
    squared = static.pow(2) + temporal_weight * (error - static).pow(2)  # (b, c, f, h, w)
    if weight is not None:
        squared = weight / weight.mean() * squared
    return squared.mean()


def foreground_coverage(clips: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Share of each latent pixel's pixels that are foreground (:func:`~videofusion.demo.shapes.foreground_mask`):
    clips ``(b, 3, f, h, w)`` in [-1, 1] -> ``(b, 1, f, h', w')`` in [0, 1]."""
    from ..demo.shapes import foreground_mask
    b, c, f, h, w = clips.shape
    mask = foreground_mask(clips.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))  # (b*f, 1, h, w)
    cover = torch.nn.functional.adaptive_avg_pool2d(mask.float(), tuple(latent_size))  # (b*f, 1, h', w')
    return cover.reshape(b, f, 1, *cover.shape[-2:]).permute(0, 2, 1, 3, 4)  # (b, 1, f, h', w')


def resolve_model(config: TrainConfig) -> tuple[Path, TrainConfig]:
    """The local folder of ``config.model`` and the config with ``height``/``width`` resolved to the
    model's own size where not given, checked against its VAE's scale factor (no weights are read)."""
    try:
        folder = resolve_pretrained(config.model)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model: {e}. The demo recipe's configs start from a folder that "
                                f"`videofusion init-demo FOLDER` writes (see configs/demo.toml)") from None
    native, scale = native_geometry(folder)
    size = GenerationSettings(height=config.height, width=config.width).sized(native, scale)
    return folder, dataclasses.replace(config, height=size.height, width=size.width)


def _load_unet_weights(unet, folder: str) -> None:
    """Copy the weights of ``folder/unet`` (a pipeline folder) into ``unet``; the configs must match."""
    from ..models import UNet3DConditionModel
    path = Path(folder) / "unet"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"unet_from: {folder} is not a pipeline folder with a unet/config.json")
    source = UNet3DConditionModel.from_pretrained(str(path), torch_dtype=torch.float32)
    ours, theirs = dataclasses.asdict(unet.config), dataclasses.asdict(source.config)
    differ = sorted(k for k in ours if ours[k] != theirs[k])
    if differ:
        raise ValueError(f"unet_from: the UNet of {folder} has another architecture than the model's "
                         f"(config keys {differ} differ)")
    unet.load_state_dict(source.state_dict())


class LatentBatches:
    """The clips of a data set as the UNet sees them: step ``k``'s batch drawn from its generator (clip indices,
    then caption dropout), encoded by the frozen VAE (:func:`encode_clips`), each clip once when ``cache``."""

    def __init__(self, dataset, vae, device: torch.device, cache: bool = False, foreground: bool = False):
        from .data import captions_of
        self.dataset, self.vae, self.device, self.cache, self.foreground = dataset, vae, device, cache, foreground
        self.captions = captions_of(dataset)
        self._cached: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _encode(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = encode_clips(self.vae, clips.to(self.device))  # (b, 4, f, h', w')
        return z, (foreground_coverage(clips, z.shape[-2:]).to(self.device) if self.foreground else None)

    def latents(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (b, 4, f, h', w') of the clips, and their foreground coverage (b, 1, f, h', w') when
        ``foreground`` (else None)."""
        if not self.cache:
            return self._encode(torch.stack([self.dataset[i]["video"] for i in indices]))
        missing = [i for i in indices if i not in self._cached]
        if missing:
            z, cover = self._encode(torch.stack([self.dataset[i]["video"] for i in missing]))
            for k, i in enumerate(missing):
                self._cached[i] = (z[k].cpu(), cover[k].cpu() if self.foreground else None)
        z = torch.stack([self._cached[i][0] for i in indices]).to(self.device)
        return z, (torch.stack([self._cached[i][1] for i in indices]).to(self.device) if self.foreground else None)

    def draw(self, g: torch.Generator, batch_size: int, caption_dropout: float = 0.0
             ) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
        """A batch from ``g``: captions (empty with probability ``caption_dropout``), latents, coverage."""
        indices = torch.randint(len(self.dataset), (batch_size,), generator=g).tolist()
        drop = (torch.rand(batch_size, generator=g) < caption_dropout).tolist()
        captions = ["" if d else self.captions[i] for i, d in zip(indices, drop)]
        return (captions, *self.latents(indices))


def embed_captions(tokenizer, text_encoder, captions: list[str], device: torch.device) -> torch.Tensor:
    """The text encoder's last hidden states (b, tokens, d) of ``captions``, padded to the tokenizer's length."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0]


class TrainingRun:
    """A training command's bookkeeping in ``output_dir``: the checkpoint it resumes from (``state``, None when
    starting over), the loss of every step, the time spent, the progress bar, checkpoints every
    ``checkpoint_every`` steps and at the end, then ``loss.png`` and ``log.json``; every file atomic."""

    def __init__(self, output_dir: str | os.PathLike, steps: int, checkpoint_every: int, resume: bool = True):
        self.out = Path(output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.steps, self.checkpoint_every = steps, checkpoint_every
        self.path = self.out / CHECKPOINT
        self.state = torch.load(self.path, map_location="cpu", weights_only=True) \
            if resume and self.path.is_file() else None
        self.start = self.state["step"] if self.state else 0
        self.losses: list[float] = self.state["losses"] if self.state else []
        self.elapsed: float = self.state["elapsed"] if self.state else 0.0

    def run(self, step_fn, state_fn, progress: bool = True, desc: str = "training") -> None:
        """Steps ``start .. steps - 1``: ``step_fn(k)`` does step k and returns its loss; ``state_fn()`` is the
        dict of tensors and state dicts a checkpoint holds besides the step, losses and time."""
        bar = tqdm(total=self.steps, initial=self.start, desc=desc, disable=not progress)
        for step in range(self.start, self.steps):
            t0 = time.perf_counter()
            self.losses.append(step_fn(step))
            self.elapsed += time.perf_counter() - t0
            recent = self.losses[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            bar.update()
            if (step + 1) % self.checkpoint_every == 0 or step + 1 == self.steps:
                state = {"step": step + 1, "losses": self.losses, "elapsed": self.elapsed, **state_fn()}
                atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        bar.close()

    def finish(self, title: str, summary: dict) -> dict:
        """Write ``loss.png`` (titled ``title``) and ``log.json``: ``summary`` with the step count, the mean of
        the last 50 losses and the seconds spent. Returns that dict."""
        save_loss_curve(self.losses, self.out / "loss.png", title=title)
        tail = self.losses[-50:]
        summary = {"steps": self.steps, "final_loss_avg50": sum(tail) / max(1, len(tail)),
                   "seconds": round(self.elapsed, 1), **summary, "torch": torch.__version__}
        atomic_write_text(self.out / "log.json", json.dumps(summary, indent=2) + "\n")
        return summary


def train(config: TrainConfig, resume: bool = True, progress: bool = True) -> dict:
    """Run (or resume) training; returns a summary dict (also written to ``output_dir/log.json``).

    Writes ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end, then the trained pipeline
    to ``output_dir/model`` (diffusers layout; with ``lora_rank``, the adapters alone to ``output_dir/lora``,
    diffusers' LoRA format) and ``loss.png``. All files are written atomically.
    """
    from ..pipelines.text_to_video import TextToVideoSDPipeline
    from ..schedulers import DDPMScheduler
    from .data import open_dataset

    device = pick_device(config.device)
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision: fp16 needs a CUDA device; use bf16 on the CPU")
    folder, config = resolve_model(config)
    dataset = open_dataset(config.data, config.num_frames, config.height, config.width)
    run = TrainingRun(config.output_dir, config.steps, config.checkpoint_every, resume)
    pipe = TextToVideoSDPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    if config.unet_from:
        _load_unet_weights(pipe.unet, config.unet_from)
    pipe.to(device)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    if config.scheduler:
        unknown = sorted(set(config.scheduler) - set(type(pipe.scheduler).defaults))
        if unknown:  # a typo here would silently train with the old schedule
            raise ValueError(f"scheduler: {unknown} are not keys of {type(pipe.scheduler).__name__}; it has "
                             f"{sorted(type(pipe.scheduler).defaults)}")
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **config.scheduler)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type: training supports epsilon and v_prediction, got {prediction_type!r}")

    vae.requires_grad_(False).eval()
    lora = config.lora_rank is not None
    text_encoder.requires_grad_(config.train_text_encoder and not lora)
    text_encoder.train(config.train_text_encoder)
    unet.requires_grad_(not lora).train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    adapters = add_lora_adapters(pipe, config) if lora else {}  # component -> layer -> trainable update
    parameters = {"unet": list(unet.parameters()), "text_encoder": list(text_encoder.parameters())} if not lora \
        else {c: adapter_params(layers) for c, layers in adapters.items()}
    groups = [{"params": parameters["unet"], "lr": config.learning_rate}]
    if config.train_text_encoder:
        groups.append({"params": parameters["text_encoder"],
                       "lr": config.text_encoder_learning_rate or config.learning_rate})
    opt = Optimiser(groups, config)

    if run.state is not None:
        state = run.state
        if lora:
            load_lora_state(adapters, state["lora"])
        else:
            unet.load_state_dict(state["unet"])
        if config.train_text_encoder and not lora:
            text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state)
    weighted = config.foreground_weight > 1.0
    batches = LatentBatches(dataset, vae, device, config.cache_latents, foreground=weighted)

    def state_fn() -> dict:
        state = {**opt.state_dict(), "config": dataclasses.asdict(config)}
        if lora:
            state["lora"] = lora_state(adapters)
        else:
            state["unet"] = unet.state_dict()
        if config.train_text_encoder and not lora:
            state["text_encoder"] = text_encoder.state_dict()
        return state

    def step_fn(step: int) -> float:
        g = step_generator(config.seed, step)
        torch.manual_seed(g.initial_seed())  # dropout and anything else drawing from the global RNG
        captions, z0, cover = batches.draw(g, config.batch_size, config.caption_dropout)  # z0: (b, 4, f, h, w)
        noise = initial_latents(z0.shape, g, device, z0.dtype,
                                noise="decomposed" if config.noise_ratio > 0 else "independent",
                                noise_ratio=config.noise_ratio)
        timesteps = sample_timesteps(config.batch_size, noise_scheduler.config.num_train_timesteps,
                                     config.timestep_power, g).to(device)
        noisy = noise_scheduler.add_noise(z0, noise, timesteps)
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(z0, noise, timesteps)
        with torch.autocast(device.type, dtype=opt.autocast_dtype, enabled=opt.autocast_dtype is not None):
            with torch.set_grad_enabled(config.train_text_encoder):
                context = embed_captions(tokenizer, text_encoder, captions, device)
            pred = unet(noisy, timesteps, encoder_hidden_states=context, return_dict=False)[0]
        loss = weighted_mse(pred.float(), target.float(), config.temporal_weight,
                            None if cover is None else 1.0 + (config.foreground_weight - 1.0) * cover)
        opt.step(loss, step)
        return loss.item()

    run.run(step_fn, state_fn, progress)
    opt.use_average()
    unet.eval()
    text_encoder.eval()
    pipe.to("cpu")
    if lora:
        targets = {"unet": config.lora_target_modules, "text_encoder": list(TEXT_LORA_TARGETS)}
        write_lora(run.out / LORA_FILE, adapters, config.lora_rank, config.lora_alpha or config.lora_rank,
                   {c: targets[c] for c in adapters})
    else:
        pipe.save_pretrained(str(run.out / "model"))
    return run.finish(f"loss, {config.steps} steps, noise_ratio {config.noise_ratio}",
                      {"device": str(device), "config": dataclasses.asdict(config)})
