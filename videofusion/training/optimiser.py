"""The optimisation a training run and a distillation run share: AdamW with a warm-up
(:func:`make_optimizer`), an exponential moving average of the weights (:class:`EMA`), fp16 loss scaling
and the mixed-precision autocast dtype, held by :class:`Optimiser` with its step and checkpoint entries."""
from __future__ import annotations

import torch


class EMA:
    """Exponential moving average of parameters, warmed up as ``decay_k = min(decay, (1 + k) / (10 + k))``
    (``warmup=False``: ``decay`` from the first step). The average lives in ``shadow``: float32 copies of
    ``params`` by default, or given tensors updated in place (e.g. the parameters of a target network, as
    consistency distillation's EMA target)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, shadow: list[torch.Tensor] | None = None,
                 warmup: bool = True):
        self.params, self.decay, self.warmup = params, decay, warmup
        if shadow is not None and [s.shape for s in shadow] != [p.shape for p in params]:
            raise ValueError("shadow: must hold one tensor of each parameter's shape, in order")
        self.shadow = [p.detach().float().clone() for p in params] if shadow is None else shadow

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().to(s.dtype), 1.0 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.dtype))


def make_optimizer(groups: list[dict], weight_decay: float, warmup_steps: int):
    """AdamW over the parameter ``groups`` and its learning-rate schedule: linear warm-up over
    ``warmup_steps`` (0: none), then constant. Returns (optimizer, schedule)."""
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup_steps) if warmup_steps else 1.0)
    return optimizer, schedule


class Optimiser:
    """The optimiser of a run over the parameter ``groups`` (dicts with ``params`` and ``lr``), from
    ``config``'s ``weight_decay``, ``lr_warmup_steps``, ``ema_decay`` (None: no average), ``mixed_precision``
    (``"no"``, ``"bf16"``, ``"fp16"``: loss scaling on CUDA) and ``max_grad_norm``."""

    def __init__(self, groups: list[dict], config) -> None:
        self.trainable = [p for g in groups for p in g["params"]]
        self.optimizer, self.schedule = make_optimizer(groups, config.weight_decay, config.lr_warmup_steps)
        self.ema = EMA(self.trainable, config.ema_decay) if config.ema_decay else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.mixed_precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
        self.max_grad_norm = config.max_grad_norm

    def step(self, loss: torch.Tensor, step: int) -> None:
        """Back-propagate ``loss``, clip the gradient norm, step the optimiser and the learning-rate schedule,
        then update the average (``step``: the 0-based step number, for the average's warm-up)."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(step)

    def state_dict(self) -> dict:
        """The checkpoint entries ``optimizer``, ``schedule``, ``scaler`` and ``ema`` (None without one)."""
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(), "ema": self.ema.shadow if self.ema is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Resume from a checkpoint's entries (:meth:`state_dict`'s keys)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            for s, saved in zip(self.ema.shadow, state["ema"]):
                s.copy_(saved)

    def use_average(self) -> None:
        """Put the average into the parameters (at the end of a run with ``ema_decay``; otherwise nothing)."""
        if self.ema is not None:
            self.ema.copy_to_params()
