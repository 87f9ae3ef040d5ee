"""Extra cases for the exponential-integrator schedulers (DPM-Solver++ multistep / singlestep, UniPC,
DEIS) beyond the shared conformance suite in test_schedulers.py: solver orders and variants against
diffusers, exactness and convergence of the pure step functions on problems with a known answer, the
partial-schedule and dtype paths, config name mapping, and errors."""
from __future__ import annotations

import math

import pytest
import torch

from scheduler_oracle import (MODELSCOPE_DDIM_CONFIG, assert_same_run, close, diffusers_twin, initial_sample, run,
                              toy_model)
from videofusion.schedulers import (DEISMultistepScheduler, DPMSolverMultistepScheduler,
                                    DPMSolverSinglestepScheduler, UniPCMultistepScheduler)
from videofusion.schedulers.dpm_multistep import dpm_solver_pp_first_order, dpm_solver_pp_second_order
from videofusion.schedulers.multistep import multistep_timesteps, vp_alpha_sigma
from videofusion.schedulers.dpm_singlestep import singlestep_orders

DPM, SINGLE, UNIPC, DEIS = (DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler,
                            DEISMultistepScheduler)
ALL = [DPM, SINGLE, UNIPC, DEIS]
IDS = [c.__name__ for c in ALL]
STOCHASTIC = {"algorithm_type": "sde-dpmsolver++"}


def _id(value) -> str:
    return getattr(value, "__name__", str(value)).replace(" ", "")


def compare(cls, steps, seed=None, **overrides):
    for n in steps:
        ours = cls.from_config(MODELSCOPE_DDIM_CONFIG, **overrides)
        theirs = diffusers_twin(cls).from_config(MODELSCOPE_DDIM_CONFIG, **overrides)
        assert_same_run(run(ours, n, seed=seed), run(theirs, n, seed=seed))
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ variants vs diffusers

VARIANTS = [
    (DPM, {"solver_order": 3}),
    (DPM, {"solver_order": 3, "prediction_type": "v_prediction", "lower_order_final": False}),
    (DPM, {"solver_order": 1}),
    (DPM, {"solver_type": "heun"}),
    (DPM, {"use_lu_lambdas": True}),
    (DPM, {"euler_at_final": True, "final_sigmas_type": "sigma_min"}),
    (DPM, {"final_sigmas_type": "sigma_min", "lower_order_final": False}),
    (DPM, {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}),
    (DPM, {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "timestep_spacing": "trailing"}),
    (DPM, {**STOCHASTIC, "use_karras_sigmas": True}),
    (DPM, {**STOCHASTIC, "solver_order": 3, "prediction_type": "v_prediction"}),
    (DPM, {**STOCHASTIC, "solver_type": "heun", "final_sigmas_type": "sigma_min"}),
    (SINGLE, {"solver_order": 3}),
    (SINGLE, {"solver_order": 3, "solver_type": "heun", "prediction_type": "v_prediction"}),
    (SINGLE, {"solver_type": "heun"}),
    (SINGLE, {"solver_order": 1}),
    (SINGLE, {"final_sigmas_type": "sigma_min"}),
    (SINGLE, {"final_sigmas_type": "sigma_min", "solver_order": 3, "lower_order_final": True}),
    (SINGLE, {**STOCHASTIC}),
    (SINGLE, {**STOCHASTIC, "solver_order": 3}),
    (SINGLE, {**STOCHASTIC, "solver_order": 3, "solver_type": "heun"}),
    (UNIPC, {"solver_order": 3}),
    (UNIPC, {"solver_order": 1}),
    (UNIPC, {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"}),
    (UNIPC, {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    (UNIPC, {"predict_x0": False, "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"}),
    (UNIPC, {"disable_corrector": [0, 2]}),
    (UNIPC, {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0, "final_sigmas_type": "sigma_min"}),
    (DEIS, {"solver_order": 3}),
    (DEIS, {"solver_order": 3, "lower_order_final": False, "prediction_type": "sample"}),
    (DEIS, {"solver_order": 1}),
]


@pytest.mark.parametrize("cls,overrides", VARIANTS, ids=[f"{c.__name__}-{o}".replace(" ", "") for c, o in VARIANTS])
def test_variant_matches_diffusers(cls, overrides):
    """Orders 1-3, both solver types, SDE draws, respaced and clipped schedules, final-sigma options:
    timesteps, sigmas and every step's sample equal diffusers' (3 and 6 steps cover the singlestep order
    groups; 16 >= 15 steps turns off the lower-order final steps)."""
    seed = 7 if overrides.get("algorithm_type") == "sde-dpmsolver++" else None
    compare(cls, (1, 3, 6, 16), seed=seed, **overrides)


NOISE_PREDICTION = [
    (cls, {"algorithm_type": algorithm, "solver_order": order, "solver_type": solver, "prediction_type": prediction,
           "final_sigmas_type": "sigma_min", "thresholding": thresholding})
    for cls, algorithm in ((DPM, "dpmsolver"), (DPM, "sde-dpmsolver"), (SINGLE, "dpmsolver"))
    for order in (1, 2, 3) for solver in ("midpoint", "heun")
    for prediction, thresholding in (("epsilon", False), ("v_prediction", False), ("sample", True))
    # diffusers has no third order for sde-dpmsolver, and its singlestep thresholding fails for dpmsolver
    if not (algorithm == "sde-dpmsolver" and order == 3) and not (cls is SINGLE and thresholding)]


@pytest.mark.filterwarnings("ignore:.*deprecated:FutureWarning")
@pytest.mark.parametrize("cls,overrides", NOISE_PREDICTION,
                         ids=[f"{c.__name__}-{o}".replace(" ", "") for c, o in NOISE_PREDICTION])
def test_noise_prediction_solvers_match_diffusers(cls, overrides):
    """diffusers' deprecated noise-prediction DPM-Solver ('dpmsolver', multistep 'sde-dpmsolver'): every
    step's sample equals diffusers' (thresholding re-derives eps from the clipped x0)."""
    seed = 7 if overrides["algorithm_type"] == "sde-dpmsolver" else None
    compare(cls, (3, 6, 16), seed=seed, **overrides)
    with pytest.warns(FutureWarning, match="deprecated"):
        cls(**overrides)


@pytest.mark.parametrize("cls", [DPM, SINGLE], ids=_id)
def test_x0_output_is_diffusers_data_prediction(cls):
    """pred_original_sample (which diffusers' step does not return) is diffusers' convert_model_output."""
    ours, theirs = cls.from_config(MODELSCOPE_DDIM_CONFIG), diffusers_twin(cls).from_config(MODELSCOPE_DDIM_CONFIG)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    x = initial_sample()
    for t in ours.timesteps:
        out = ours.step(toy_model(x, t), t, x)
        if theirs.step_index is None:
            theirs._init_step_index(t)
        close(out.pred_original_sample, theirs.convert_model_output(toy_model(x, t), sample=x), 1e-6, "x0")
        theirs.step(toy_model(x, t), t, x)
        x = out.prev_sample


@pytest.mark.parametrize("cls,start", [(DPM, 3), (SINGLE, 5), (SINGLE, 3), (UNIPC, 5), (DEIS, 2)], ids=_id)
def test_partial_schedule_matches_diffusers(cls, start):
    """Video-to-video: add_noise at the begin index, then denoise; the singlestep solver entered in the
    middle of an order group (start 5 is a second-order step) falls back to first order as diffusers does."""
    x0, noise = initial_sample(1), initial_sample(2)
    finals = []
    for sched in (cls.from_config(MODELSCOPE_DDIM_CONFIG, solver_order=3 if start == 3 else 2),
                  diffusers_twin(cls).from_config(MODELSCOPE_DDIM_CONFIG, solver_order=3 if start == 3 else 2)):
        sched.set_timesteps(12)
        sched.set_begin_index(start)
        timesteps = sched.timesteps[start:]
        x = sched.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
        for t in timesteps:
            x = sched.step(toy_model(x, t), t, x).prev_sample
        finals.append(x)
    close(finals[0], finals[1], 1e-5, "final sample")


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_add_noise_without_begin_index_and_before_set_timesteps(cls):
    """add_noise finds each timestep in the schedule (as diffusers); before set_timesteps it uses the
    training schedule sqrt(abar) x0 + sqrt(1 - abar) noise."""
    x0, noise = initial_sample(1, shape=(2, 4, 2, 8, 8)), initial_sample(2, shape=(2, 4, 2, 8, 8))
    ours = cls.from_config(MODELSCOPE_DDIM_CONFIG)
    t = torch.tensor([999, 10])
    abar = ours.alphas_cumprod[t].reshape(2, 1, 1, 1, 1)
    close(ours.add_noise(x0, noise, t), abar**0.5 * x0 + (1 - abar) ** 0.5 * noise, 1e-6, "training add_noise")
    theirs = diffusers_twin(cls).from_config(MODELSCOPE_DDIM_CONFIG)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    t = ours.timesteps[[0, 6]]
    close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), 1e-6, "schedule add_noise")


@pytest.mark.parametrize("cls", [DPM, SINGLE], ids=_id)
def test_half_precision_matches_diffusers(cls):
    """fp16 samples: DPM multistep updates in float32 and casts back, singlestep stays in fp16; both as diffusers."""
    results = []
    for sched in (cls.from_config(MODELSCOPE_DDIM_CONFIG, **STOCHASTIC),
                  diffusers_twin(cls).from_config(MODELSCOPE_DDIM_CONFIG, **STOCHASTIC)):
        sched.set_timesteps(5)
        x, g = initial_sample().half(), torch.Generator().manual_seed(3)
        for t in sched.timesteps:
            x = sched.step(toy_model(x, t), t, x, generator=g).prev_sample
        results.append(x)
    assert results[0].dtype == torch.float16
    close(results[0].float(), results[1].float(), 2e-3, "fp16 final sample")


def test_sde_noise_depends_on_generator():
    """The SDE variant draws fresh noise each step from the generator: same seed, same sample; other seed, other."""
    def sample(seed):
        sched = DPM.from_config(MODELSCOPE_DDIM_CONFIG, **STOCHASTIC)
        return run(sched, 8, seed=seed)["samples"][-1]
    assert torch.equal(sample(1), sample(1))
    assert (sample(1) - sample(2)).abs().max() > 1e-3
    ode = run(DPM.from_config(MODELSCOPE_DDIM_CONFIG), 8, seed=1)["samples"][-1]
    assert (sample(1) - ode).abs().max() > 1e-3


# ------------------------------------------------------------------ the math, against known answers

def gaussian_data_error(cls, num_inference_steps: int, solver_order: int) -> float:
    """Relative error of sampling data ~ N(0, 1) with its exact denoiser x0(x_t) = alpha_t x_t (a 'sample'
    prediction; VP: alpha_t^2 + sigma_t^2 = 1). The marginals are all N(0, 1), so the probability-flow ODE
    solution is x_t = x_T, while each solver step is only exact to its order in lambda. Karras sigmas;
    compared before the last step, which would land on the schedule's own sigma_min (h = 0)."""
    overrides = {"solver_order": solver_order, "use_karras_sigmas": True, "prediction_type": "sample"}
    if cls is not SINGLE:
        overrides["lower_order_final"] = False
    sched = cls.from_config(MODELSCOPE_DDIM_CONFIG, **overrides)
    sched.set_timesteps(num_inference_steps)
    x = x_T = initial_sample()
    for i, t in enumerate(sched.timesteps[:-1]):
        x = sched.step(vp_alpha_sigma(sched.sigmas[i])[0] * x, t, x).prev_sample
    return ((x - x_T).abs().max() / x_T.abs().max()).item()


@pytest.mark.parametrize("cls,order", [(DPM, 2), (DPM, 3), (SINGLE, 2), (SINGLE, 3), (UNIPC, 2), (UNIPC, 3),
                                       (DEIS, 2), (DEIS, 3)], ids=_id)
def test_higher_order_converges_faster_on_gaussian_data(cls, order):
    """Against the known ODE solution, the order-2/3 solvers beat first order (DDIM, error ~ 1/n) by far at
    25 steps, and their error shrinks faster than first order's (which halves) when the steps double."""
    first = gaussian_data_error(DPM, 25, 1)
    high, high_doubled = gaussian_data_error(cls, 25, order), gaussian_data_error(cls, 49, order)
    assert 0.45 < gaussian_data_error(DPM, 49, 1) / first < 0.55
    assert high < first / 4, (first, high)
    assert high_doubled < 0.4 * high, (high, high_doubled)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_exact_for_a_single_data_point(cls):
    """A denoiser that always predicts the same x0 (one-point data): every update of every order integrates it
    exactly, so after any number of steps the sample is alpha * x0 + sigma_vp * eps_T."""
    target = initial_sample(5)
    for overrides in ({}, {"solver_order": 3}):
        sched = cls.from_config(MODELSCOPE_DDIM_CONFIG, prediction_type="sample", **overrides)
        sched.set_timesteps(7)
        x = initial_sample()
        a_T, s_T = vp_alpha_sigma(sched.sigmas[0])
        eps = (x - a_T * target) / s_T
        for t in sched.timesteps:
            x = sched.step(target, t, x).prev_sample
        a_0, s_0 = vp_alpha_sigma(sched.sigmas[-1])
        close(x, a_0 * target + s_0 * eps, 1e-4, f"{cls.__name__} {overrides}")


def test_first_order_is_ddim_and_lands_on_x0():
    """DPM-Solver++(1) is DDIM (eta 0): x_next = alpha_next x0 + sigma_next eps; a step to sigma 0 returns x0
    exactly, for the second-order update too."""
    x, x0, x0_prev = initial_sample(1), initial_sample(2), initial_sample(3)
    sigma, sigma_next = torch.tensor(3.0), torch.tensor(1.5)
    a, s = vp_alpha_sigma(sigma)
    a_n, s_n = vp_alpha_sigma(sigma_next)
    eps = (x - a * x0) / s
    close(dpm_solver_pp_first_order(x, x0, sigma, sigma_next), a_n * x0 + s_n * eps, 1e-5, "DDIM")
    zero = torch.tensor(0.0)
    assert torch.equal(dpm_solver_pp_first_order(x, x0, sigma, zero), x0)
    assert torch.equal(dpm_solver_pp_first_order(x, x0, sigma, zero, noise=x0_prev), x0)
    # second order with x0 == x0_other reduces to first order (the derivative estimate is zero)
    close(dpm_solver_pp_second_order(x, x0, x0, sigma, torch.tensor(5.0), sigma_next),
          dpm_solver_pp_first_order(x, x0, sigma, sigma_next), 1e-6, "2M, constant x0")


def test_unipc_bh1_final_step_is_finite():
    """Deviation from diffusers: with solver_type 'bh1' and a final sigma of 0 diffusers' last UniP step
    computes (-inf) * 0 = NaN; ours returns the data prediction, and every earlier step equals diffusers'."""
    ours = UNIPC.from_config(MODELSCOPE_DDIM_CONFIG, solver_type="bh1")
    theirs = diffusers_twin(UNIPC).from_config(MODELSCOPE_DDIM_CONFIG, solver_type="bh1")
    a, b = run(ours, 6), run(theirs, 6)
    for i in range(5):
        close(a["samples"][i], b["samples"][i], 1e-5, f"step {i}")
    assert torch.isnan(b["samples"][-1]).all()
    assert torch.equal(a["samples"][-1], a["x0"][-1])


# ------------------------------------------------------------------ schedules and configs

def test_timestep_spacing_differs_from_ddim_as_in_diffusers():
    """The DPM-Solver family's own spacing (n+1 linspace points, T // (n+1) leading step)."""
    assert multistep_timesteps(1000, 4, "linspace").tolist() == [999, 749, 500, 250]
    assert multistep_timesteps(1000, 4, "leading", steps_offset=1).tolist() == [801, 601, 401, 201]
    assert multistep_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert multistep_timesteps(1000, 4, "trailing", last_timestep=900).tolist() == [899, 649, 399, 149]


@pytest.mark.parametrize("overrides", [{"use_karras_sigmas": True}, {"use_lu_lambdas": True}], ids=_id)
def test_cosine_schedule_respaced_timesteps_are_truncated_like_diffusers(overrides):
    """With squaredcos_cap_v2 DPM-Solver keeps the fractional respaced timesteps and truncates them to int64.
    (The stepping itself is not compared: the cosine schedule's huge sigma_max repeats timestep 998, and the
    index rule both libraries share then starts at the second entry.)"""
    ours = DPM(beta_schedule="squaredcos_cap_v2", **overrides)
    theirs = diffusers_twin(DPM)(beta_schedule="squaredcos_cap_v2", **overrides)
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-6, atol=0)


def test_singlestep_orders():
    assert singlestep_orders(6, 2, False) == [1, 2, 1, 2, 1, 2]
    assert singlestep_orders(6, 2, True) == [1, 2, 1, 2, 1, 1]
    assert singlestep_orders(7, 3, True) == [1, 2, 3, 1, 2, 3, 1]
    assert singlestep_orders(8, 3, True) == [1, 2, 3, 1, 2, 3, 1, 2]
    assert singlestep_orders(6, 3, True) == [1, 2, 3, 1, 2, 1]


def test_singlestep_forces_lower_order_final_without_rewriting_config():
    """diffusers rewrites lower_order_final=True into the config at set_timesteps; we decide it per call."""
    sched = SINGLE.from_config(MODELSCOPE_DDIM_CONFIG, final_sigmas_type="sigma_min", lower_order_final=False)
    sched.set_timesteps(5)  # odd: forced
    assert sched.order_list == [1, 2, 1, 2, 1] and sched.config.lower_order_final is False
    sched.set_timesteps(6)  # even: not forced (diffusers would still force it after the call above)
    assert sched.order_list == [1, 2, 1, 2, 1, 2]


@pytest.mark.parametrize("source,target,expected", [
    (DEIS, DPM, {"algorithm_type": "dpmsolver++", "solver_type": "midpoint"}),
    (UNIPC, DPM, {"solver_type": "midpoint"}),
    (DPM, UNIPC, {"solver_type": "bh2"}),
    (DPM, DEIS, {"algorithm_type": "deis", "solver_type": "logrho"}),
    (UNIPC, SINGLE, {"solver_type": "midpoint"}),
], ids=_id)
def test_solver_names_map_across_classes_like_diffusers(source, target, expected):
    """Explicitly set algorithm/solver names of another solver map to this one's, as diffusers maps them
    (where diffusers manages: its DPM-Solver rejects an explicit algorithm_type='deis')."""
    explicit = {"solver_type": source.defaults["solver_type"]}
    if "algorithm_type" in source.defaults:
        explicit["algorithm_type"] = source.defaults["algorithm_type"]
    ours = target.from_config(source(**explicit).config)
    for key, value in expected.items():
        assert ours.config[key] == value, key
    twin = diffusers_twin(source)(**explicit).config
    if source is DEIS and target is DPM:  # diffusers validates final_sigmas_type against the unmapped name
        with pytest.raises(ValueError, match="not supported for `algorithm_type` deis"):
            diffusers_twin(target).from_config(twin)
        return
    theirs = diffusers_twin(target).from_config(twin)
    assert all(theirs.config[key] == value for key, value in expected.items())


@pytest.mark.parametrize("cls,config,match", [
    (DPM, {"algorithm_type": "dpmsolver"}, "final_sigmas_type 'zero' is not supported"),
    (SINGLE, {"algorithm_type": "dpmsolver"}, "final_sigmas_type 'zero' is not supported"),
    (DPM, {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}, "third-order"),
    (SINGLE, {"algorithm_type": "sde-dpmsolver"}, "algorithm_type"),
    (DEIS, {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    (DPM, {"solver_type": "rk4"}, "solver_type"),
    (UNIPC, {"solver_type": "bh3"}, "solver_type"),
    (DPM, {"solver_order": 4}, "solver_order"),
    (SINGLE, {"solver_order": 0}, "solver_order"),
    (UNIPC, {"solver_order": 2.5}, "solver_order"),
    (DPM, {"final_sigmas_type": "one"}, "final_sigmas_type"),
    (DPM, {"use_flow_sigmas": True}, "use_flow_sigmas"),
    (DEIS, {"use_flow_sigmas": True}, "use_flow_sigmas"),
    (DPM, {"variance_type": "learned_range"}, "variance_type"),
    (DPM, {"use_karras_sigmas": True, "use_lu_lambdas": True}, "use_lu_lambdas"),
    (UNIPC, {"use_karras_sigmas": True, "use_exponential_sigmas": True}, "only one of"),
    (UNIPC, {"predict_x0": False}, "predict_x0"),
], ids=_id)
def test_bad_config(cls, config, match):
    with pytest.raises(ValueError, match=match):
        cls(**config)


def test_step_with_unknown_timestep_raises():
    sched = DPM.from_config(MODELSCOPE_DDIM_CONFIG)
    sched.set_timesteps(4)
    x = initial_sample()
    with pytest.raises(ValueError, match="timestep 5"):
        sched.step(x, 5, x)


def test_lu_lambdas_are_uniform_in_log_snr():
    sched = DPM.from_config(MODELSCOPE_DDIM_CONFIG, use_lu_lambdas=True)
    sched.set_timesteps(10)
    log_sigmas = sched.sigmas[:-1].double().log()
    steps = log_sigmas[1:] - log_sigmas[:-1]
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-5)
    abar_max_t = sched.alphas_cumprod[-1]
    assert math.isclose(sched.sigmas[0].item(), ((1 - abar_max_t) / abar_max_t).sqrt().item(), rel_tol=1e-5)
