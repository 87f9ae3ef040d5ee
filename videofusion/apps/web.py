"""``videofusion web``: a Gradio page for text-to-video, like the model's Hugging Face Space.

A thin front end over the public API: one pipeline is loaded at startup, each request calls it
(``pipe(...)`` with a per-video generator, :func:`videofusion.schedulers.make_scheduler`) and writes an
H.264 mp4 with :func:`videofusion.export_to_video`. Visitors choose only the call's settings, within
limits the operator sets on the command line; they cannot name a model or a file on the server.
Requests wait in Gradio's queue and run one at a time. Needs the ``web`` extra (``pip install
"videofusion[web]"``); importing this module does not import gradio.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import random
import shlex
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..demo.shapes import PROMPT_FORM, vocabulary_note
from ..io.video import DEFAULT_FPS
from ..runtime.devices import pick_device, pick_dtype
from ..schedulers import SCHEDULERS, make_scheduler
from ..settings import GenerationSettings, SettingError, check_prompt
from .common import (MODEL_HELP, CLIError, add_runtime_arguments, check_size, is_demo_model, lora_arg,
                     model_defaults, model_folder, read_loras, request_settings, resolve_model, set_threads, slug)

MAX_SEED = 2**32 - 1
FPS_RANGE = (1, 60)
MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens anyway; this only bounds the work per request
DEFAULT_SCHEDULER = "default"  # the dropdown's entry for the model's own scheduler
NO_ADAPTER = "none"  # the adapter dropdown's entry for the model alone
DEMO_EXAMPLES = ("a red circle moving left", "a blue square moving up", "a green triangle moving right",
                 "a yellow circle moving down", "a magenta square moving left")
HUB_EXAMPLES = ("Spiderman is surfing", "An astronaut riding a horse", "A panda eating bamboo on a rock",
                "Waves crashing on a beach at sunset")


@dataclass(frozen=True)
class Limits:
    """What visitors may ask for; the operator sets these (``videofusion web --max-frames ...``).

    ``height``/``width`` (pixels, divisible by the model's VAE scale factor) are fixed for every request;
    ``None`` means the model's native size. ``queue_size``: requests waiting at most (more are turned away).
    """

    max_frames: int = 32
    max_steps: int = 50
    max_guidance: float = 20.0
    height: int | None = None
    width: int | None = None
    queue_size: int = 20

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_steps", "queue_size", "height", "width"):
            value = getattr(self, name)
            if value is None and name in ("height", "width"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(name, value, "an integer >= 1")
        if isinstance(self.max_guidance, bool) or not isinstance(self.max_guidance, numbers.Real) \
                or not 1 <= self.max_guidance < math.inf:
            raise SettingError("max_guidance", self.max_guidance, "a number >= 1")


@dataclass(frozen=True)
class Request:
    """One visitor's settings, validated (see :meth:`WebService.validate`)."""

    prompt: str
    negative_prompt: str
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    fps: float
    adapter: str = NO_ADAPTER
    prompt_weighting: bool = False


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (Gradio sends numbers as floats); ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value) or not low <= value <= high:
        raise ValueError(f"{name}: must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{name}: must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


class WebService:
    """The page's model side: validates visitors' settings and generates one video at a time.

    Args:
        pipe: a loaded pipeline (``videofusion.DiffusionPipeline.from_pretrained(...)``), already on
            its device; the service never loads or moves models.
        model_name: what the page calls the model (never a path on the server's disk).
        limits: the operator's :class:`Limits` (default ``Limits()``).
        defaults: call settings shown in the form at first (``num_frames``, ``num_inference_steps``,
            ``guidance_scale``); each is clamped to the limits. Missing ones: 16 frames, 25 steps, 9.0.
        examples: example prompts shown under the form.
        output_dir: where mp4 files are written (default: a new temp folder); files older than
            ``keep_seconds`` (default an hour) are removed as new ones are written.
        is_demo: the model is the built-in demo model (its ``videofusion generate`` command needs no
            ``--model``).
        adapters: LoRA adapters the operator loaded onto ``pipe`` (``pipe.lora.load``): name -> scale. A
            visitor picks one of them, or none, by name.
    """

    def __init__(self, pipe, model_name: str, limits: Limits | None = None, defaults: dict | None = None,
                 examples: tuple[str, ...] = HUB_EXAMPLES, output_dir: str | None = None,
                 keep_seconds: float = 3600.0, is_demo: bool = False, adapters: dict[str, float] | None = None):
        limits = limits or Limits()
        self.pipe = pipe
        self.model_name = model_name
        self.is_demo = is_demo
        self.limits = limits
        self.examples = tuple(examples)
        self.base_scheduler = pipe.scheduler
        self.scheduler_names = (DEFAULT_SCHEDULER, *sorted(SCHEDULERS))
        self.adapters = dict(adapters or {})
        unknown = sorted(set(self.adapters) - set(pipe.lora.names()))
        if unknown or NO_ADAPTER in self.adapters:
            raise ValueError(f"adapters: {unknown or [NO_ADAPTER]} are not adapters loaded on the pipeline "
                             f"({pipe.lora.names()})")
        size = GenerationSettings(height=limits.height, width=limits.width).sized(pipe.native_size,
                                                                                pipe.vae_scale_factor)
        self.height, self.width = size.height, size.width
        d = GenerationSettings(**(defaults or {}))
        self.defaults = {"num_frames": min(d.num_frames, limits.max_frames),
                         "num_inference_steps": min(d.num_inference_steps, limits.max_steps),
                         "guidance_scale": min(max(float(d.guidance_scale), 1.0), limits.max_guidance),
                         "fps": DEFAULT_FPS}
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="videofusion-web-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.keep_seconds = keep_seconds
        self.lock = threading.Lock()  # Gradio's queue runs one request at a time; this holds for direct callers too
        pipe.set_progress_bar_config(disable=True)

    def validate(self, prompt: Any, negative_prompt: Any, num_frames: Any, num_inference_steps: Any,
                 guidance_scale: Any, seed: Any, scheduler: Any, fps: Any, adapter: Any = NO_ADAPTER,
                 prompt_weighting: Any = False) -> Request:
        """Check a visitor's settings against the limits; ValueError naming the field and its accepted
        values. ``seed=None`` picks a random seed. Cheap: runs before any model work."""
        try:
            prompt = check_prompt(prompt)
        except SettingError:
            raise ValueError("prompt: is empty; describe the video, e.g. " + repr(self.examples[0])) from None
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt: at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
        negative_prompt = negative_prompt or ""
        if not isinstance(negative_prompt, str) or len(negative_prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"negative prompt: must be text of at most {MAX_PROMPT_CHARS} characters")
        if scheduler not in self.scheduler_names:
            raise ValueError(f"scheduler: {scheduler!r} is not one of {list(self.scheduler_names)}")
        if adapter not in (NO_ADAPTER, *self.adapters):
            raise ValueError(f"adapter: {adapter!r} is not one of {[NO_ADAPTER, *self.adapters]}")
        if not isinstance(prompt_weighting, bool):
            raise ValueError(f"prompt weighting: must be true or false, got {prompt_weighting!r}")
        return Request(
            prompt=prompt, negative_prompt=negative_prompt.strip(),
            num_frames=_integer("frames", num_frames, 1, self.limits.max_frames),
            num_inference_steps=_integer("steps", num_inference_steps, 1, self.limits.max_steps),
            guidance_scale=_number("guidance scale", guidance_scale, 1.0, self.limits.max_guidance),
            seed=random_seed() if seed is None else _integer("seed", seed, 0, MAX_SEED),
            scheduler=scheduler, fps=_number("fps", fps, *FPS_RANGE), adapter=adapter,
            prompt_weighting=prompt_weighting)

    def generate(self, request: Request, on_step: Callable[[int, int], None] | None = None) -> tuple[str, dict]:
        """Generate ``request``'s video and write it as H.264 mp4; returns ``(path, settings)``.

        ``on_step(done, total)`` is called after each denoising step. The same settings and seed
        give the same video as ``videofusion generate`` (the ``command`` in the settings)."""
        import torch

        from ..io.video import export_to_video

        def callback(step: int, timestep, latents) -> None:  # the pipeline's: step index from 0
            on_step(step + 1, request.num_inference_steps)
        with self.lock:
            t0 = time.perf_counter()
            base = self.base_scheduler
            # a fresh scheduler per request: multistep schedulers keep state between steps
            self.pipe.scheduler = (type(base).from_config(base.config) if request.scheduler == DEFAULT_SCHEDULER
                                   else make_scheduler(request.scheduler, base.config))
            if self.adapters:
                chosen = [] if request.adapter == NO_ADAPTER else [request.adapter]
                self.pipe.set_adapters(chosen, [self.adapters[a] for a in chosen])
            self.pipe.prompt_weighting = request.prompt_weighting
            try:
                frames = self.pipe(
                    request.prompt, negative_prompt=request.negative_prompt or None, height=self.height,
                    width=self.width, num_frames=request.num_frames,
                    num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                    generator=[torch.Generator("cpu").manual_seed(request.seed)],
                    callback=callback if on_step is not None else None,
                ).frames[0]  # (num_frames, height, width, 3)
            finally:
                self.pipe.scheduler = base
            seconds = time.perf_counter() - t0
        self._prune()
        folder = self.output_dir / uuid.uuid4().hex  # one folder per video: a friendly, unique download
        folder.mkdir()
        path = export_to_video(frames, str(folder / f"{slug(request.prompt)}-seed{request.seed}.mp4"),
                               fps=request.fps)
        return path, self.settings(request, seconds)

    def settings(self, request: Request, seconds: float | None = None) -> dict:
        """The settings used, for the page: the request, the model, the size, the time taken and the
        ``videofusion generate`` command that makes the same video."""
        scheduler = (type(self.base_scheduler).__name__ if request.scheduler == DEFAULT_SCHEDULER
                     else request.scheduler)
        out = {"model": self.model_name, **asdict(request), "scheduler": scheduler,
               "height": self.height, "width": self.width,
               "duration_s": round(request.num_frames / request.fps, 3)}
        if seconds is not None:
            out["generation_s"] = round(seconds, 2)
        out["command"] = self.command(request)
        return out

    def command(self, request: Request) -> str:
        args = ["videofusion", "generate", request.prompt]
        if not self.is_demo:
            args += ["--model", self.model_name]
        if request.negative_prompt:
            args += ["--negative-prompt", request.negative_prompt]
        args += ["--num-frames", request.num_frames, "--steps", request.num_inference_steps,
                 "--guidance-scale", f"{request.guidance_scale:g}", "--seed", request.seed]
        if request.scheduler != DEFAULT_SCHEDULER:
            args += ["--scheduler", request.scheduler]
        if request.adapter != NO_ADAPTER:  # the adapter as the page names it (the operator knows its file)
            args += ["--lora", f"{request.adapter}:{self.adapters[request.adapter]:g}"]
        if request.prompt_weighting:
            args += ["--prompt-weighting"]
        args += ["--height", self.height, "--width", self.width, "--fps", f"{request.fps:g}"]
        return shlex.join(str(a) for a in args)

    def _prune(self) -> None:
        """Remove output folders older than ``keep_seconds`` (the page has copied them by then)."""
        cutoff = time.time() - self.keep_seconds
        for folder in self.output_dir.iterdir():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def _gradio():
    """Import gradio with its analytics off (the variable is read at import and at launch)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError('videofusion web needs gradio: pip install "videofusion[web]"') from e
    return gr


def build_app(service: WebService):
    """The Gradio page (a ``gr.Blocks``, queue configured) for ``service``; call ``.launch()`` on it."""
    gr = _gradio()
    s, lim, d = service, service.limits, service.defaults

    def generate(prompt, negative_prompt, num_frames, steps, guidance_scale, seed, scheduler, fps, adapter,
                 weighting, progress=gr.Progress()):
        try:
            request = s.validate(prompt, negative_prompt, num_frames, steps, guidance_scale, seed, scheduler, fps,
                                 adapter, weighting)
            progress((0, request.num_inference_steps), desc="denoising")
            path, settings = s.generate(request, on_step=lambda i, n: progress((i, n), desc="denoising"))
        except ValueError as e:  # bad settings: shown in the page; the server goes on serving
            raise gr.Error(str(e), print_exception=False) from None
        return path, path, settings

    scheduler_choices = [(f"model default ({type(s.base_scheduler).__name__})", DEFAULT_SCHEDULER)]
    scheduler_choices += [(name, name) for name in s.scheduler_names[1:]]
    with gr.Blocks(title=f"videofusion · {s.model_name}", analytics_enabled=False,
                   delete_cache=(1800, 3600)) as app:
        gr.Markdown(f"# videofusion text-to-video\nModel: **{s.model_name}** · {s.width}x{s.height} pixels · "
                    f"up to {lim.max_frames} frames and {lim.max_steps} steps. "
                    "Requests are served one at a time, in order.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder=s.examples[0], lines=2, elem_id="prompt")
                if s.is_demo:  # the form in code style: Markdown would take <colour> for an HTML tag
                    note = vocabulary_note().replace(f"'{PROMPT_FORM}'", f"`{PROMPT_FORM}`")
                    gr.Markdown(note[0].upper() + note[1:] + ".", elem_id="vocabulary")
                negative = gr.Textbox(label="Negative prompt", placeholder="what to steer away from (optional)",
                                      elem_id="negative-prompt")
                with gr.Row():
                    num_frames = gr.Slider(1, lim.max_frames, value=d["num_frames"], step=1, label="Frames",
                                           elem_id="num-frames")
                    steps = gr.Slider(1, lim.max_steps, value=d["num_inference_steps"], step=1,
                                      label="Denoising steps", elem_id="steps")
                with gr.Row():
                    guidance = gr.Slider(1, lim.max_guidance, value=d["guidance_scale"], step=0.5,
                                         label="Guidance scale", elem_id="guidance-scale")
                    fps = gr.Slider(*FPS_RANGE, value=d["fps"], step=1, label="Frames per second", elem_id="fps")
                with gr.Row():
                    # no minimum/maximum here: validate() names the field in its error
                    seed = gr.Number(value=0, precision=0, label=f"Seed (0 to {MAX_SEED})", elem_id="seed", scale=3)
                    dice = gr.Button("Random seed", elem_id="random-seed", scale=1)
                scheduler = gr.Dropdown(scheduler_choices, value=DEFAULT_SCHEDULER, label="Scheduler",
                                        elem_id="scheduler")
                with gr.Row():
                    adapter = gr.Dropdown([NO_ADAPTER, *s.adapters], value=NO_ADAPTER, label="LoRA adapter",
                                          visible=bool(s.adapters), elem_id="adapter")
                    weighting = gr.Checkbox(False, label="Prompt weighting: (word:1.3), (word), [word]",
                                            elem_id="prompt-weighting")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="Video", interactive=False, autoplay=True, loop=True,
                                 buttons=["download"], elem_id="result-video")
                download = gr.File(label="Download mp4", interactive=False, elem_id="download")
                settings = gr.JSON(label="Settings used", elem_id="settings")
        gr.Examples([[p] for p in s.examples], inputs=[prompt], label="Example prompts")
        dice.click(random_seed, outputs=seed, queue=False, api_visibility="private")
        inputs = [prompt, negative, num_frames, steps, guidance, seed, scheduler, fps, adapter, weighting]
        run.click(generate, inputs, [video, download, settings], api_name="generate")
        prompt.submit(generate, inputs, [video, download, settings], api_visibility="private")
    app.queue(default_concurrency_limit=1, max_size=lim.queue_size)
    return app


def add_parser(sub) -> None:
    """Register ``videofusion web`` on an argparse subparsers object."""
    p = sub.add_parser("web", help="serve a web page that generates videos (needs the web extra)",
                       description="A Gradio page like the model's Space: prompt, settings, a video that plays "
                                   "in the page. Requests are queued and served one at a time.")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--variant", default=None, help="weight file variant, e.g. fp16")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-frames", type=int, default=32, help="most frames a visitor may ask for (default 32)")
    p.add_argument("--max-steps", type=int, default=50, help="most denoising steps a visitor may ask for (default 50)")
    p.add_argument("--max-guidance", type=float, default=20.0, help="highest guidance scale (default 20)")
    p.add_argument("--height", type=int, default=None, help="pixels of every video (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="pixels of every video (default: the model's)")
    p.add_argument("--queue-size", type=int, default=20, help="requests that may wait; more are refused (default 20)")
    p.add_argument("--lora", type=lora_arg, action="append", default=None, metavar="PATH[:SCALE]",
                   help="a LoRA adapter visitors may choose (by its file or folder name, at SCALE, default 1); "
                        "repeat for several")
    add_runtime_arguments(p)
    p.set_defaults(run=serve)


def model_label(model: str, is_demo: bool) -> str:
    """A name to show visitors: a Hub id as is, a folder by its last component (no server paths)."""
    if is_demo:
        return "built-in demo model"
    return Path(model).name if os.path.isdir(model) else model


def adapter_label(path: str, taken: dict) -> str:
    """What the page calls a LoRA: its file's stem or folder's name (no server paths), made unique."""
    base = Path(path.rstrip("/\\")).stem or "lora"
    name, n = base, 2
    while name in taken or name == NO_ADAPTER:
        name, n = f"{base}-{n}", n + 1
    return name


def check_port(host: str, port: int) -> None:
    """CLIError unless ``port`` can be listened on at ``host`` (checked before the model loads)."""
    if not 0 < port < 65536:
        raise CLIError(f"--port: must be from 1 to 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror as e:
            raise CLIError(f"--host: {host!r} is not an address of this machine ({e.strerror})") from None
        except OSError as e:
            raise CLIError(f"--port: cannot listen on {host}:{port} ({e.strerror}); another program uses it: "
                           "choose another with --port") from None


def serve(args) -> int:
    """Run ``videofusion web``: check the options, load the pipeline once, serve until interrupted. The
    videos (and Gradio's copies of them) live in a temporary folder that goes when the server stops."""
    from ..pipelines import DiffusionPipeline

    check_port(args.host, args.port)
    limits = Limits(max_frames=args.max_frames, max_steps=args.max_steps, max_guidance=args.max_guidance,
                    height=args.height, width=args.width, queue_size=args.queue_size)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    set_threads(args.threads)
    model = resolve_model(args.model)
    is_demo = is_demo_model(model)
    workdir = Path(tempfile.mkdtemp(prefix="videofusion-web-"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workdir / "gradio"))
    try:
        try:
            _gradio()
        except ImportError as e:
            raise CLIError(str(e)) from None
        folder = model_folder(model, args.variant)
        check_size(request_settings(model, dict(height=args.height, width=args.width)), folder)  # before loading
        loras = read_loras(args.lora)
        pipe = DiffusionPipeline.from_pretrained(str(folder), torch_dtype=dtype, variant=args.variant)
        pipe.to(device)
        adapters = {}
        for (lora, scale), (path, _) in zip(loras, args.lora or []):
            name = adapter_label(path, adapters)
            adapters[pipe.lora.load(lora, name)] = scale
        if args.compile:
            pipe.enable_fast_path()  # compiled at the first request of each size
        service = WebService(pipe, model_label(model, is_demo), limits, defaults=model_defaults(model),
                             examples=DEMO_EXAMPLES if is_demo else HUB_EXAMPLES, output_dir=str(workdir / "videos"),
                             is_demo=is_demo, adapters=adapters)
        app = build_app(service)
        print(f"videofusion web: {service.model_name}, {service.width}x{service.height}, limits "
              + json.dumps(asdict(limits)) + f"; serving on http://{args.host}:{args.port} (Ctrl-C stops it)",
              flush=True)
        previous = signal.signal(signal.SIGTERM, _stop)  # `kill` stops the server as Ctrl-C does
        try:
            app.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, show_error=False,
                       footer_links=["api"], quiet=True)
        except OSError as e:  # the port was taken after the check
            raise CLIError(f"--port: cannot listen on {args.host}:{args.port} ({e})") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt
