"""pytest plugin: run diffusers' own test files with videofusion's classes in place of diffusers'.

Load it with ``-p videofusion_swap`` (this folder on ``PYTHONPATH``) and run pytest on test files of a
diffusers source tree; the test files are used as they are. Options:

``--vf-mode=videofusion`` (default)
    ``from diffusers import DDIMScheduler``, ``from diffusers.schedulers import ...``,
    ``from diffusers.models import ...``, ``from diffusers.models.unets.unet_3d_condition import ...`` and
    ``diffusers.X`` give videofusion's class for every class in :data:`SWAPPED`; every other name
    (test utilities, mixins, classes videofusion does not have) stays diffusers' own.
``--vf-mode=diffusers``
    No swap: the reference run, with the same diffusers and the same harness settings.
``--vf-unskip-deprecated``
    diffusers' ``PipelineTesterMixin.setUp`` skips every test of a pipeline class that inherits
    ``DeprecatedPipelineMixin`` (diffusers' ``TextToVideoSDPipeline`` does). With this option that
    check sees a class nothing inherits, so diffusers' pipeline runs the same tests as videofusion's.
``--vf-standin-tokenizer``
    The text-to-video pipeline test loads its tokenizer from the Hub
    (``hf-internal-testing/tiny-random-clip``). With this option, when that load fails (no network and
    no cached copy), a byte-level CLIP tokenizer built locally (514 tokens, no merges) is used instead,
    in both modes. Tests that compare against numbers computed upstream with the real tokenizer then
    fail in both modes; all other tests still compare the pipeline against itself.

In both modes the plugin imports the installed ``diffusers`` before the tree's ``tests/conftest.py``
puts the tree's ``src`` first on ``sys.path``, so the diffusers under test is the installed one (the one
videofusion is checked against); the report header names its version and folder.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import types

import pytest

# public name -> the diffusers module that defines it (also patched, so that
# ``from diffusers.schedulers.scheduling_ddim import DDIMScheduler`` gives ours too)
SWAPPED = [
    "UNet3DConditionModel",
    "AutoencoderKL",
    "TextToVideoSDPipeline",
    "DiffusionPipeline",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
]

# diffusers' namespace modules that re-export the classes (``from diffusers.X import Name``)
NAMESPACES = [
    "diffusers",
    "diffusers.schedulers",
    "diffusers.models",
    "diffusers.models.unets",
    "diffusers.models.autoencoders",
    "diffusers.pipelines",
    "diffusers.pipelines.deprecated",
    "diffusers.pipelines.deprecated.text_to_video_synthesis",
]

# defining modules that are diffusers' own base machinery: rebinding the name there would change
# diffusers' internals rather than what a user imports, so it is left alone
KEEP_DEFINING = {"DiffusionPipeline": "diffusers.pipelines.pipeline_utils"}

TOKENIZER_REPO = "hf-internal-testing/tiny-random-clip"

_state: dict = {"mode": None, "swapped": [], "originals": {}, "notes": [], "standin_used": 0}


def pytest_addoption(parser):
    group = parser.getgroup("videofusion", "run diffusers' tests with videofusion's classes")
    group.addoption("--vf-mode", choices=["videofusion", "diffusers"],
                    default=os.environ.get("VF_MODE", "videofusion"),
                    help="videofusion: swap videofusion's classes in (default); diffusers: no swap")
    group.addoption("--vf-unskip-deprecated", action="store_true", default=False,
                    help="run PipelineTesterMixin tests for pipelines diffusers marks deprecated")
    group.addoption("--vf-standin-tokenizer", action="store_true", default=False,
                    help=f"use a local byte-level CLIP tokenizer when {TOKENIZER_REPO} cannot be loaded")


def _opt(early_config, name, default=None):
    ns = early_config.known_args_namespace
    return getattr(ns, name, default)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Runs before the tree's conftest.py and before any test module is imported."""
    mode = _opt(early_config, "vf_mode", "videofusion")
    _state["mode"] = mode
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import diffusers  # the installed one, before tests/conftest.py puts the tree's src on sys.path

    _state["diffusers"] = diffusers
    if mode == "videofusion":
        _swap(diffusers)
    if _opt(early_config, "vf_unskip_deprecated", False):
        _unskip_deprecated()
    if _opt(early_config, "vf_standin_tokenizer", False):
        _standin_tokenizer()


def _swap(diffusers):
    import videofusion

    for name in SWAPPED:
        ours = getattr(videofusion, name)
        theirs = getattr(diffusers, name)  # resolves diffusers' lazy import
        _state["originals"][name] = theirs
        targets = []
        for modname in NAMESPACES:
            try:
                mod = importlib.import_module(modname)
            except Exception:  # a namespace this diffusers version does not have
                continue
            if _has(mod, name):
                setattr(mod, name, ours)
                targets.append(modname)
        defining = theirs.__module__
        if KEEP_DEFINING.get(name) != defining:
            setattr(importlib.import_module(defining), name, ours)
            targets.append(defining)
        _state["swapped"].append((name, f"{ours.__module__}.{ours.__qualname__}", targets))


def _has(mod, name):
    if name in vars(mod):
        return True
    # diffusers' _LazyModule: names it can import on first access
    cls_to_mod = getattr(mod, "_class_to_module", None)
    if cls_to_mod and name in cls_to_mod:
        getattr(mod, name)
        return True
    return False


def _unskip_deprecated():
    import diffusers
    from diffusers.pipelines import pipeline_utils

    if not hasattr(pipeline_utils, "DeprecatedPipelineMixin"):
        return
    # import the pipeline classes now, so that they inherit the real mixin (and keep its warning);
    # the stand-in is only put in place while a test runs (see pytest_runtest_call)
    for name in SWAPPED:
        getattr(diffusers, name, None)
    _state["deprecated_mixin"] = (pipeline_utils, pipeline_utils.DeprecatedPipelineMixin,
                                  type("DeprecatedPipelineMixin", (), {}))
    _state["notes"].append("DeprecatedPipelineMixin skip lifted (--vf-unskip-deprecated)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """diffusers' PipelineTesterMixin.setUp imports DeprecatedPipelineMixin from pipeline_utils while the
    test runs (unittest runs setUp inside pytest's call phase): with --vf-unskip-deprecated it gets a
    class that no pipeline inherits, for the duration of the test only."""
    swap = _state.get("deprecated_mixin")
    if swap:
        module, real, standin = swap
        module.DeprecatedPipelineMixin = standin
    try:
        yield
    finally:
        if swap:
            module.DeprecatedPipelineMixin = real


def _standin_tokenizer():
    import transformers

    classes = [c for c in (getattr(transformers, "CLIPTokenizer", None),
                           getattr(transformers, "CLIPTokenizerFast", None)) if c is not None]
    folder = tempfile.mkdtemp(prefix="vf-standin-clip-")
    _write_byte_level_clip(folder)
    for cls in classes:
        bound = cls.from_pretrained  # bound to cls; the test asks for cls itself

        def from_pretrained(klass, name, *args, _bound=bound, **kwargs):
            if name == TOKENIZER_REPO:
                tok = None
                if not _offline_and_uncached():
                    try:
                        tok = _bound(name, *args, **kwargs)
                    except OSError:
                        tok = None
                # transformers 5 returns an empty tokenizer (no vocabulary) for files it cannot find
                if tok is None or len(tok) <= 2:
                    _state["standin_used"] += 1
                    tok = _bound(folder, *args, **kwargs)
                return tok
            return _bound(name, *args, **kwargs)

        cls.from_pretrained = classmethod(from_pretrained)
    _state["notes"].append(f"stand-in tokenizer for {TOKENIZER_REPO} when it cannot be loaded "
                           "(--vf-standin-tokenizer)")


def _offline_and_uncached():
    if os.environ.get("HF_HUB_OFFLINE", "").upper() not in ("1", "ON", "YES", "TRUE"):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        return not isinstance(try_to_load_from_cache(TOKENIZER_REPO, "vocab.json"), str)
    except Exception:
        return True


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _write_byte_level_clip(folder):
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f)


def pytest_report_header(config):
    d = _state.get("diffusers")
    lines = [f"videofusion_swap: mode={_state['mode']}"]
    if d is not None:
        lines.append(f"videofusion_swap: diffusers {d.__version__} from {os.path.dirname(d.__file__)}")
    if _state["mode"] == "videofusion":
        import videofusion

        lines.append(f"videofusion_swap: videofusion {getattr(videofusion, '__version__', '?')} from "
                     f"{os.path.dirname(videofusion.__file__)}")
        lines.append("videofusion_swap: swapped " + ", ".join(n for n, _, _ in _state["swapped"]))
    lines += [f"videofusion_swap: {n}" for n in _state["notes"]]
    return lines


def pytest_collection_finish(session):
    """Check that the collected test modules see videofusion's classes, not diffusers' originals."""
    if _state["mode"] != "videofusion":
        return
    originals = {id(v): k for k, v in _state["originals"].items()}
    stale = []
    for mod in list(sys.modules.values()):
        if not isinstance(mod, types.ModuleType):
            continue
        f = getattr(mod, "__file__", None) or ""
        if "/tests/" not in f.replace(os.sep, "/"):
            continue
        for attr, val in list(vars(mod).items()):
            if id(val) in originals and isinstance(val, type):
                stale.append(f"{mod.__name__}.{attr}")
    if stale:
        session.config._vf_stale = stale
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line("videofusion_swap: WARNING diffusers' class still bound in: " + ", ".join(stale),
                          red=True)


def pytest_terminal_summary(terminalreporter):
    if _state["standin_used"]:
        terminalreporter.write_line(f"videofusion_swap: stand-in tokenizer used {_state['standin_used']} "
                                    f"time(s) for {TOKENIZER_REPO}")
