"""UniPC: unified predictor-corrector sampler (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models": the UniP-p predictor and UniC-p corrector, B(h) variants).

Each step first corrects the sample the previous step predicted, using the model output just computed at it
(UniC, no extra model call), then predicts the next sample from the history of outputs (UniP).
"""

from __future__ import annotations

from typing import Any

import torch

from .multistep import (
    ExponentialIntegratorScheduler,
    data_prediction,
    half_log_snr,
    predict_epsilon,
    sigma_spacing_of,
    vp_alpha_sigma,
)


def unipc_bh_update(
    sample: torch.Tensor,
    m0: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    history: list[tuple[torch.Tensor, torch.Tensor]],
    order: int,
    solver_type: str = "bh2",
    predict_x0: bool = True,
    model_next: torch.Tensor | None = None,
) -> torch.Tensor:
    """One UniPC update of `sample` from `sigma` (where the converted model output is `m0`) to `sigma_next`.

    history: `order - 1` earlier (converted output, sigma) pairs, newest first. Without `model_next` this is
    the predictor UniP-`order`; with `model_next` (the converted output at `sigma_next`, from the model call
    on the predicted sample) it is the corrector UniC-`order`, of accuracy order + 1. `solver_type` picks
    B(h) = h ('bh1') or e^h - 1 ('bh2'); `predict_x0` selects the data- (True) or noise-prediction form.
    """
    device = sample.device  # the coefficients are computed where the sample is, as diffusers does
    sigma, sigma_next = sigma.to(device), sigma_next.to(device)
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    alpha_s0, sigma_s0 = vp_alpha_sigma(sigma)
    lambda_s0 = half_log_snr(sigma)
    h = half_log_snr(sigma_next) - lambda_s0

    rks, d1s = [], []
    for mi, sigma_i in history:
        rk = (half_log_snr(sigma_i.to(device)) - lambda_s0) / h
        rks.append(rk)
        d1s.append((mi - m0) / rk)
    rks.append(torch.ones((), device=device))
    rks = torch.stack(rks)

    # the order conditions R rho = b (Zhao et al. 2023), with the phi functions of hh
    hh = -h if predict_x0 else h
    h_phi_1 = torch.expm1(hh)  # h * phi_1(h) = e^h - 1
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    b_h = hh if solver_type == "bh1" else torch.expm1(hh)
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    R, b = torch.stack(rows), torch.stack(b)

    if predict_x0:
        x_t = sigma_t / sigma_s0 * sample - alpha_t * h_phi_1 * m0
        scale = alpha_t * b_h
    else:
        x_t = alpha_t / alpha_s0 * sample - sigma_t * h_phi_1 * m0
        scale = sigma_t * b_h
    d1s = torch.stack(d1s, dim=1) if d1s else None  # (b, order-1, c, f, h, w)

    if model_next is None:  # predictor: rho solves the (order-1)-sized system; 1/2 for order 2
        if d1s is None:  # UniP-1 is DDIM (diffusers subtracts B(h) * 0, NaN for 'bh1' at a final sigma of 0)
            return x_t.to(sample.dtype)
        if order == 2:
            rhos = torch.ones(1, dtype=sample.dtype, device=device) * 0.5
        else:
            rhos = torch.linalg.solve(R[:-1, :-1], b[:-1]).to(sample.dtype)
        res = torch.einsum("k,bk...->b...", rhos, d1s)
        return (x_t - scale * res).to(sample.dtype)

    # corrector: the new point joins the system with rk = 1; 1/2 for order 1
    if order == 1:
        rhos = torch.ones(1, dtype=sample.dtype, device=device) * 0.5
    else:
        rhos = torch.linalg.solve(R, b).to(sample.dtype)
    res = torch.einsum("k,bk...->b...", rhos[:-1], d1s) if d1s is not None else 0
    return (x_t - scale * (res + rhos[-1] * (model_next - m0))).to(sample.dtype)


class UniPCMultistepScheduler(ExponentialIntegratorScheduler):
    """UniPC (UniP-p predictor + UniC-p corrector), diffusers' `UniPCMultistepScheduler`.

    Config keys and defaults are diffusers'. `solver_order` p (2 for guided sampling), `solver_type` 'bh1' or
    'bh2', `predict_x0` data- or noise-prediction form, `disable_corrector` step indices whose predicted sample
    is not corrected at the next step, `lower_order_final` lowers the order on the last steps, `final_sigmas_type`,
    `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas` with optional `sigma_min` / `sigma_max`.
    Not implemented: the flow-matching options (ValueError); `solver_p` (an external predictor) is not read.
    """

    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        solver_order=2, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0, predict_x0=True, solver_type="bh2", lower_order_final=True, disable_corrector=[],
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, use_flow_sigmas=False,
        timestep_spacing="linspace", steps_offset=0, final_sigmas_type="zero", rescale_betas_zero_snr=False,
        sigma_min=None, sigma_max=None,
    )
    choices = {
        **ExponentialIntegratorScheduler.choices, "solver_type": ("bh1", "bh2"),
        "final_sigmas_type": ("zero", "sigma_min"),
    }
    # DPM-Solver / DEIS names, mapped as diffusers maps them
    option_aliases = {"solver_type": {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}}

    def _reset_history(self) -> None:
        super()._reset_history()
        self.last_sample: torch.Tensor | None = None  # the sample before the last predictor step
        self.this_order = 0

    def _validate(self, values: dict[str, Any]) -> None:
        super()._validate(values)
        order = values["solver_order"]
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"solver_order must be an int >= 1, got {order!r}")
        if not values["predict_x0"] and values["final_sigmas_type"] == "zero":
            raise ValueError("predict_x0=False needs final_sigmas_type='sigma_min': the noise-prediction update is "
                             "undefined at sigma 0 (diffusers returns NaN there)")

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Timesteps (int64, descending, on `device`) and sigmas (float32 CPU, plus the final sigma).

        As diffusers: custom `sigmas` are for flow-matching models only (ValueError here, as there without
        use_flow_sigmas); `mu` (their dynamic time shift) has no effect without them and is ignored.
        """
        if sigmas is not None:
            raise ValueError("Passing `sigmas` is only supported when `use_flow_sigmas=True` (flow-matching models), "
                             f"which {type(self).__name__} does not implement.")
        c = self.config
        timesteps, sigmas = self._spaced_schedule(num_inference_steps, c.timestep_spacing, c.steps_offset)
        if c.final_sigmas_type == "zero":
            sigma_last = 0
        else:  # the respaced schedule ends on its own last sigma, the plain one on the training minimum
            sigma_last = sigmas[-1] if sigma_spacing_of(self.own_config) else self._training_sigma_min()
        self._set_schedule(timesteps, sigmas, sigma_last, device)

    def _convert(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The data prediction x0 (`predict_x0`, thresholded if asked) or the noise prediction."""
        c, sigma = self.config, self.sigmas[self._step_index]
        if not c.predict_x0:
            return predict_epsilon(model_output, sample, sigma, c.prediction_type)
        return data_prediction(model_output, sample, sigma, c)

    def _history(self, index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The `this_order - 1` converted outputs before the newest one, newest first, with their sigmas
        (the newest output belongs to step `index`)."""
        return [(self.model_outputs[-(k + 1)], self.sigmas[index - k]) for k in range(1, self.this_order)]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """Correct `sample` (UniC) with this model output, then predict the next sample (UniP).

        model_output, sample: (b, c, f, h, w). Returns SchedulerOutput(prev_sample, pred_original_sample=x0
        when `predict_x0`, else None) or that tuple. Deterministic: `generator` is accepted (the pipeline passes
        it to every scheduler) and not used.
        """
        i = self._start_step(timestep)
        c = self.config
        converted = self._convert(model_output, sample)
        if i > 0 and (i - 1) not in c.disable_corrector and self.last_sample is not None:
            sample = unipc_bh_update(
                self.last_sample, self.model_outputs[-1], self.sigmas[i - 1], self.sigmas[i], self._history(i - 1),
                self.this_order, c.solver_type, c.predict_x0, model_next=converted,
            )
        self.model_outputs = [*self.model_outputs[1:], converted]  # oldest first

        order = min(c.solver_order, len(self.timesteps) - i) if c.lower_order_final else c.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm up: one more past output each step
        self.last_sample = sample
        prev = unipc_bh_update(
            sample, converted, self.sigmas[i], self.sigmas[i + 1], self._history(i), self.this_order, c.solver_type,
            c.predict_x0,
        )
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index += 1
        return self._output(prev, converted if c.predict_x0 else None, return_dict)

