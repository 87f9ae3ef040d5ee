"""Scheduler configs behave as diffusers 0.42.1's, with diffusers as the oracle: configs cross-load between every
pair of classes (live configs and scheduler_config.json files), a class acts only on the keys diffusers' class acts
on, unknown keywords are ignored, load_config / save_config / register_to_config. Each test builds ours and
diffusers' scheduler from the same config dict and compares numbers (1e-5, relative to the tensor's scale).
Timesteps and steps (custom schedules, PNDM's stages, step tuples): tests/test_schedulers_steps.py."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from helpers import MS_SCHEDULER
from scheduler_oracle import MODELSCOPE_DDIM_CONFIG, assert_config_matches, assert_same_run, diffusers_twin, run
from test_schedulers import ALL, IDS, RTOL, VARIANTS as BASE_VARIANTS, seed_for
from test_schedulers_multistep import VARIANTS as SOLVER_VARIANTS
from videofusion.schedulers import (DDIMScheduler, DDPMScheduler, DEISMultistepScheduler,
                                    DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler,
                                    EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                                    LMSDiscreteScheduler, PNDMScheduler, SchedulerConfig,
                                    UniPCMultistepScheduler)

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context"),
              pytest.mark.filterwarnings("ignore:.*not config keys of this class:UserWarning")]

DPM, SINGLE, UNIPC, DEIS = (DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler,
                            DEISMultistepScheduler)
MS = MS_SCHEDULER  # the ModelScope scheduler config as a script writes it (no bookkeeping keys)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(models_one_thread):
    yield


def _finite(a: torch.Tensor, b: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Where diffusers' result is inf / NaN ours must be the same; those entries are then set to 0 in both."""
    bad = ~torch.isfinite(b)
    assert torch.equal(bad, ~torch.isfinite(a)), f"{what}: non-finite entries differ"
    assert torch.equal(a[bad].nan_to_num(), b[bad].nan_to_num()), f"{what}: non-finite values differ"
    return a.masked_fill(bad, 0), b.masked_fill(bad, 0)


def same_run(ours, theirs, steps: int = 5, rtol: float = 1e-5, **kwargs) -> None:
    """Both sample ``steps`` steps with the toy model (seeded where diffusers' step takes a generator) and agree,
    or both raise the same exception type at the same point (e.g. a singular UniPC system on both sides)."""
    seed = seed_for(type(ours))
    outcomes = []
    for sched in (ours, theirs):
        try:
            outcomes.append(run(sched, steps, seed=seed, **kwargs))
        except Exception as e:  # noqa: BLE001 - compared with diffusers' below
            outcomes.append(e)
    a, b = outcomes
    if isinstance(a, Exception) or isinstance(b, Exception):
        assert type(a) is type(b), (a, b)
        return
    for key in ("inputs", "samples", "x0"):
        for i, (x, y) in enumerate(zip(a[key], b[key])):
            if x is not None and y is not None:
                a[key][i], b[key][i] = _finite(x, y, f"{key} {i}")
    assert_same_run(a, b, rtol)


def build_both(cls, config, **kwargs):
    """(ours, theirs) from the same config, or None when diffusers raises (then ours must raise too: the same
    type, or ValueError where diffusers raises NotImplementedError for a value it lacks, e.g. DDIM's
    beta_schedule 'sigmoid': our config checks have always raised ValueError)."""
    try:
        theirs = diffusers_twin(cls).from_config(config, **kwargs)
    except Exception as e:  # noqa: BLE001
        with pytest.raises(ValueError if isinstance(e, NotImplementedError) else type(e)):
            cls.from_config(config, **kwargs)
        return None
    return cls.from_config(config, **kwargs), theirs


def configs_match(ours, theirs, cls) -> None:
    """assert_config_matches, allowing ours the ``_class_name`` diffusers' config lacks when built from a dict
    without one (ours always names its class; diffusers writes it to the json either way)."""
    ours = dict(ours)
    if "_class_name" not in theirs:
        assert ours.pop("_class_name") == cls.__name__
    assert_config_matches(ours, theirs, cls)


def json_of(diffusers_scheduler) -> dict:
    """The scheduler_config.json diffusers writes for this scheduler, parsed."""
    return json.loads(diffusers_scheduler.to_json_string())


# ------------------------------------------------------------------ 1. cross-loading configs

def _deis_into_dpm(source_config, target) -> bool:
    """diffusers' DPM-Solvers reject a DEIS config with algorithm_type 'deis' before mapping the name (their
    final_sigmas_type check comes first); ours maps it, as it did before. Checked: ours then equals diffusers
    given the mapped names."""
    cfg = {k: v for k, v in source_config.items() if k not in source_config.get("_use_default_values", ())}
    return target in (DPM, SINGLE) and cfg.get("algorithm_type") == "deis"


def check_pair(source_config, target, rtol=1e-5) -> None:
    """``target.from_config(source_config)`` in both libraries: same exception, or same config and 5-step run."""
    if _deis_into_dpm(source_config, target):
        with pytest.raises(ValueError, match="not supported for `algorithm_type` deis"):
            diffusers_twin(target).from_config(source_config)
        ours = target.from_config(source_config)
        assert ours.config.algorithm_type == "dpmsolver++" and ours.config.solver_type == "midpoint"
        theirs = diffusers_twin(target).from_config(source_config, algorithm_type="dpmsolver++",
                                                    solver_type="midpoint")
        same_run(ours, theirs, rtol=rtol)
        return
    built = build_both(target, source_config)
    if built is None:
        return
    ours, theirs = built
    configs_match(ours.config, theirs.config, target)
    same_run(ours, theirs, rtol=rtol)


@pytest.mark.parametrize("source", ALL, ids=IDS)
def test_every_pair_cross_loads_like_diffusers(source):
    """B.from_config(A().config) and B.from_config(A(**ModelScope).config) for every pair, from live configs
    (ours into ours, diffusers' into diffusers') and from the scheduler_config.json diffusers writes (the same
    dict into both): same exceptions, configs, timesteps and a seeded 5-step loop."""
    twin = diffusers_twin(source)
    ours_default, theirs_default = source(), twin()
    ours_ms, theirs_ms = source.from_config(MS), twin.from_config(MS)
    if source is DDIMScheduler:  # the only class diffusers lets take the ModelScope keys as keywords
        ours_ms, theirs_ms = source(**MS), twin(**MS)
    files = [json_of(theirs_default), json_of(theirs_ms), json.loads(ours_ms.to_json_string())]
    for target in ALL:
        rtol = RTOL.get(target, 1e-5)
        for ours_src, theirs_src in ((ours_default, theirs_default), (ours_ms, theirs_ms)):
            ours, theirs = target.from_config(ours_src.config), diffusers_twin(target).from_config(theirs_src.config)
            configs_match(ours.config, theirs.config, target)
            same_run(ours, theirs, rtol=rtol)
        for config in files:
            check_pair(config, target, rtol)


CROSS_VARIANTS = [(cls, overrides) for cls, overrides, _ in BASE_VARIANTS] + list(SOLVER_VARIANTS)


@pytest.mark.parametrize("source,overrides", CROSS_VARIANTS,
                         ids=[f"{c.__name__}-{o}".replace(" ", "") for c, o in CROSS_VARIANTS])
def test_non_default_configs_cross_load_like_diffusers(source, overrides):
    """Every variant config of the conformance suites, written to json by diffusers, loaded into every class:
    another class's non-default keys act exactly where diffusers' act (hidden keys mostly do nothing; the
    respacing bounds sigma_min / sigma_max act everywhere, as in diffusers)."""
    if overrides.get("use_beta_sigmas"):
        pytest.importorskip("scipy")
    config = json_of(diffusers_twin(source).from_config(MODELSCOPE_DDIM_CONFIG, **overrides))
    for target in ALL:
        if target in (PNDMScheduler, EulerAncestralDiscreteScheduler) and config["prediction_type"] == "sample":
            # deliberately stricter: diffusers builds these and fails at the first step; ours refuses at once
            with pytest.raises(ValueError, match="prediction_type"):
                target.from_config(config)
            continue
        check_pair(config, target, RTOL.get(target, 1e-5))


def test_ddpm_config_file_loads_into_dpm_solver():
    """The reported case: a DDPM scheduler_config.json (variance_type 'fixed_small') into DPM-Solver multistep /
    singlestep, and a DPM-Solver one (variance_type None) into DDPM, which samples it as 'fixed_small'."""
    ddpm_file = json_of(diffusers_twin(DDPMScheduler).from_config(MS))
    assert ddpm_file["variance_type"] == "fixed_small"
    for target in (DPM, SINGLE):
        ours, theirs = build_both(target, ddpm_file)
        assert ours.config.variance_type == "fixed_small"
        same_run(ours, theirs, steps=10)
    dpm_file = json_of(diffusers_twin(DPM).from_config(MS))
    assert dpm_file["variance_type"] is None
    ours, theirs = build_both(DDPMScheduler, dpm_file)
    assert ours.config.variance_type is None
    same_run(ours, theirs, steps=10)
    fixed_small = DDPMScheduler.from_config(dpm_file, variance_type="fixed_small")
    a, b = run(ours, 10, seed=5), run(fixed_small, 10, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a["samples"], b["samples"]))
    # learned variances stay refused by DPM-Solver (diffusers would keep 3 channels of a latent model's output)
    with pytest.raises(ValueError, match="variance_type"):
        DPM.from_config(ddpm_file, variance_type="learned_range")


# ------------------------------------------------------------------ 2. a class acts only where diffusers' acts

@pytest.mark.parametrize("target", [UNIPC, SINGLE, DEIS], ids=lambda c: c.__name__)
def test_use_lu_lambdas_of_a_dpm_config_does_nothing_elsewhere(target):
    """use_lu_lambdas belongs to DPM-Solver multistep: UniPC / singlestep / DEIS keep it as a hidden key and space
    their steps as usual (the bug: UniPC gave Lu spacing [999, 722, 302, 30, 0])."""
    source = DPM(use_lu_lambdas=True).config
    ours, theirs = build_both(target, source)
    assert ours.config["use_lu_lambdas"] is True and "use_lu_lambdas" not in ours.own_config
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    if target is UNIPC:
        assert ours.timesteps.tolist() == [999, 799, 599, 400, 200]
    same_run(*build_both(target, source), steps=5)


def test_hidden_sigma_bounds_act_as_in_diffusers():
    """The one place diffusers reads keys a class does not own: Karras / exponential / beta respacing takes
    sigma_min / sigma_max from the whole config (hasattr(self.config, ...)), except LMS's Karras spacing."""
    euler = EulerDiscreteScheduler(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0).config
    for target in (HeunDiscreteScheduler, LMSDiscreteScheduler, DPM, SINGLE, DEIS):
        ours, theirs = build_both(target, euler)
        ours.set_timesteps(6)
        theirs.set_timesteps(6)
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-6, atol=0)
        if target is not LMSDiscreteScheduler:
            assert abs(ours.sigmas[0].item() - 10.0) < 1e-4


# ------------------------------------------------------------------ 3. unknown keywords

@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_unknown_from_config_keyword_is_ignored_like_diffusers(cls):
    """diffusers ignores a from_config keyword that is not a config key of the class (silently; ours warns,
    naming it), and returns it among the unused kwargs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs, theirs_unused = diffusers_twin(cls).from_config(MS, use_karas_sigmas=True, return_unused_kwargs=True)
    assert not [w for w in caught if "use_karas_sigmas" in str(w.message)]  # diffusers: no exception, no warning
    with pytest.warns(UserWarning, match=r"ignoring \['use_karas_sigmas'\]"):
        ours, ours_unused = cls.from_config(MS, use_karas_sigmas=True, return_unused_kwargs=True)
    assert "use_karas_sigmas" not in ours.config and "use_karas_sigmas" not in theirs.config
    assert ours_unused["use_karas_sigmas"] is True and theirs_unused["use_karas_sigmas"] is True
    configs_match(ours.config, theirs.config, cls)
    # a key of another class given as keyword: ignored here too (the config's own value stays hidden)
    if "clip_sample" not in cls.defaults:
        with pytest.warns(UserWarning, match="clip_sample"):
            ours = cls.from_config(DDIMScheduler(clip_sample=True).config, clip_sample=False)
        theirs = diffusers_twin(cls).from_config(diffusers_twin(DDIMScheduler)(clip_sample=True).config,
                                                 clip_sample=False)
        assert ours.config["clip_sample"] is True and theirs.config["clip_sample"] is True


def test_unknown_init_keyword_is_ignored_with_a_warning():
    """Deliberately laxer than diffusers, whose __init__ raises TypeError: we do not read every option diffusers'
    classes take (e.g. DPM-Solver's flow_shift), so rejecting unknown keys would reject calls diffusers accepts."""
    with pytest.raises(TypeError):
        diffusers_twin(DDIMScheduler)(not_a_key=1)
    with pytest.warns(UserWarning, match="not_a_key"):
        assert "not_a_key" not in DDIMScheduler(not_a_key=1).config
    diffusers_twin(DPM)(flow_shift=1.0)
    with pytest.warns(UserWarning, match="flow_shift"):
        DPM(flow_shift=1.0)
    own_file = json_of(diffusers_twin(DDIMScheduler).from_config(MS))  # with _class_name, _diffusers_version
    theirs = diffusers_twin(DDIMScheduler)(**own_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # private keys (a json's bookkeeping) pass silently and are kept, as there
        ours = DDIMScheduler(**own_file)
    assert ours.config == DDIMScheduler.from_config(own_file).config
    assert ours.config["_diffusers_version"] == theirs.config["_diffusers_version"]


# ------------------------------------------------------------------ 4. load_config / save_config

@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_save_config_and_load_config_interoperate_with_diffusers(cls, tmp_path):
    twin = diffusers_twin(cls)
    ours = cls.from_config(MS, prediction_type="v_prediction")
    path = ours.save_config(tmp_path / "ours")
    assert path == tmp_path / "ours" / "scheduler_config.json"
    loaded = cls.load_config(tmp_path / "ours")
    assert loaded == twin.load_config(tmp_path / "ours") == json.loads(path.read_text())
    assert isinstance(loaded, dict) and "_use_default_values" not in loaded
    configs_match(cls.from_config(loaded).config, twin.from_config(loaded).config, cls)
    # diffusers writes, we read: subfolder, a file path, the unused-kwargs and commit-hash tuples
    twin.from_config(MS).save_config(tmp_path / "pipe" / "scheduler")
    for kwargs in ({"subfolder": "scheduler"}, {"subfolder": "scheduler", "return_unused_kwargs": True, "foo": 1},
                   {"subfolder": "scheduler", "return_commit_hash": True, "local_files_only": True},
                   {"subfolder": "scheduler", "return_unused_kwargs": True, "return_commit_hash": True}):
        assert cls.load_config(tmp_path / "pipe", **kwargs) == twin.load_config(tmp_path / "pipe", **kwargs)
    file = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    assert cls.load_config(str(file)) == twin.load_config(str(file))
    # from_pretrained passes the remaining keywords to from_config, as diffusers does
    spacing = {"timestep_spacing": "trailing"} if "timestep_spacing" in cls.defaults else {}
    ours, theirs = (c.from_pretrained(tmp_path / "pipe", subfolder="scheduler", **spacing) for c in (cls, twin))
    configs_match(ours.config, theirs.config, cls)
    same_run(ours, theirs, steps=4, rtol=RTOL.get(cls, 1e-5))


def test_load_config_edge_cases_match_diffusers(tmp_path):
    twin = diffusers_twin(DDIMScheduler)
    DDIMScheduler.from_config(MS).save_config(tmp_path)
    (tmp_path / "empty").mkdir()
    # diffusers falls back to the root's file when the subfolder has none
    assert DDIMScheduler.load_config(tmp_path, subfolder="empty") == twin.load_config(tmp_path, subfolder="empty")
    for where in (tmp_path / "empty", tmp_path / "absent" / "x"):
        with pytest.raises(OSError):
            twin.load_config(where)
        with pytest.raises(OSError, match="scheduler_config.json" if where.exists() else "no folder"):
            DDIMScheduler.load_config(where)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(OSError):
        twin.load_config(tmp_path / "bad")
    with pytest.raises(OSError, match="not a valid JSON"):
        DDIMScheduler.load_config(tmp_path / "bad")
    # save_config onto a file: diffusers' AssertionError; push_to_hub is not supported here
    with pytest.raises(AssertionError):
        twin().save_config(tmp_path / "scheduler_config.json")
    with pytest.raises(AssertionError, match="should be a directory"):
        DDIMScheduler().save_config(tmp_path / "scheduler_config.json")
    with pytest.raises(NotImplementedError, match="push_to_hub"):
        DDIMScheduler().save_config(tmp_path / "hub", push_to_hub=True)
    # a mapping is copied (an extension: diffusers takes paths only); save_pretrained still returns the file
    cfg = DDIMScheduler().config
    assert DDIMScheduler.load_config(cfg) == dict(cfg) and not isinstance(DDIMScheduler.load_config(cfg),
                                                                          SchedulerConfig)
    assert DDIMScheduler().save_pretrained(tmp_path / "p").name == "scheduler_config.json"
    assert DDIMScheduler().to_json_string() == twin().to_json_string()



# ------------------------------------------------------------------ 5. register_to_config

@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_register_to_config_and_save_update_the_config_as_in_diffusers(cls, tmp_path):
    ours, theirs = cls.from_config(MS), diffusers_twin(cls).from_config(MS)
    assert cls._deprecated_kwargs == theirs._deprecated_kwargs == []
    for sched in (ours, theirs):
        sched.register_to_config(skip_prk_steps=True, test_attribute=5)  # any key, as diffusers' pipeline tests do
    assert ours.config["skip_prk_steps"] is True and ours.config.test_attribute == 5
    with pytest.warns(FutureWarning):  # config keys as attributes: deprecated in diffusers, still working
        assert ours.test_attribute == 5
    with pytest.raises(AttributeError, match="does_not_exist"):
        ours.does_not_exist
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    assert ours.config["_diffusers_version"] == theirs.config["_diffusers_version"]
    for sched in (ours, theirs):  # the in-memory config equals the saved one, less the bookkeeping key
        saved = dict(sched.config)
        saved.pop("_use_default_values", None)
        assert saved == type(sched).from_pretrained(tmp_path / ("ours" if sched is ours else "theirs")).config
    assert set(ours.config) <= set(theirs.config)  # diffusers' may hold keys we do not read (flow_shift ...)
    if "timestep_spacing" in cls.defaults:  # a registered key acts from the next set_timesteps on
        ours.register_to_config(timestep_spacing="trailing")
        theirs.register_to_config(timestep_spacing="trailing")
        ours.set_timesteps(5)
        theirs.set_timesteps(5)
        assert np.allclose(ours.timesteps.numpy(), theirs.timesteps.numpy())
        with pytest.raises(ValueError, match="timestep_spacing"):
            ours.register_to_config(timestep_spacing="uniform")
