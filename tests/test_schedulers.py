"""Conformance suite for every scheduler: trajectories, timesteps, noise draws and configs match
diffusers' scheduler of the same name; save/load and config swaps interoperate both ways; bad
input raises clear errors. Extra cases per algorithm live in test_schedulers_multistep.py."""
from __future__ import annotations

import inspect
import json

import pytest
import torch

from scheduler_oracle import (MODELSCOPE_DDIM_CONFIG, SHAPE, assert_config_matches, assert_same_run, close,
                              diffusers_twin, initial_sample, run, toy_model)
from videofusion.schedulers import (SCHEDULER_CLASSES, SCHEDULERS, DDIMScheduler, DDPMScheduler,
                                    DEISMultistepScheduler, DPMSolverMultistepScheduler,
                                    DPMSolverSinglestepScheduler, EulerAncestralDiscreteScheduler,
                                    EulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler, LMSDiscreteScheduler,
                                    PNDMScheduler, SchedulerConfig, SchedulerOutput, UniPCMultistepScheduler,
                                    get_scheduler_class, make_scheduler)
from videofusion.schedulers.schedules import make_betas, rescale_zero_terminal_snr, spaced_timesteps

# diffusers' own schedulers mix numpy and torch in ways numpy 2 flags on every call
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context")]

# The parametrisation list: every scheduler class, both helpers' (S2 may extend this list).
ALL = [
    DDIMScheduler, DDPMScheduler, PNDMScheduler, LMSDiscreteScheduler, EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
    DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler, DEISMultistepScheduler,
    LCMScheduler,
]
IDS = [c.__name__ for c in ALL]
SPACINGS = ("leading", "trailing", "linspace")
STEPS = (1, 2, 5, 25, 50)


def predictions(cls) -> list[str]:
    return [p for p in ("epsilon", "v_prediction", "sample") if p in cls.choices["prediction_type"]]


def seed_for(cls) -> int | None:
    """Seed a generator for step() where diffusers' step takes one (so stochastic variants draw)."""
    return 1234 if "generator" in inspect.signature(diffusers_twin(cls).step).parameters else None


def both(cls, config=MODELSCOPE_DDIM_CONFIG, **overrides):
    return cls.from_config(config, **overrides), diffusers_twin(cls).from_config(config, **overrides)


def compare(cls, steps=STEPS, config=MODELSCOPE_DDIM_CONFIG, rtol=1e-5, step_kwargs=None, **overrides):
    for n in steps:
        ours, theirs = both(cls, config, **overrides)
        kw = dict(step_kwargs or {})
        assert_same_run(run(ours, n, seed=seed_for(cls), **kw), run(theirs, n, seed=seed_for(cls), **kw), rtol)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(models_one_thread):
    """Tensors here are tiny: intra-op threads only add wake-up latency, so this module runs single-threaded."""
    yield


# LMS: diffusers integrates its multistep weights with scipy.quad over a float32 integrand; ours are
# exact (Gauss-Legendre), so the ill-conditioned final jump to sigma=0 differs by up to ~1.2e-5.
RTOL = {LMSDiscreteScheduler: 5e-5}


# ------------------------------------------------------------------ trajectories vs diffusers

@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_trajectory_matches_diffusers(cls, spacing):
    """Every prediction type, 1..50 steps, from the checkpoint's DDIM config: timesteps,
    init_noise_sigma, scaled model inputs, prev_sample and x0 at every step."""
    spacing_kw = {"timestep_spacing": spacing}
    if "timestep_spacing" not in cls.defaults:  # e.g. DPM-Solver singlestep: one fixed spacing
        if spacing != "linspace":
            pytest.skip(f"{cls.__name__} has no timestep_spacing option")
        spacing_kw = {}
    for prediction_type in predictions(cls):
        compare(cls, rtol=RTOL.get(cls, 1e-5), prediction_type=prediction_type, **spacing_kw)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_swap_from_checkpoint_config_matches_diffusers(cls):
    """``Cls.from_config(pipe.scheduler.config)`` as users write it: keys the checkpoint never set
    take Cls's own defaults (e.g. timestep_spacing), both from the json and from a DDIM's .config."""
    compare(cls, steps=(10,), rtol=RTOL.get(cls, 1e-5))
    ddim_ours, ddim_theirs = both(DDIMScheduler)
    ours, theirs = cls.from_config(ddim_ours.config), diffusers_twin(cls).from_config(ddim_theirs.config)
    assert_config_matches(ours.config, theirs.config, cls)
    assert_same_run(run(ours, 10, seed=seed_for(cls)), run(theirs, 10, seed=seed_for(cls)), RTOL.get(cls, 1e-5))


def _variants():
    """(class, overrides, step kwargs) beyond the plain grid: sigma spacings, clipping, zero-SNR..."""
    out = []
    for cls in ALL:
        d = cls.defaults
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if flag in d:
                out.append((cls, {flag: True}, {}))
        if "thresholding" in d:
            out.append((cls, {"thresholding": True, "sample_max_value": 1.5}, {}))
        if "rescale_betas_zero_snr" in d:
            out.append((cls, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                              "prediction_type": "v_prediction"}, {}))
    out += [
        (DDIMScheduler, {}, {"eta": 0.7}),
        (DDIMScheduler, {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, {"eta": 1.0}),
        (DDIMScheduler, {"clip_sample": True, "set_alpha_to_one": True}, {}),
        (DDIMScheduler, {"beta_schedule": "squaredcos_cap_v2"}, {}),
        (DDIMScheduler, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, {}),
        (DDPMScheduler, {"variance_type": "fixed_large"}, {}),
        (DDPMScheduler, {"variance_type": "fixed_small_log", "clip_sample": True}, {}),
        (DDPMScheduler, {"beta_schedule": "sigmoid"}, {}),
        (PNDMScheduler, {"set_alpha_to_one": True, "prediction_type": "v_prediction"}, {}),
        (EulerDiscreteScheduler, {"final_sigmas_type": "sigma_min"}, {}),
        (EulerDiscreteScheduler, {"interpolation_type": "log_linear"}, {}),
        (EulerDiscreteScheduler, {"timestep_type": "continuous", "prediction_type": "v_prediction"}, {}),
        (EulerDiscreteScheduler, {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, {}),
        (EulerDiscreteScheduler, {}, {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 10.0}),
        (HeunDiscreteScheduler, {"clip_sample": True, "prediction_type": "sample"}, {}),
        (HeunDiscreteScheduler, {"beta_schedule": "exp"}, {}),
    ]
    return out


VARIANTS = _variants()


@pytest.mark.parametrize("cls,overrides,step_kwargs", VARIANTS,
                         ids=[f"{c.__name__}-{o}-{k}".replace(" ", "") for c, o, k in VARIANTS])
def test_variant_matches_diffusers(cls, overrides, step_kwargs):
    flag = next((k for k in overrides if k.startswith("use_")), None)
    if flag == "use_beta_sigmas":
        pytest.importorskip("scipy", reason="beta sigmas need scipy (in ours and in diffusers)")
    if flag:
        try:
            cls(**overrides)
        except ValueError as e:  # an option this class deliberately does not implement
            assert flag in str(e)
            pytest.skip(f"{cls.__name__} rejects {flag}=True: {e}")
    compare(cls, steps=(2, 5, 25), rtol=RTOL.get(cls, 1e-5), step_kwargs=step_kwargs, **overrides)


def test_pndm_runge_kutta_warmup():
    """PNDM without skip_prk_steps: 3 Runge-Kutta steps (12 model calls) before PLMS."""
    compare(PNDMScheduler, steps=(4, 5, 25), skip_prk_steps=False)
    compare(PNDMScheduler, steps=(6,), skip_prk_steps=False, prediction_type="v_prediction", set_alpha_to_one=True)
    with pytest.raises(ValueError, match="num_inference_steps >= 4"):
        PNDMScheduler(skip_prk_steps=False).set_timesteps(3)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_short_names_match_diffusers(name):
    """Each CLI name builds its class with its overrides; seeded runs equal diffusers' (same draws)."""
    cls, overrides = SCHEDULERS[name]
    ours = make_scheduler(name, MODELSCOPE_DDIM_CONFIG)
    assert type(ours) is cls and all(ours.config[k] == v for k, v in overrides.items())
    theirs = diffusers_twin(cls).from_config(MODELSCOPE_DDIM_CONFIG, **overrides)
    assert_same_run(run(ours, 20, seed=seed_for(cls)), run(theirs, 20, seed=seed_for(cls)), RTOL.get(cls, 1e-5))


@pytest.mark.parametrize("cls", [DDPMScheduler, EulerAncestralDiscreteScheduler, DDIMScheduler], ids=str)
def test_generator_list_draws_like_diffusers(cls):
    """A list of generators (one per batch element) draws element by element, as randn_tensor does."""
    sample = initial_sample(shape=(2, 4, 2, 8, 8))
    kw = {"eta": 0.5} if cls is DDIMScheduler else {}
    runs = []
    for sched in both(cls):
        sched.set_timesteps(4)
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        x = sample * sched.init_noise_sigma
        for t in sched.timesteps:
            x = sched.step(toy_model(sched.scale_model_input(x, t), t), t, x, generator=gens, **kw).prev_sample
        runs.append(x)
    close(runs[0], runs[1], 1e-5, "final sample")


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_partial_schedule_with_add_noise_matches_diffusers(cls):
    """Video-to-video: noise a clean sample to the schedule's 40% point with add_noise, set the begin
    index, and denoise the rest; equals diffusers."""
    x0 = initial_sample(1)
    noise = initial_sample(2)
    finals = []
    for sched in both(cls):
        sched.set_timesteps(10)
        start = 4 * sched.order
        timesteps = sched.timesteps[start:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        x = sched.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
        kw = {"generator": torch.Generator().manual_seed(0)} if seed_for(cls) is not None else {}
        for t in timesteps:
            x = sched.step(toy_model(sched.scale_model_input(x, t), t), t, x, **kw).prev_sample
        finals.append(x)
    close(finals[0], finals[1], RTOL.get(cls, 1e-5), "final sample")


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler, PNDMScheduler], ids=str)
def test_add_noise_and_velocity_match_diffusers(cls):
    """Training: add_noise and get_velocity at random integer timesteps (b,) equal diffusers'."""
    x0, noise = initial_sample(1, shape=(3, *SHAPE[1:])), initial_sample(2, shape=(3, *SHAPE[1:]))
    t = torch.tensor([0, 500, 999])
    ours, theirs = both(cls, prediction_type="v_prediction")
    close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), 1e-6, "add_noise")
    if hasattr(theirs, "get_velocity"):
        close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), 1e-6, "get_velocity")


def test_step_accepts_generator_like_the_pipeline():
    """The pipeline passes ``generator`` to every scheduler's step (and ``eta`` only where
    ``accepts_eta``): every step must take it, and return_dict=False gives a tuple."""
    for cls in ALL:
        sched = cls.from_config(MODELSCOPE_DDIM_CONFIG)
        sched.set_timesteps(3)
        x = initial_sample()
        kw = {"generator": torch.Generator().manual_seed(0)}
        if cls.accepts_eta:
            kw["eta"] = 0.0
        t = sched.timesteps[0]
        out = sched.step(toy_model(sched.scale_model_input(x, t), t), t, x, return_dict=False, **kw)
        assert isinstance(out, tuple) and out[0].shape == x.shape, cls.__name__
        out = sched.step(toy_model(x, sched.timesteps[1]), sched.timesteps[1], out[0], **kw)
        assert isinstance(out, SchedulerOutput) and out.prev_sample.shape == x.shape, cls.__name__
    assert [c.__name__ for c in ALL if c.accepts_eta] == ["DDIMScheduler"]


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_half_precision_matches_diffusers(cls):
    """fp16 samples stay fp16 through scale_model_input and step, with diffusers' numbers."""
    sample = initial_sample(dtype=torch.float16)
    ours, theirs = both(cls)
    a, b = run(ours, 5, seed=seed_for(cls), sample=sample), run(theirs, 5, seed=seed_for(cls), sample=sample)
    assert a["samples"][-1].dtype == torch.float16
    assert_same_run(a, b, rtol=2e-3)


# ------------------------------------------------------------------ configs, save / load

@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_from_config_every_pair_matches_diffusers(cls):
    """``A.from_config(B.config)`` for every B: same config as diffusers' (hidden keys of B kept,
    B's defaulted keys dropped) and same timesteps; also from diffusers' own config objects."""
    for source in ALL:
        b_ours, b_theirs = both(source)
        a_ours = cls.from_config(b_ours.config)
        a_theirs = diffusers_twin(cls).from_config(b_theirs.config)
        assert_config_matches(a_ours.config, a_theirs.config, cls)
        assert_config_matches(cls.from_config(b_theirs.config).config, a_theirs.config, cls)
        assert_config_matches(a_ours.config, diffusers_twin(cls).from_config(b_ours.config).config, cls)
        a_ours.set_timesteps(7)
        a_theirs.set_timesteps(7)
        torch.testing.assert_close(a_ours.timesteps, a_theirs.timesteps, msg=source.__name__)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_save_load_round_trip_and_diffusers_interop(cls, tmp_path):
    overrides = {"timestep_spacing": "trailing"} if "timestep_spacing" in cls.defaults else {}
    ours = cls.from_config(MODELSCOPE_DDIM_CONFIG, **overrides)
    path = ours.save_pretrained(tmp_path / "ours")
    data = json.loads(path.read_text())
    assert data["_class_name"] == cls.__name__ and data["_diffusers_version"] == "0.42.1"
    assert "_use_default_values" not in data
    assert not [p for p in path.parent.iterdir() if p.name != "scheduler_config.json"]  # no temp files left
    back = cls.from_pretrained(tmp_path / "ours")
    assert {k: v for k, v in back.config.items() if k != "_use_default_values"} == \
        {k: v for k, v in ours.config.items() if k not in ("_use_default_values", "_diffusers_version")} | \
        {"_diffusers_version": "0.42.1"}
    # ours -> diffusers and diffusers -> ours
    twin = diffusers_twin(cls)
    theirs = twin.from_pretrained(tmp_path / "ours")
    assert_config_matches(back.config, theirs.config, cls)
    theirs.save_pretrained(tmp_path / "theirs")
    again = cls.from_pretrained(tmp_path, subfolder="theirs")
    assert_config_matches(again.config, theirs.config, cls)
    # diffusers' extra options (ones we do not read) come back as hidden keys
    assert set(again.config) >= set(theirs.config) - {"_use_default_values"}
    back.set_timesteps(5)
    theirs.set_timesteps(5)
    torch.testing.assert_close(back.timesteps, theirs.timesteps)


def test_from_pretrained_missing_file(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "other.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json.*other.txt"):
        DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")


def test_config_object():
    sched = DDIMScheduler.from_config(MODELSCOPE_DDIM_CONFIG)
    cfg = sched.config
    assert isinstance(cfg, SchedulerConfig) and isinstance(cfg, dict)
    assert cfg.beta_schedule == "scaled_linear" and cfg["steps_offset"] == 1
    assert cfg._class_name == "DDIMScheduler"
    with pytest.raises(AttributeError, match="no key"):
        cfg.not_a_key
    with pytest.raises(TypeError, match="read-only"):
        cfg.beta_start = 0.1
    with pytest.raises(TypeError, match="read-only"):
        cfg["beta_start"] = 0.1
    # unknown keys in __init__ and unknown overrides are ignored (not in .config), with a warning naming them
    # (diffusers ignores overrides silently: test_schedulers_compat.py)
    with pytest.warns(UserWarning, match="not_a_key"):
        assert "not_a_key" not in DDIMScheduler(not_a_key=1).config
    with pytest.warns(UserWarning, match="ignoring.*use_karas_sigmas"):
        assert "use_karas_sigmas" not in EulerDiscreteScheduler.from_config(cfg, use_karas_sigmas=True).config
    assert len(sched) == 1000
    assert set(sched.compatibles) >= set(ALL)
    assert repr(sched).startswith("DDIMScheduler(")


def test_scheduler_names():
    assert get_scheduler_class("euler_a") is EulerAncestralDiscreteScheduler
    assert get_scheduler_class("DPMSolverMultistepScheduler") is DPMSolverMultistepScheduler
    with pytest.raises(ValueError, match="unknown scheduler 'dpm\\+\\+9'.*ddim"):
        get_scheduler_class("dpm++9")
    assert {get_scheduler_class(n) for n in SCHEDULERS} == set(ALL) == set(SCHEDULER_CLASSES)
    assert make_scheduler("dpm++2m-karras", MODELSCOPE_DDIM_CONFIG).config.use_karras_sigmas is True
    assert make_scheduler("dpm++2m-sde", MODELSCOPE_DDIM_CONFIG).config.algorithm_type == "sde-dpmsolver++"


def test_pure_schedule_functions_match_diffusers():
    import diffusers.schedulers.scheduling_ddim as ref

    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        ours, theirs = make_betas(schedule, 1000, 0.00085, 0.012), diffusers_twin(DDIMScheduler)(
            beta_schedule=schedule, beta_start=0.00085, beta_end=0.012).betas
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    betas = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    torch.testing.assert_close(rescale_zero_terminal_snr(betas), ref.rescale_zero_terminal_snr(betas))
    assert torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)[-1] < 1e-10
    assert spaced_timesteps(1000, 4, "leading", 1).tolist() == [751, 501, 251, 1]
    assert spaced_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert spaced_timesteps(1000, 3, "linspace").tolist() == [999, 499.5, 0]


def test_lms_coefficients_integrate_lagrange_basis_exactly():
    """Independent of diffusers/scipy: LMS weights equal a fine trapezoid integral of the Lagrange
    basis through the last 4 sigmas, and sum to the step length (they integrate 1)."""
    import numpy as np
    from videofusion.schedulers.lms import lms_coefficients

    sigmas = np.array([14.6, 9.7, 6.1, 3.3, 1.2, 0.0])
    i = 4
    coeffs = lms_coefficients(sigmas, i, 4)
    taus = np.linspace(sigmas[i], sigmas[i + 1], 200001)
    for j, c in enumerate(coeffs):
        basis = np.prod([(taus - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k]) for k in range(4) if k != j], axis=0)
        assert abs(c - np.trapezoid(basis, taus)) < 1e-8
    assert abs(sum(coeffs) - (sigmas[i + 1] - sigmas[i])) < 1e-12


# ------------------------------------------------------------------ bad input

# classes whose step() runs right after construction (on every training timestep), as diffusers' do
STEP_BEFORE_SET_TIMESTEPS = {"DDPMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                             "HeunDiscreteScheduler", "LMSDiscreteScheduler"}


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_bad_input(cls):
    for key, bad in (("beta_schedule", "cosine"), ("prediction_type", "x0"), ("timestep_spacing", "uniform")):
        if key not in cls.defaults:
            continue
        with pytest.raises(ValueError, match=key):
            cls(**{key: bad})
    sched = cls.from_config(MODELSCOPE_DDIM_CONFIG)
    x = initial_sample()
    if cls.__name__ not in STEP_BEFORE_SET_TIMESTEPS:  # those step over the training schedule, as diffusers'
        with pytest.raises(ValueError, match="set_timesteps"):
            sched.step(x, torch.tensor(999), x)
    for n in (0, -3, 1001):
        with pytest.raises(ValueError, match="num_inference_steps"):
            sched.set_timesteps(n)
    with pytest.raises(TypeError, match="config must be a mapping"):
        cls.from_config("scheduler_config.json")
