"""Scripts' sampling loops written against diffusers 0.42.1's schedulers run unchanged, with diffusers as the
oracle: set_timesteps' signature, custom timesteps / sigmas and their errors, PNDM's step_prk / step_plms and
stage timesteps, the arity of step(return_dict=False), the state before set_timesteps, DDPM's variances. Each
test builds ours and diffusers' scheduler from the same config and compares numbers (1e-5, relative to the
tensor's scale). Config behaviour: tests/test_schedulers_compat.py."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from scheduler_oracle import MODELSCOPE_DDIM_CONFIG, close, diffusers_twin, initial_sample, toy_model
from test_schedulers import ALL, IDS, RTOL, seed_for
from test_schedulers_compat import DEIS, DPM, MS, SINGLE, UNIPC, build_both, same_run
from videofusion.schedulers import (DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler,
                                    EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler,
                                    PNDMScheduler, SchedulerOutput)

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context"),
              pytest.mark.filterwarnings("ignore:.*not config keys of this class:UserWarning")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(models_one_thread):
    yield


# ------------------------------------------------------------------ 1. custom timesteps and sigmas

@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_set_timesteps_signature_is_diffusers(cls):
    """Same parameter names, order and defaults, so positional calls and pipelines' inspect checks
    ("timesteps" in the signature) behave as with diffusers."""
    def params(c):
        return [(p.name, p.default) for p in inspect.signature(c.set_timesteps).parameters.values()]
    assert params(cls) == params(diffusers_twin(cls))


CUSTOM = [
    (DDPMScheduler, {}, {"timesteps": [999, 760, 501, 240, 20, 0]}),
    (DDPMScheduler, {"variance_type": "fixed_large"}, {"timesteps": np.array([900, 400, 3])}),
    (EulerDiscreteScheduler, {}, {"timesteps": [999, 700.5, 301, 80, 2]}),
    (EulerDiscreteScheduler, {"final_sigmas_type": "sigma_min"}, {"timesteps": [999, 600, 300, 50], "device": "cpu"}),
    (EulerDiscreteScheduler, {"interpolation_type": "log_linear"}, {"timesteps": [999, 600, 300, 50]}),
    (EulerDiscreteScheduler, {}, {"sigmas": [14.6, 7.0, 3.1, 1.2, 0.4, 0.0]}),
    (EulerDiscreteScheduler, {"use_karras_sigmas": True}, {"sigmas": torch.tensor([10.0, 2.0, 0.5, 0.1])}),
    (HeunDiscreteScheduler, {}, {"timesteps": [999, 700.5, 301, 80, 2]}),
    (HeunDiscreteScheduler, {}, {"num_inference_steps": 6, "num_train_timesteps": 500}),
    (HeunDiscreteScheduler, {"timestep_spacing": "leading"}, {"num_inference_steps": 6, "num_train_timesteps": 500}),
    (DPM, {}, {"timesteps": [999, 800, 600, 300, 120, 10]}),
    (DPM, {"solver_order": 3, "final_sigmas_type": "sigma_min"}, {"timesteps": torch.tensor([950, 500, 100, 20])}),
    (SINGLE, {}, {"timesteps": [999, 800, 600, 300, 120, 10]}),
    (SINGLE, {"solver_order": 3}, {"timesteps": [999, 700, 400, 200, 50]}),
    (UNIPC, {}, {"num_inference_steps": 6, "mu": 0.5}),
]


@pytest.mark.parametrize("cls,config,schedule", CUSTOM,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CUSTOM)])
def test_custom_schedule_matches_diffusers(cls, config, schedule):
    """set_timesteps(timesteps=...) / (sigmas=...): timesteps, sigmas, num_inference_steps and a seeded loop, for
    epsilon and v-prediction."""
    for prediction_type in ("epsilon", "v_prediction"):
        ours, theirs = build_both(cls, MODELSCOPE_DDIM_CONFIG, prediction_type=prediction_type, **config)
        same_run(ours, theirs, steps=None, rtol=RTOL.get(cls, 1e-5), schedule=schedule)
        assert ours.num_inference_steps == theirs.num_inference_steps
        if hasattr(theirs, "sigmas"):
            torch.testing.assert_close(ours.sigmas, theirs.sigmas.float(), rtol=1e-6, atol=1e-7)
    if cls is EulerDiscreteScheduler and "sigmas" in schedule:  # continuous v timesteps follow custom sigmas too
        ours, theirs = build_both(cls, MS, timestep_type="continuous", prediction_type="v_prediction")
        same_run(ours, theirs, steps=None, schedule=schedule)


BAD_SCHEDULES = [
    (DDPMScheduler, {}, {"num_inference_steps": 5, "timesteps": [999, 500]}),
    (DDPMScheduler, {}, {"timesteps": [500, 999]}),
    (DDPMScheduler, {}, {"timesteps": [999, 999, 10]}),
    (DDPMScheduler, {}, {"timesteps": [1000, 500]}),
    (DDPMScheduler, {}, {}),
    (EulerDiscreteScheduler, {}, {}),
    (EulerDiscreteScheduler, {}, {"num_inference_steps": 5, "timesteps": [999, 500]}),
    (EulerDiscreteScheduler, {}, {"num_inference_steps": 5, "sigmas": [3.0, 0.0]}),
    (EulerDiscreteScheduler, {}, {"timesteps": [999, 500], "sigmas": [3.0, 0.0]}),
    (EulerDiscreteScheduler, {"use_karras_sigmas": True}, {"timesteps": [999, 500]}),
    (EulerDiscreteScheduler, {"use_exponential_sigmas": True}, {"timesteps": [999, 500]}),
    (EulerDiscreteScheduler, {"timestep_type": "continuous", "prediction_type": "v_prediction"},
     {"timesteps": [999, 500]}),
    (HeunDiscreteScheduler, {}, {}),
    (HeunDiscreteScheduler, {}, {"num_inference_steps": 5, "timesteps": [999, 500]}),
    (HeunDiscreteScheduler, {"use_karras_sigmas": True}, {"timesteps": [999, 500]}),
    (DPM, {}, {}),
    (DPM, {}, {"num_inference_steps": 5, "timesteps": [999, 500]}),
    (DPM, {"use_karras_sigmas": True}, {"timesteps": [999, 500]}),
    (DPM, {"use_lu_lambdas": True}, {"timesteps": [999, 500]}),
    (DPM, {}, {"num_inference_steps": 5, "mu": 0.5}),
    (SINGLE, {}, {}),
    (SINGLE, {}, {"num_inference_steps": 5, "timesteps": [999, 500]}),
    (SINGLE, {"use_karras_sigmas": True}, {"timesteps": [999, 500]}),
    (SINGLE, {}, {"num_inference_steps": 5, "mu": 0.5}),
    (DEIS, {}, {"num_inference_steps": 5, "mu": 0.5}),
    (UNIPC, {}, {"num_inference_steps": 5, "sigmas": [3.0, 1.0, 0.0]}),
    (DDIMScheduler, {}, {"num_inference_steps": 5, "timesteps": [999, 500]}),
    (PNDMScheduler, {}, {"timesteps": [999, 500]}),
    (LMSDiscreteScheduler, {}, {"sigmas": [3.0, 0.0]}),
    (EulerAncestralDiscreteScheduler, {}, {"timesteps": [999, 500]}),
    (DEIS, {}, {"timesteps": [999, 500]}),
]


@pytest.mark.parametrize("cls,config,schedule", BAD_SCHEDULES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(BAD_SCHEDULES)])
def test_bad_custom_schedule_raises_like_diffusers(cls, config, schedule):
    """diffusers' validation errors: both num_inference_steps and timesteps, neither, timesteps not strictly
    descending or past the training range (DDPM), custom timesteps with respaced sigmas, mu without dynamic
    shifting (an assert in diffusers: ours is ValueError and AssertionError), a keyword the class lacks."""
    with pytest.raises(Exception) as theirs:
        diffusers_twin(cls)(**config).set_timesteps(**schedule)
    with pytest.raises(type(theirs.value)):
        cls(**config).set_timesteps(**schedule)


# ------------------------------------------------------------------ 2. PNDM's step_prk / step_plms

def test_pndm_step_prk_and_step_plms_are_diffusers():
    """Public, same signatures; called directly (12 Runge-Kutta stages, then PLMS) they give diffusers' numbers and
    return (prev_sample,) with return_dict=False; step dispatches to them."""
    twin = diffusers_twin(PNDMScheduler)
    for name in ("step_prk", "step_plms"):
        assert list(inspect.signature(getattr(PNDMScheduler, name)).parameters) == \
            list(inspect.signature(getattr(twin, name)).parameters)
    finals = []
    for sched in build_both(PNDMScheduler, MODELSCOPE_DDIM_CONFIG, skip_prk_steps=False):
        sched.set_timesteps(6)
        x = initial_sample()
        for i, t in enumerate(sched.timesteps):
            fn = sched.step_prk if i < len(sched.prk_timesteps) else sched.step_plms
            out = fn(toy_model(x, t), t, x, return_dict=False)
            assert isinstance(out, tuple) and len(out) == 1
            x = out[0]
        finals.append(x)
    close(finals[0], finals[1], 1e-5, "final sample")
    ours = PNDMScheduler.from_config(MODELSCOPE_DDIM_CONFIG)  # skip_prk_steps: PLMS only
    ours.set_timesteps(4)
    x = initial_sample()
    out = ours.step_plms(toy_model(x, ours.timesteps[0]), ours.timesteps[0], x)
    assert isinstance(out, SchedulerOutput) and ours.counter == 1
    with pytest.raises(ValueError, match="set_timesteps"):
        PNDMScheduler().step_prk(x, 999, x)
    with pytest.raises(ValueError, match="PRK warm-up"):
        sched = PNDMScheduler(skip_prk_steps=False)
        sched.set_timesteps(5)
        sched.step_plms(x, 999, x)


# ------------------------------------------------------------------ 3. step(return_dict=False)

@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_step_tuple_has_diffusers_arity(cls):
    """(prev_sample, pred_original_sample) for DDIM, DDPM, LMS, Euler, Euler a, Heun; (prev_sample,) for PNDM and
    the DPM-Solver family, UniPC, DEIS; the same numbers. SchedulerOutput still reads out[0] and out['prev_sample']."""
    outs = []
    for sched in build_both(cls, MODELSCOPE_DDIM_CONFIG):
        sched.set_timesteps(4)
        x = initial_sample()
        kwargs = {"generator": torch.Generator().manual_seed(0)} if seed_for(cls) is not None else {}
        t = sched.timesteps[0]
        outs.append(sched.step(toy_model(sched.scale_model_input(x, t), t), t, x, return_dict=False, **kwargs))
    ours, theirs = outs
    assert isinstance(ours, tuple) and len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        close(a, b, 1e-5, cls.__name__)
    sched = cls.from_config(MODELSCOPE_DDIM_CONFIG)
    sched.set_timesteps(4)
    out = sched.step(toy_model(x, sched.timesteps[0]), sched.timesteps[0], x)
    assert out[0] is out["prev_sample"] is out.prev_sample


# ------------------------------------------------------------------ 4. state, variances, PNDM stages

def _initial_state(sched) -> dict:
    """What a script can read of a scheduler right after construction (numbers as lists, tensors' dtypes)."""
    state = {"num_inference_steps": sched.num_inference_steps}
    for name in ("timesteps", "sigmas", "order_list", "prk_timesteps", "plms_timesteps"):
        value = getattr(sched, name, "absent")
        if isinstance(value, (torch.Tensor, np.ndarray)):
            value = (str(value.dtype), np.asarray(value, dtype=np.float64).round(5).tolist())
        state[name] = value
    return state


@pytest.mark.parametrize("config", [{}, {"timestep_spacing": "trailing", "num_train_timesteps": 50},
                                    {"prediction_type": "v_prediction", "timestep_type": "continuous"},
                                    {"use_karras_sigmas": True, "num_train_timesteps": 100}], ids=range(4))
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_state_before_set_timesteps_is_diffusers(cls, config):
    config = {k: v for k, v in config.items() if k in cls.defaults}
    ours, theirs = cls(**config), diffusers_twin(cls)(**config)
    mine, their = _initial_state(ours), _initial_state(theirs)
    if cls is PNDMScheduler:  # diffusers' PNDM has timesteps None (its step then fails); ours the training ones
        assert their.pop("timesteps") is None and mine.pop("timesteps")[1] == list(range(len(ours)))[::-1]
    assert mine == their


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_step_right_after_construction_is_diffusers(cls):
    """``for t in scheduler.timesteps: scheduler.step(...)`` without set_timesteps: the same numbers where
    diffusers' class runs (DDPM, Euler, Euler a, Heun, LMS), an error where it fails."""
    outcomes = []
    for sched in (cls(num_train_timesteps=50), diffusers_twin(cls)(num_train_timesteps=50)):
        x = initial_sample()
        try:
            for t in list(sched.timesteps)[:4]:
                kwargs = {"generator": torch.Generator().manual_seed(0)} \
                    if "generator" in inspect.signature(sched.step).parameters else {}
                x = sched.step(0.1 * sched.scale_model_input(x, t), t, x, **kwargs).prev_sample
            outcomes.append(x)
        except (ValueError, TypeError) as e:  # diffusers' PNDM: TypeError (timesteps is None); ours ValueError
            outcomes.append(e)
    mine, theirs = outcomes
    assert isinstance(mine, Exception) == isinstance(theirs, Exception), outcomes
    if isinstance(mine, Exception):
        assert "set_timesteps" in str(mine)
    else:
        close(mine, theirs, 1e-5, cls.__name__)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned",
                                           "learned_range"])
def test_get_variance_is_diffusers(variance_type):
    ours = DDPMScheduler(variance_type=variance_type)
    theirs = diffusers_twin(DDPMScheduler)(variance_type=variance_type)
    predicted = torch.tensor([0.3, -0.2])
    for t in (0, 1, 487, 999):
        assert torch.equal(ours._get_variance(t, predicted), theirs._get_variance(t, predicted)), t
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    for t in ours.timesteps:
        assert torch.equal(ours._get_variance(t, predicted), theirs._get_variance(t, predicted)), t
    ours, theirs = DDIMScheduler(**MS), diffusers_twin(DDIMScheduler)(**MS)
    for t, prev in ((0, 0), (420, 400), (980, 960), (999, 998), (20, -1)):
        assert torch.equal(ours._get_variance(t, prev), theirs._get_variance(t, prev)), (t, prev)


@pytest.mark.parametrize("config", [{}, {"skip_prk_steps": True}, {"timestep_spacing": "linspace"},
                                    {"timestep_spacing": "trailing", "skip_prk_steps": True}], ids=range(4))
def test_pndm_prk_and_plms_timesteps_are_diffusers(config):
    ours, theirs = PNDMScheduler.from_config(MS, **config), diffusers_twin(PNDMScheduler).from_config(MS, **config)
    for n in (4, 10, 25):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        for name in ("prk_timesteps", "plms_timesteps"):
            assert np.array_equal(getattr(ours, name), getattr(theirs, name)), (n, name)
