"""What the front ends (command line, web page, batch) share: the model to load and its recommended
settings, device, dtype and threads, checking a request before any model loads, and naming outputs.

Front ends hold no model logic: they parse, check with :class:`~videofusion.settings.GenerationSettings`,
call a pipeline and write files. A front end never imports another; what two of them need lives here.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..demo import (BUILTIN_MODELS, DEFAULT_BUILTIN, DEMO_DEFAULTS, DEMO_FAST_DEFAULTS, DEMO_FAST_MODEL_PATH,
                    DEMO_MODEL_PATH)
from ..errors import SettingError
from ..long_video import FIFO, LongVideo
from ..runtime.devices import DTYPES, default_threads
from ..settings import DEFAULTS, VIDEO_TO_VIDEO_DEFAULTS, GenerationSettings

# A setting's name in the pipeline -> the command-line option that sets it (errors name what the user typed).
FLAGS = {
    "num_frames": "--num-frames", "num_inference_steps": "--steps", "guidance_scale": "--guidance-scale",
    "height": "--height", "width": "--width", "negative_prompt": "--negative-prompt", "noise": "--noise",
    "noise_ratio": "--noise-ratio", "long_video": "--long-video", "prompt": "PROMPT", "model": "--model",
    "device": "--device", "dtype": "--dtype", "threads": "--threads", "fps": "--fps", "output": "--output",
    "scheduler": "--scheduler", "workers": "--workers", "num_cpus_per_worker": "--num-cpus-per-worker",
    "num_gpus_per_worker": "--num-gpus-per-worker", "max_frames": "--max-frames", "max_steps": "--max-steps",
    "max_guidance": "--max-guidance", "queue_size": "--queue-size", "strength": "--strength", "video": "--init-video",
    "lora": "--lora",
}


class CLIError(Exception):
    """A user mistake on the command line, reported as one line and exit code 2."""


def cli_error(error: SettingError, flags: Mapping[str, str] = FLAGS) -> CLIError:
    """``error`` in the words of the command line: the option the user typed and the value they gave."""
    return CLIError(f"{flags.get(error.name, error.name)}: must be {error.accepted}, got {error.value!r}")


# ------------------------------------------------------------------------------------------- the model


MODEL_HELP = ("pipeline folder, Hub id, or a built-in: demo-4step (the default: the demo model distilled to 4 "
              "steps) or demo (the 25-step demo model)")


def resolve_model(model: str | None) -> str:
    """The model a front end loads: ``model`` (a folder, a Hub id, or a built-in name of
    :data:`~videofusion.demo.BUILTIN_MODELS`: ``demo-4step``, ``demo``), else the built-in default, the demo
    model's 4-step student. A local folder of the same name wins over a built-in name."""
    name = model or DEFAULT_BUILTIN
    if name not in BUILTIN_MODELS or (model and os.path.exists(model)):
        return model
    path = BUILTIN_MODELS[name]
    if not path.is_dir():
        raise CLIError(f"--model: the built-in {name!r} is not installed at {path}; pass a model folder or Hub id")
    return str(path)


def _same_folder(model: str, path: Path) -> bool:
    try:
        return os.path.isdir(model) and Path(model).resolve() == path.resolve()
    except OSError:
        return False


def is_demo_model(model: str) -> bool:
    """True when ``model`` is the built-in demo model's folder or its 4-step student's (the same vocabulary)."""
    return _same_folder(model, DEMO_MODEL_PATH) or _same_folder(model, DEMO_FAST_MODEL_PATH)


def model_folder(model: str, variant: str | None = None) -> Path:
    """The local folder of ``model`` (a Hub id is downloaded, or found in the Hub cache offline); a model
    that is nowhere is a CLIError naming ``--model`` and where it was looked for."""
    from ..io.hub import resolve_pretrained
    try:
        return resolve_pretrained(model, variant=variant)
    except FileNotFoundError as e:
        raise CLIError(f"--model: {e}") from None


def model_defaults(model: str) -> dict[str, Any]:
    """Settings a model recommends over :class:`GenerationSettings`' defaults: the demo model's own
    (its native size and a short schedule; 4 steps for its student), else none."""
    if _same_folder(model, DEMO_FAST_MODEL_PATH):
        return dict(DEMO_FAST_DEFAULTS)
    return dict(DEMO_DEFAULTS) if is_demo_model(model) else {}


def request_settings(model: str, given: Mapping[str, Any], video_to_video: bool = False) -> GenerationSettings:
    """The settings of a request: the pipeline's defaults (text-to-video's, or video-to-video's) < the
    model's < ``given`` (``None`` values in ``given`` mean "not given"). Raises SettingError naming the setting."""
    chosen = {k: v for k, v in given.items() if v is not None}
    base = VIDEO_TO_VIDEO_DEFAULTS if video_to_video else DEFAULTS
    return base.replace(**{**model_defaults(model), **chosen})


def check_size(settings: GenerationSettings, folder: str | os.PathLike) -> GenerationSettings:
    """``settings`` sized for the pipeline folder ``folder`` (its native size and VAE scale factor, read
    from its configs: no weights are loaded)."""
    from ..pipelines.folders import native_geometry
    return settings.sized(*native_geometry(folder))


# ------------------------------------------------------------------------------------------- option values


def long_video_arg(text: str) -> LongVideo:
    """``--long-video WINDOW[:STRIDE]`` (frames, stride 4 by default) -> a LongVideo (FreeNoise);
    ``--long-video fifo[:PARTITIONS]`` -> a FIFO (FIFO-Diffusion, 4 partitions of 16 frames by default)."""
    name, _, rest = text.partition(":")
    if name.strip().lower() == "fifo":
        try:
            return FIFO(num_partitions=int(rest)) if rest else FIFO()
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected fifo or fifo:PARTITIONS, PARTITIONS an integer >= 1, "
                                             f"e.g. fifo:4 ({e})") from None
    window, stride = name, rest
    try:
        return LongVideo(int(window), int(stride) if stride else min(4, int(window)))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected WINDOW[:STRIDE] in frames, 1 <= STRIDE <= WINDOW, "
                                         f"e.g. 16:4, or fifo[:PARTITIONS] ({e})") from None


def size_arg(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` in pixels (``1024x576``, zeroscope's convention) -> (height, width)."""
    width, _, height = text.lower().partition("x")
    try:
        return int(height), int(width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 1024x576, got {text!r}") from None


def lora_arg(text: str) -> tuple[str, float]:
    """``--lora PATH[:SCALE]`` -> (path, scale), scale 1 when not given (a colon followed by no number is part
    of the path, as a Windows drive's)."""
    path, sep, scale = text.rpartition(":")
    if sep and path:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return text, 1.0


# ------------------------------------------------------------------------------------------- LoRA adapters


def read_loras(loras: list[tuple[str, float]] | None) -> list[tuple[Any, float]]:
    """Each ``(path or Hub id, scale)`` read (small files: before any model's weights), as (LoRA, scale);
    a missing or unreadable one is a CLIError naming ``--lora``."""
    from ..adapters import load_lora
    read = []
    for path, scale in loras or []:
        try:
            read.append((load_lora(path), scale))
        except (OSError, ValueError) as e:
            raise CLIError(f"--lora: {path}: {e}") from None
    return read


def apply_loras(pipe, loras: list[tuple[Any, float]]) -> None:
    """Load :func:`read_loras`' adapters onto ``pipe`` as ``lora_0``, ``lora_1``, ..., active at their scales."""
    names = [pipe.lora.load(lora, f"lora_{i}") for i, (lora, _) in enumerate(loras)]
    if names:
        pipe.set_adapters(names, [scale for _, scale in loras])


# ------------------------------------------------------------------------------------------- where it runs


def add_runtime_arguments(p: argparse.ArgumentParser, device_help: str | None = None) -> None:
    """``--device``, ``--dtype``, ``--threads`` and ``--compile``: the same options, defaults and meaning in
    every front end that generates."""
    p.add_argument("--device", default="auto",
                   help=device_help or "auto, cpu, cuda, cuda:1, mps (default auto: CUDA, then MPS, then the CPU)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="default auto: float16 on CUDA and MPS, float32 on the CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: half this machine's CPUs, at least 1; a batch worker: its CPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (the fast path): faster steps after a warm-up of minutes on a GPU "
                        "at each new size (cached on disk); pays off over many videos")


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads for torch's operators, by default
    :func:`~videofusion.runtime.devices.default_threads` (half the machine's CPUs); returns the number used."""
    if threads is None:
        threads = default_threads()
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise SettingError("threads", threads, "an integer >= 1")
    import torch
    torch.set_num_threads(threads)
    return threads


# ------------------------------------------------------------------------------------------- outputs


def slug(prompt: str, limit: int = 60) -> str:
    """A file-name stem from a prompt: its letters and digits (any script) in lower case, every run of
    anything else as one ``-``, at most ``limit`` characters; ``video`` if nothing is left."""
    words = re.sub(r"[\W_]+", "-", prompt.lower()).strip("-")
    return words[:limit].rstrip("-") or "video"
