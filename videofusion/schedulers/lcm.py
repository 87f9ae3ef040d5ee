"""LCM: multi-step sampling of latent consistency models (Luo et al. 2023, "Latent Consistency Models:
Synthesizing High-Resolution Images with Few-Step Inference", Algorithm 3).

A consistency model f(x_t, t) maps any point of a trajectory to its start x_0. Sampling evaluates it
at a few timesteps taken from the distillation grid (every ``k``-th training timestep, ``k = T //
original_inference_steps``), re-noising its estimate to the next timestep in between.
:func:`consistency_scalings` is the boundary condition that makes f the identity at t = 0; the same
functions serve consistency distillation (:mod:`videofusion.training.distill`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..noise import randn
from .config import Scheduler, SchedulerOutput
from .predictions import predict_x0_eps, threshold_or_clip
from .schedules import check_num_inference_steps

SIGMA_DATA = 0.5  # the data standard deviation of the boundary condition (Song et al. 2023, sec. 5)
logger = logging.getLogger(__name__)


def lcm_origin_timesteps(num_train_timesteps: int, original_inference_steps: int, strength: float = 1.0) -> np.ndarray:
    """The distillation grid, ascending: ``(1, 2, ..., int(original_inference_steps * strength)) * k - 1`` with
    ``k = num_train_timesteps // original_inference_steps`` (the skipping interval of Algorithm 1), int64
    numpy. ``strength`` < 1 keeps its low-noise part (video-to-video)."""
    if not 1 <= original_inference_steps <= num_train_timesteps:
        raise ValueError(f"original_inference_steps: must be between 1 and num_train_timesteps="
                         f"{num_train_timesteps}, got {original_inference_steps}")
    k = num_train_timesteps // original_inference_steps
    return np.arange(1, int(original_inference_steps * strength) + 1, dtype=np.int64) * k - 1


def lcm_timesteps(origin: np.ndarray, num_inference_steps: int) -> np.ndarray:
    """``num_inference_steps`` timesteps taken from the grid ``origin`` (ascending) at evenly spaced indices
    from its noisiest end (floor of ``linspace(0, len, n, endpoint=False)``), descending int64 numpy:
    for T = 1000 and 50 original steps, 4 steps are [999, 759, 499, 259]."""
    descending = origin[::-1].copy()
    indices = np.floor(np.linspace(0, len(descending), num=num_inference_steps, endpoint=False)).astype(np.int64)
    return descending[indices]


def consistency_scalings(timestep: torch.Tensor | float, timestep_scaling: float = 10.0,
                         sigma_data: float = SIGMA_DATA) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The boundary-condition scalings (c_skip, c_out) of a consistency model at ``timestep`` (a number or a
    tensor of any shape; Song et al. 2023, "Consistency Models", eq. 7 with t scaled by ``timestep_scaling``,
    as LCM does): ``c_skip = s^2 / (t'^2 + s^2)``, ``c_out = t' / sqrt(t'^2 + s^2)`` with ``t' = t *
    timestep_scaling`` and ``s = sigma_data``, so f(x, 0) = x. Same type and shape as ``timestep`` (float32
    for integer tensors)."""
    scaled = timestep * timestep_scaling
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip, c_out


def consistency_output(x0: torch.Tensor, sample: torch.Tensor, c_skip: torch.Tensor | float,
                       c_out: torch.Tensor | float) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat (LCM, eq. 9): the consistency model's estimate of the
    trajectory's start from the sample ``x_t`` and the model's clean-sample prediction ``x0``. Broadcasts
    the scalings (numbers or tensors shaped to the sample)."""
    return c_out * x0 + c_skip * sample


def lcm_renoise(denoised: torch.Tensor, noise: torch.Tensor, alpha_prod_next: torch.Tensor) -> torch.Tensor:
    """Algorithm 3's re-noising between evaluations: x_{tau_next} = sqrt(abar) x0 + sqrt(1 - abar) noise,
    the forward process from the consistency estimate to the next (less noisy) timestep."""
    return alpha_prod_next.sqrt() * denoised + (1 - alpha_prod_next).sqrt() * noise


@dataclass
class LCMSchedulerOutput(SchedulerOutput):
    """Result of ``LCMScheduler.step``, read as diffusers' of the same name: ``prev_sample`` (the next
    step's input, re-noised) and ``denoised`` (the consistency estimate of x_0; the last step's
    ``prev_sample`` is it). ``pred_original_sample`` is not set (diffusers' class has no such field)."""

    denoised: torch.Tensor | None = None


class LCMScheduler(Scheduler):
    """Multi-step consistency sampling (Algorithm 3 of the LCM paper) for models distilled with
    ``videofusion distill`` or diffusers' LCM scripts.

    Config keys and defaults are diffusers' ``LCMScheduler``'s. ``original_inference_steps`` (default 50) is
    the size of the distillation grid (the DDIM solver's steps): inference timesteps are taken from it, so
    ``num_inference_steps`` may not exceed it. ``timestep_scaling`` (default 10) scales t in the boundary
    condition (:func:`consistency_scalings`). ``timestep_spacing`` and ``steps_offset`` are kept in the
    config but not read, as in diffusers. Every step but the last draws fresh noise from ``generator``.
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    trained_betas=None, original_inference_steps=50, clip_sample=False, clip_sample_range=1.0,
                    set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon", thresholding=False,
                    dynamic_thresholding_ratio=0.995, sample_max_value=1.0, timestep_spacing="leading",
                    timestep_scaling=10.0, rescale_betas_zero_snr=False)

    def __init__(self, **config):
        super().__init__(**config)
        self.final_alpha_cumprod = torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self.custom_timesteps = False  # True after set_timesteps(timesteps=...)

    def set_timesteps(self, num_inference_steps: int | None = None, device: torch.device | str | None = None,
                      original_inference_steps: int | None = None, timesteps: list[int] | None = None,
                      strength: float = 1.0) -> None:
        """Integer timesteps (int64, descending): ``num_inference_steps`` of the distillation grid
        (:func:`lcm_origin_timesteps` with ``original_inference_steps``, default the config's, and
        ``strength``; :func:`lcm_timesteps`), or the custom ``timesteps`` (strictly descending, below
        num_train_timesteps; a warning for timesteps off the grid, as diffusers; ``strength`` < 1 keeps their
        last ``int(n * strength)``). Exactly one of ``num_inference_steps`` and ``timesteps``."""
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        T = self.config.num_train_timesteps
        original = self.config.original_inference_steps if original_inference_steps is None else original_inference_steps
        origin = lcm_origin_timesteps(T, original, strength)
        if timesteps is not None:
            chosen = self._custom(timesteps, origin, original, strength)
        else:
            check_num_inference_steps(num_inference_steps, T)
            if len(origin) < num_inference_steps:
                raise ValueError(f"num_inference_steps: {num_inference_steps} is more than the "
                                 f"original_inference_steps x strength = {original} x {strength} = {len(origin)} "
                                 "timesteps of the distillation grid it is taken from")
            chosen = lcm_timesteps(origin, num_inference_steps)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
        self.timesteps = torch.from_numpy(chosen).to(device=device, dtype=torch.long)
        self._reset_step_index()

    def _custom(self, timesteps, origin: np.ndarray, original: int, strength: float) -> np.ndarray:
        """Checked custom timesteps (see set_timesteps), the ``strength`` tail of them."""
        T = self.config.num_train_timesteps
        values = [int(t) for t in timesteps]
        if any(b >= a for a, b in zip(values, values[1:])):
            raise ValueError("`custom_timesteps` must be in descending order.")
        if values[0] >= T:
            raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {T}.")
        off_grid = [t for t in values[1:] if t not in set(origin.tolist())]
        if strength == 1.0 and values[0] != T - 1:
            logger.warning("The first custom timestep is %d, not num_train_timesteps - 1 = %d: the model was "
                           "distilled to start from pure noise", values[0], T - 1)
        if off_grid:
            logger.warning("Custom timesteps %s are not on the distillation grid", off_grid)
        if len(values) > original:
            logger.warning("%d custom timesteps are more than the %d of the distillation grid", len(values), original)
        self.num_inference_steps = len(values)
        self.custom_timesteps = True
        start = max(self.num_inference_steps - min(int(self.num_inference_steps * strength), self.num_inference_steps), 0)
        return np.array(values, dtype=np.int64)[start:]

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("LCMScheduler.step called before set_timesteps(num_inference_steps)")

    def get_scalings_for_boundary_condition_discrete(self, timestep: int | torch.Tensor):
        """(c_skip, c_out) at ``timestep`` with the config's ``timestep_scaling`` (:func:`consistency_scalings`)."""
        return consistency_scalings(timestep, self.config.timestep_scaling)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True):
        """One evaluation of the consistency function at ``timestep`` and, unless it is the last step,
        re-noising to the next timestep (Algorithm 3).

        model_output, sample: (b, c, ...) (the pipeline folds frames into the batch). Returns
        ``LCMSchedulerOutput(prev_sample, denoised)`` or the tuple ``(prev_sample, denoised)``.
        """
        index = self._start_step(timestep)
        c = self.config
        following = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else timestep
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_next = self.alphas_cumprod[following] if following >= 0 else self.final_alpha_cumprod
        x0, _ = predict_x0_eps(model_output, sample, alpha_prod_t, c.prediction_type)
        x0 = threshold_or_clip(x0, c)
        denoised = consistency_output(x0, sample, *consistency_scalings(timestep, c.timestep_scaling))
        if index != self.num_inference_steps - 1:
            noise = randn(model_output.shape, generator, model_output.device, denoised.dtype)
            prev_sample = lcm_renoise(denoised, noise, alpha_prod_next)
        else:
            prev_sample = denoised
        self._step_index += 1
        if not return_dict:
            return (prev_sample, denoised)
        return LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The timestep after ``timestep`` in the schedule (-1 after the last; ``timestep - 1`` before
        set_timesteps), as diffusers."""
        if not (self.custom_timesteps or self.num_inference_steps):
            return timestep - 1
        index = (self.timesteps == timestep).nonzero(as_tuple=True)[0]
        if len(index) == 0:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps")
        return torch.tensor(-1) if index[0] == len(self.timesteps) - 1 else self.timesteps[index[0] + 1]

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v-prediction training target at integer ``timesteps`` (b,); see ``Scheduler._velocity``."""
        return self._velocity(sample, noise, timesteps)
