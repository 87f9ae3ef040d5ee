"""Batch generation on Ray: many prompts from a JSONL file, one pipeline per worker, resumable.

Each line of the prompts file is a JSON object ``{"prompt": ..., "id": ..., "seed": ..., <settings>}``
(see :mod:`videofusion.apps.batch_items`). :func:`run_batch` reads and checks every line first (a bad line is
reported with its line number and skipped; the others still run), skips the items a previous run finished, and
sends the rest through a Ray Data pipeline whose workers (:class:`BatchWorker`, Ray actors) each load
the pipeline once. Workers return the encoded mp4 bytes; the driver writes ``DIR/<id>.mp4`` atomically
and appends one line per finished item to ``DIR/manifest.jsonl``, so the output folder only has to exist
on the machine that runs the command, even on a cluster.

Determinism: an item's video depends only on its settings and seed (the item's ``seed``, else one
derived from its id by :func:`derive_seed`), drawn from its own generator, never on the number of
workers or the order they run in.

Resuming: an item is done when the manifest has a line for its id with the same prompt, seed, settings,
model (path, and for a folder its files' sizes and times) and output options, and ``DIR/<id>.mp4`` has the
byte size recorded there (:mod:`videofusion.apps.batch_output`). Rerunning the same command regenerates only
the missing, truncated or changed items; the manifest is compacted first, so no id ever has two lines.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..io.video import DEFAULT_FPS
from ..pipelines.folders import native_geometry
from ..runtime.devices import DTYPES, default_threads, pick_device, pick_dtype
from ..errors import SettingError
from ..settings import is_count, is_number
from .batch_items import (PIPELINE_DEFAULTS, VIDEO_TO_VIDEO_PIPELINE_DEFAULTS, VIDEO_TO_VIDEO_SETTINGS, Defaults, Item,
                          check_settings, read_items)
from .batch_output import OutputFolder, item_spec, plan
from .common import (MODEL_HELP, CLIError, add_runtime_arguments, model_defaults, model_folder, resolve_model,
                     set_threads)
from .reaper import start_watchdog, stop_watchdog

RAY_LOG = "ray.log"  # what Ray itself prints during `videofusion batch`



class BatchError(RuntimeError):
    """The Ray workers could not run (e.g. the model failed to load); what was written is kept."""


@dataclass
class BatchOptions:
    """Everything about a batch run except the items.

    ``defaults`` are pipeline settings applied to items that do not set them (over the model's own:
    the demo model's ``DEMO_DEFAULTS``, else :data:`PIPELINE_DEFAULTS`). ``workers`` Ray actors run
    with ``num_cpus_per_worker`` CPUs (default: the thread count every front end uses by default, half the
    machine's CPUs) and ``num_gpus_per_worker`` GPUs each (fractions share a GPU); ``threads``: torch threads
    per worker (default: its CPUs, so by default a worker computes as ``videofusion generate`` does and gives
    the same video). ``ray_address``: ``None`` starts a local Ray sized for the workers, ``"auto"`` or
    ``"host:port"`` joins a running cluster.
    """

    model: str
    variant: str | None = None
    scheduler: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    fps: float = DEFAULT_FPS
    defaults: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    num_cpus_per_worker: float | None = None
    num_gpus_per_worker: float = 0
    threads: int | None = None
    compile: bool = False
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.num_cpus_per_worker is None:
            self.num_cpus_per_worker = default_threads()

    def check(self) -> None:
        """ValueError naming the option unless every value is usable (cheap; no Ray, no model)."""
        from ..schedulers import SCHEDULERS
        if not is_count(self.workers):
            raise SettingError("workers", self.workers, "an integer >= 1")
        if not is_number(self.num_cpus_per_worker) or self.num_cpus_per_worker <= 0:
            raise SettingError("num_cpus_per_worker", self.num_cpus_per_worker, "a number > 0")
        if not is_number(self.num_gpus_per_worker) or self.num_gpus_per_worker < 0:
            raise SettingError("num_gpus_per_worker", self.num_gpus_per_worker, "a number >= 0")
        if self.threads is not None and not is_count(self.threads):
            raise SettingError("threads", self.threads, "an integer >= 1 or None")
        if not is_number(self.fps) or self.fps <= 0:
            raise SettingError("fps", self.fps, "a number > 0")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise SettingError("scheduler", self.scheduler, f"one of {', '.join(sorted(SCHEDULERS))}")
        if self.dtype not in DTYPES:
            raise SettingError("dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise SettingError("device", self.device, "auto, cpu, cuda or mps (Ray picks each worker's GPU)")
        if self.num_gpus_per_worker == 0 and self.device == "cuda":
            raise SettingError("device", self.device, "auto or cpu without --num-gpus-per-worker (Ray hands out the GPUs)")
        model_dir = Path(self.model).expanduser()
        if (model_dir.exists() or self.model.startswith((".", "/", "~"))) and \
                not (model_dir / "model_index.json").is_file():
            raise SettingError("model", self.model, "a pipeline folder (with a model_index.json) or a Hub id")
        check_settings(self.defaults)  # names a bad default before the model's defaults are merged in
        settings = check_settings(resolve_defaults(self).text_to_video)
        if self.geometry() is not None:
            settings.sized(*self.geometry())

    def geometry(self) -> tuple[int, int] | None:
        """The model's ``(native_size, vae_scale_factor)`` when it is a local pipeline folder (a Hub id's
        sizes are checked by the workers, which download it)."""
        model_dir = Path(self.model).expanduser()
        return native_geometry(model_dir) if (model_dir / "model_index.json").is_file() else None


def resolve_defaults(options: BatchOptions) -> Defaults:
    """The settings items start from: the pipeline's defaults (text-to-video's, or video-to-video's for items
    with a video) < the model's (demo) defaults < ``options.defaults``."""
    return Defaults(*({**base, **model_defaults(options.model), **options.defaults}
                      for base in (PIPELINE_DEFAULTS, VIDEO_TO_VIDEO_PIPELINE_DEFAULTS)))


def model_fingerprint(model: str) -> str | None:
    """A local model folder's files (relative paths, sizes, modification times) hashed, so a retrained
    or re-saved model at the same path is noticed; ``None`` for a Hub id."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def run_spec(options: BatchOptions) -> dict[str, Any]:
    """What every output of a run depends on besides its item (part of :data:`SPEC_KEYS`)."""
    return {"model": options.model, "model_files": model_fingerprint(options.model), "variant": options.variant,
            "scheduler": options.scheduler, "dtype": options.dtype, "fps": options.fps}


# ----------------------------------------------------------------------------- worker


class BatchWorker:
    """A Ray Data callable class: loads the pipeline once per actor, then turns batches of items into
    mp4 bytes. Columns in: ``item`` (JSON of an :class:`Item`); out: ``id``, ``result`` (JSON: frame
    count and size, seconds, worker, a SHA-256 of the uint8 frames, or ``error``) and ``mp4`` (bytes)."""

    def __init__(self, options: dict):
        from ..pipelines import DiffusionPipeline, VideoToVideoSDPipeline
        from ..schedulers import make_scheduler
        self.threads = set_threads(options["threads"] or max(1, int(options["num_cpus_per_worker"])))
        # a worker Ray gave no GPU computes on the CPU; with GPUs, "auto" picks as everywhere
        device = pick_device("cpu" if options["device"] == "auto" and not options["num_gpus_per_worker"]
                             else options["device"])
        dtype = pick_dtype(options["dtype"], device)
        pipe = DiffusionPipeline.from_pretrained(options["model"], torch_dtype=dtype, variant=options["variant"])
        if options["scheduler"]:
            pipe.scheduler = make_scheduler(options["scheduler"], pipe.scheduler.config)
        pipe.to(device)
        if options["compile"]:
            pipe.enable_fast_path()  # each worker compiles at its first item of each size
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.fps = pipe, options["fps"]
        self.video_pipe = VideoToVideoSDPipeline(**pipe.components)  # the same models: their adapters too
        self.video_pipe.set_progress_bar_config(disable=True)
        self.adapters: dict[str, str] = {}  # LoRA path or Hub id -> its adapter name, loaded once
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def generate(self, item: dict) -> tuple[dict, bytes]:
        """One item -> (result, mp4 bytes). The item's own generator makes its noise."""
        import torch

        from ..io.video import export_to_video, to_uint8_frames
        t0 = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(item["seed"])
        settings = item["settings"]
        loras = item.get("lora", ())
        for path, _ in loras:
            if path not in self.adapters:
                name = f"lora_{len(self.adapters)}"
                self.pipe.load_lora_weights(path, adapter_name=name)
                self.adapters[path] = name
        self.pipe.set_adapters([self.adapters[p] for p, _ in loras], [s for _, s in loras])
        if item["video"] is None:
            call = {k: v for k, v in settings.items() if k != "strength"}
            frames = self.pipe(item["prompt"], generator=[generator], **call).frames[0]
        else:  # video-to-video on the same weights
            call = {k: settings[k] for k in VIDEO_TO_VIDEO_SETTINGS}
            frames = self.video_pipe(item["prompt"], video=item["video"], generator=[generator], **call).frames[0]
        video = to_uint8_frames(frames)  # (f, h, w, 3) uint8, exactly what gets encoded
        path = Path(export_to_video(video, fps=self.fps))  # a new file in the worker's temp folder
        data = path.read_bytes()
        path.unlink()
        num_frames, height, width = video.shape[:3]
        return {"num_frames": int(num_frames), "height": int(height), "width": int(width),
                "frames_sha256": hashlib.sha256(video.tobytes()).hexdigest(),
                "seconds": round(time.perf_counter() - t0, 3)}, data

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"id": [], "result": [], "mp4": []}
        for text in batch["item"]:
            item = json.loads(str(text))
            try:
                result, data = self.generate(item)
            except Exception as e:  # one bad item must not stop the batch: report it
                result, data = {"error": f"{type(e).__name__}: {e}"}, b""
            result["worker"], result["threads"] = self.name, self.threads
            out["id"].append(item["id"])
            out["result"].append(json.dumps(result))
            out["mp4"].append(data)
        return out


# ----------------------------------------------------------------------------- driver


@contextlib.contextmanager
def ray_session(options: BatchOptions):
    """Ray for one run: join ``options.ray_address``, or start a local Ray sized for the workers (with a
    watchdog that ends its processes with this one, :mod:`videofusion.apps.reaper`); either is shut down
    after. A Ray already initialised in this process is used as it is."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    if ray.is_initialized():
        yield
        return
    common = dict(log_to_driver=False, logging_level=logging.ERROR)
    watchdog = None
    if options.ray_address:
        try:
            ray.init(address=options.ray_address, **common)
        except ConnectionError as e:
            raise ValueError(f"ray_address: cannot join the Ray cluster at {options.ray_address!r}: {e}") from None
    else:
        watchdog = start_watchdog()
        # workers at normal priority: they are the job (Ray's default, nice 15, starves them on a busy machine)
        ray.init(num_cpus=math.ceil(options.workers * options.num_cpus_per_worker), include_dashboard=False,
                 _system_config={"worker_niceness": 0}, **common)
    try:
        yield
    finally:
        ray.shutdown()
        stop_watchdog(watchdog)


def _stream_results(pending: list[Item], options: BatchOptions):
    """Yield ``(id, result, mp4)`` as the Ray Data workers finish items (in any order)."""
    import ray
    import ray.data
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress bars and plans: ours counts items
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
    worker_options = asdict(options)
    rows = [{"item": json.dumps(asdict(item))} for item in pending]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        BatchWorker, fn_constructor_kwargs={"options": worker_options}, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(options.workers, len(rows))),
        num_cpus=options.num_cpus_per_worker, num_gpus=options.num_gpus_per_worker or None)
    for row in dataset.iter_rows():
        yield str(row["id"]), json.loads(str(row["result"])), bytes(row["mp4"])


@contextlib.contextmanager
def _ray_errors(summary: dict):
    """Turn a Ray failure (workers that cannot start, a lost cluster) into a one-line BatchError."""
    from ray.exceptions import RayError
    try:
        yield
    except RayError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(e).__name__
        raise BatchError(f"the Ray workers failed: {cause} ({summary['generated']} video(s) written this run; "
                         "rerun the command to resume)") from e


def _report(prompts: str, error: dict) -> None:
    """``PROMPTS:LINE: [id: ]message`` on stderr, above the progress bar."""
    from tqdm.auto import tqdm
    item = f"{error['id']}: " if "id" in error else ""
    tqdm.write(f"{prompts}:{error['line']}: {item}{error['error']}", file=sys.stderr)


def run_batch(prompts: str | os.PathLike, output_dir: str | os.PathLike, options: BatchOptions,
              progress: bool = True) -> dict:
    """Generate every item of the JSONL file ``prompts`` into ``output_dir``; see the module docstring.

    Bad lines and failed items are printed to stderr as ``PROMPTS:LINE: message`` and listed in
    ``output_dir/errors.jsonl``; the other items still run. Returns a summary: ``items`` (valid lines),
    ``skipped`` (already done), ``generated``, ``failed``, ``invalid`` (bad lines), ``seconds``.
    Raises ValueError for bad options or a missing prompts file, before starting Ray.
    """
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    prompts = os.fspath(prompts)
    if not os.path.isfile(prompts):
        raise FileNotFoundError(f"prompts: no such file {prompts!r}")
    options.check()
    items, errors = read_items(prompts, resolve_defaults(options), options.geometry())
    for error in errors:
        _report(prompts, error)
    invalid = len(errors)
    folder = OutputFolder(Path(output_dir))
    summary = {"items": len(items), "skipped": 0, "generated": 0, "failed": 0, "invalid": invalid}
    try:
        run = run_spec(options)
        pending, keep = plan(items, run, folder.path)
        folder.start_manifest(keep)
        summary["skipped"] = len(items) - len(pending)
        by_id = {item.id: item for item in pending}
        if pending:
            bar = tqdm(total=len(items), initial=summary["skipped"], unit="video", desc="batch",
                       disable=not progress, dynamic_ncols=True)
            with ray_session(options), bar, _ray_errors(summary):
                for item_id, result, mp4 in _stream_results(pending, options):
                    item = by_id.pop(item_id, None)
                    if item is None:  # a retried task delivered twice: the first one was written
                        continue
                    if "error" in result:
                        error = {"line": item.line, "id": item.id, "error": result["error"]}
                        errors.append(error)
                        _report(prompts, error)
                        summary["failed"] += 1
                    else:
                        record = {"id": item.id, "file": f"{item.id}.mp4", "line": item.line,
                                  **item_spec(item, run), **result, "bytes": len(mp4),
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                        folder.add(record, mp4)
                        summary["generated"] += 1
                    bar.update()
        folder.write_errors(errors)
    finally:
        folder.close()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


# ----------------------------------------------------------------------------- the command


@contextlib.contextmanager
def native_stderr_to(path: Path):
    """Send what native code writes to the process's stderr (Ray's C++ log lines: a warning about actor
    restarts on every run, connection retries after Ctrl-C) to ``path``, while Python's ``sys.stderr``
    (errors, progress bars) still reaches the terminal."""
    python_stderr = sys.stderr
    python_stderr.flush()
    try:
        on_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # already captured elsewhere (an IDE, pytest)
        on_fd2 = False
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if on_fd2:
        sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=python_stderr.encoding or "utf-8",
                          errors="backslashreplace")
    os.dup2(log, 2)
    os.close(log)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        if on_fd2:
            sys.stderr.close()
            sys.stderr = python_stderr



def add_parser(sub) -> None:
    """Register ``videofusion batch`` on an argparse subparsers object."""
    from ..schedulers import SCHEDULERS
    p = sub.add_parser("batch", help="generate a video for every line of a JSONL file, on Ray (resumable)",
                       description="Generate DIR/<id>.mp4 for each line {\"prompt\": ..., optional \"id\", \"seed\", "
                                   "\"negative_prompt\", \"num_frames\", \"num_inference_steps\", \"guidance_scale\", "
                                   "\"height\", \"width\", \"noise\", \"noise_ratio\", \"video\" (a file: "
                                   "video-to-video), \"strength\"} of PROMPTS, plus DIR/manifest.jsonl. "
                                   "Rerunning skips finished items. Needs Ray: pip install 'videofusion[distributed]'.")
    p.add_argument("prompts", help="a .jsonl file, one JSON object per line")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--model", default=None, help=MODEL_HELP + "; readable on every worker")
    p.add_argument("--variant", default=None, help="weight file variant, e.g. fp16")
    p.add_argument("--scheduler", default=None, choices=sorted(SCHEDULERS), metavar="NAME",
                   help="sampler: " + ", ".join(sorted(SCHEDULERS)) + " (default: the model's)")
    p.add_argument("--negative-prompt", default=None, help="default for items that set none")
    p.add_argument("--num-frames", type=int, default=None, help="default frames per item (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="default denoising steps (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="default guidance (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="default pixels (default: the model's size)")
    p.add_argument("--width", type=int, default=None, help="default pixels (default: the model's size)")
    p.add_argument("--noise", default=None, choices=("independent", "decomposed"), help="default initial noise")
    p.add_argument("--noise-ratio", type=float, default=None, help="default weight of the shared base noise")
    p.add_argument("--strength", type=float, default=None,
                   help="default strength of items with a video (video-to-video; default 0.6)")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"frames per second of the files (default {DEFAULT_FPS})")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, one pipeline each (default 1)")
    p.add_argument("--num-cpus-per-worker", type=float, default=None,
                   help="CPUs Ray reserves per worker, its torch threads (default: half this machine's CPUs)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0,
                   help="GPUs per worker, e.g. 1, or 0.5 to share one between two (default 0: CPU)")
    add_runtime_arguments(p, device_help="auto, cpu, cuda, mps (default auto: a worker with GPUs "
                                         "(--num-gpus-per-worker) uses them, else the CPU)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join a running Ray cluster ('auto' or host:port); default: start a local Ray")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=run_command)


def run_command(args) -> int:
    """Run ``videofusion batch``; exit code 1 when an item failed or a line was invalid."""
    try:
        import ray  # noqa: F401  (the optional extra)
    except ImportError:
        raise CLIError("videofusion batch needs Ray: pip install 'videofusion[distributed]'") from None
    defaults = {k: v for k, v in dict(negative_prompt=args.negative_prompt, num_frames=args.num_frames,
                                      num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                      height=args.height, width=args.width, noise=args.noise,
                                      noise_ratio=args.noise_ratio, strength=args.strength).items() if v is not None}
    options = BatchOptions(model=resolve_model(args.model), variant=args.variant, scheduler=args.scheduler,
                           device=args.device, dtype=args.dtype, fps=args.fps, defaults=defaults,
                           workers=args.workers, num_cpus_per_worker=args.num_cpus_per_worker,
                           num_gpus_per_worker=args.num_gpus_per_worker, threads=args.threads, compile=args.compile,
                           ray_address=args.ray_address)
    options.check()  # before the output folder is made
    model_folder(options.model, options.variant)  # a model that is nowhere: one line now, not one per worker
    Path(args.output).mkdir(parents=True, exist_ok=True)
    ray_log = Path(args.output) / RAY_LOG
    try:
        with native_stderr_to(ray_log):
            s = run_batch(args.prompts, args.output, options, progress=not args.quiet)
    except BatchError as e:
        print(f"videofusion batch: error: {e} (Ray's log: {ray_log})", file=sys.stderr)
        return 1
    print(f"{args.output}: {s['skipped'] + s['generated']}/{s['items']} videos ({s['generated']} generated, "
          f"{s['skipped']} already done), {s['failed']} failed, {s['invalid']} invalid line(s); {s['seconds']:.0f} s")
    return 1 if s["failed"] or s["invalid"] else 0
