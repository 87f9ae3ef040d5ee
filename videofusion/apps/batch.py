"""Batch generation on Ray: many prompts from a JSONL file, one pipeline per worker, resumable.

Each line of the prompts file is a JSON object ``{"prompt": ..., "id": ..., "seed": ..., <settings>}``
(see :mod:`videofusion.apps.batch_items`). :func:`run_batch` reads and checks every line first (a bad line is reported
with its line number and skipped; the others still run), skips the items a previous run finished, and
sends the rest through a Ray Data pipeline whose workers (:class:`BatchWorker`, Ray actors) each load
the pipeline once. Workers return the encoded mp4 bytes; the driver writes ``DIR/<id>.mp4`` atomically
and appends one line per finished item to ``DIR/manifest.jsonl``, so the output folder only has to exist
on the machine that runs the command, even on a cluster.

Determinism: an item's video depends only on its settings and seed (the item's ``seed``, else one
derived from its id by :func:`derive_seed`), drawn from its own generator, never on the number of
workers or the order they run in.

Resuming: an item is done when the manifest has a line for its id with the same prompt, seed, settings,
model (path, and for a folder its files' sizes and times) and output options, and ``DIR/<id>.mp4`` has the byte size recorded there. Rerunning the same
command regenerates only the missing, truncated or changed items; the manifest is compacted first, so
no id ever has two lines.
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

from .batch_items import PIPELINE_DEFAULTS, Item, check_settings, is_count, is_number, read_items

MANIFEST = "manifest.jsonl"
ERRORS = "errors.jsonl"
LOCK = ".videofusion-batch.lock"
PART_SUFFIX = ".part"  # temp files of unfinished writes, removed when a run starts

# What an output depends on besides the item: a manifest line with other values is stale.
SPEC_KEYS = ("prompt", "seed", "settings", "model", "model_files", "variant", "scheduler", "dtype", "fps")


class BatchError(RuntimeError):
    """The Ray workers could not run (e.g. the model failed to load); what was written is kept."""


@dataclass
class BatchOptions:
    """Everything about a batch run except the items.

    ``defaults`` are pipeline settings applied to items that do not set them (over the model's own:
    the demo model's ``DEMO_DEFAULTS``, else :data:`PIPELINE_DEFAULTS`). ``workers`` Ray actors run
    with ``num_cpus_per_worker`` CPUs and ``num_gpus_per_worker`` GPUs each (fractions share a GPU);
    ``threads``: torch threads per worker (default: its CPU count). ``ray_address``: ``None`` starts a
    local Ray sized for the workers, ``"auto"`` or ``"host:port"`` joins a running cluster.
    """

    model: str
    variant: str | None = None
    scheduler: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    fps: float = 8
    defaults: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    num_cpus_per_worker: float = 1
    num_gpus_per_worker: float = 0
    threads: int | None = None
    ray_address: str | None = None

    def check(self) -> None:
        """ValueError naming the option unless every value is usable (cheap; no Ray, no model)."""
        from ..schedulers import SCHEDULERS
        if not is_count(self.workers):
            raise ValueError(f"workers: must be an integer >= 1, got {self.workers!r}")
        if not is_number(self.num_cpus_per_worker) or self.num_cpus_per_worker <= 0:
            raise ValueError(f"num_cpus_per_worker: must be a number > 0, got {self.num_cpus_per_worker!r}")
        if not is_number(self.num_gpus_per_worker) or self.num_gpus_per_worker < 0:
            raise ValueError(f"num_gpus_per_worker: must be a number >= 0, got {self.num_gpus_per_worker!r}")
        if self.threads is not None and not is_count(self.threads):
            raise ValueError(f"threads: must be an integer >= 1 or None, got {self.threads!r}")
        if not is_number(self.fps) or self.fps <= 0:
            raise ValueError(f"fps: must be a number > 0, got {self.fps!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: {self.scheduler!r} is not one of {sorted(SCHEDULERS)}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype: {self.dtype!r} is not one of auto, float32, float16, bfloat16")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"device: {self.device!r} is not auto, cpu, cuda or mps (Ray picks each worker's GPU)")
        if self.num_gpus_per_worker == 0 and self.device == "cuda":
            raise ValueError("device: 'cuda' needs num_gpus_per_worker > 0 (Ray hands out the GPUs)")
        model_dir = Path(self.model).expanduser()
        if (model_dir.exists() or self.model.startswith((".", "/", "~"))) and \
                not (model_dir / "model_index.json").is_file():
            raise ValueError(f"model: {self.model!r} is not a pipeline folder (no model_index.json)")
        check_settings(self.defaults, "defaults")


def resolve_defaults(options: BatchOptions) -> dict[str, Any]:
    """The settings an item starts from: pipeline defaults < the model's (demo) defaults < ``options.defaults``."""
    from ..demo import generation_defaults
    return {**PIPELINE_DEFAULTS, **generation_defaults(options.model), **options.defaults}


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


def item_spec(item: Item, run: dict[str, Any]) -> dict[str, Any]:
    """What an item's output depends on (the :data:`SPEC_KEYS`), as recorded in the manifest."""
    return {"prompt": item.prompt, "seed": item.seed, "settings": item.settings, **run}


# ----------------------------------------------------------------------------- output folder


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PART_SUFFIX}")
    try:
        _write_synced(str(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(path: Path) -> dict[str, dict]:
    """``{id: record}`` from a manifest, the last line of an id winning; unreadable lines (a run killed
    while appending) are ignored."""
    records: dict[str, dict] = {}
    if path.is_file():
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                records.pop(record["id"], None)
                records[record["id"]] = record
    return records


def is_complete(record: dict, output_dir: Path) -> bool:
    """True if the record's video exists with the recorded byte size (atomic writes leave no partial
    file; a wrong size means the file was cut or replaced after the run)."""
    file = output_dir / f"{record['id']}.mp4"
    return file.is_file() and file.stat().st_size == record.get("bytes")


def plan(items: list[Item], run: dict[str, Any], output_dir: Path) -> tuple[list[Item], list[dict]]:
    """``(pending items, manifest records to keep)``: an item is done when its record matches its spec
    and its file is complete. Records of ids absent from ``items`` are kept while their file is complete."""
    records = read_manifest(output_dir / MANIFEST)
    wanted = {item.id: item for item in items}
    keep = []
    for item_id, record in records.items():
        if not is_complete(record, output_dir):
            continue
        item = wanted.get(item_id)
        if item is not None and {k: record.get(k) for k in SPEC_KEYS} != item_spec(item, run):
            continue
        keep.append(record)
    kept = {r["id"] for r in keep}
    return [item for item in items if item.id not in kept], keep


class OutputFolder:
    """The output folder of one run: holds a lock, writes videos atomically, appends manifest lines."""

    def __init__(self, path: Path):
        import fcntl
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._lock = open(path / LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ValueError(f"output: another `videofusion batch` is writing to {path}; wait for it or "
                             "use another folder") from None
        for stale in path.glob(f".*{PART_SUFFIX}"):  # left by a killed run; we hold the lock
            stale.unlink(missing_ok=True)
        self._manifest: int | None = None

    def start_manifest(self, keep: list[dict]) -> None:
        """Rewrite the manifest with ``keep`` only (atomically), then open it for appending."""
        text = "".join(json.dumps(r) + "\n" for r in keep)
        write_atomic(self.path / MANIFEST, text.encode("utf-8"))
        self._manifest = os.open(self.path / MANIFEST, os.O_WRONLY | os.O_APPEND)

    def add(self, record: dict, mp4: bytes) -> None:
        """Write ``<id>.mp4`` atomically, then append its manifest line (one write, fsynced)."""
        write_atomic(self.path / f"{record['id']}.mp4", mp4)
        os.write(self._manifest, (json.dumps(record) + "\n").encode("utf-8"))
        os.fsync(self._manifest)

    def write_errors(self, errors: list[dict]) -> None:
        """``errors.jsonl`` lists this run's bad lines and failed items; removed when there are none."""
        if errors:
            write_atomic(self.path / ERRORS, "".join(json.dumps(e) + "\n" for e in errors).encode("utf-8"))
        else:
            (self.path / ERRORS).unlink(missing_ok=True)

    def close(self) -> None:
        if self._manifest is not None:
            os.close(self._manifest)
        self._lock.close()


# ----------------------------------------------------------------------------- worker


class BatchWorker:
    """A Ray Data callable class: loads the pipeline once per actor, then turns batches of items into
    mp4 bytes. Columns in: ``item`` (JSON of an :class:`Item`); out: ``id``, ``result`` (JSON: frame
    count and size, seconds, worker, a SHA-256 of the uint8 frames, or ``error``) and ``mp4`` (bytes)."""

    def __init__(self, options: dict):
        import torch

        from ..pipelines.registry import DiffusionPipeline
        from ..schedulers import make_scheduler
        torch.set_num_threads(options["threads"])
        device = options["device"]
        if device == "auto":
            device = "cuda" if options["num_gpus_per_worker"] > 0 else "cpu"
        device = torch.device(device)
        dtype = options["dtype"]
        dtype = (torch.float16 if device.type == "cuda" else torch.float32) if dtype == "auto" else getattr(torch, dtype)
        pipe = DiffusionPipeline.from_pretrained(options["model"], torch_dtype=dtype, variant=options["variant"])
        if options["scheduler"]:
            pipe.scheduler = make_scheduler(options["scheduler"], pipe.scheduler.config)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.fps = pipe, options["fps"]
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def generate(self, item: dict) -> tuple[dict, bytes]:
        """One item -> (result, mp4 bytes). The item's own generator makes its noise."""
        import torch

        from ..io.video import export_to_video, to_uint8_frames
        t0 = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(item["seed"])
        frames = self.pipe(item["prompt"], generator=[generator], **item["settings"]).frames[0]
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
            result["worker"] = self.name
            out["id"].append(item["id"])
            out["result"].append(json.dumps(result))
            out["mp4"].append(data)
        return out


# ----------------------------------------------------------------------------- driver


def _start_ray(options: BatchOptions) -> bool:
    """Connect to or start Ray; True if this call started it (and so should shut it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    if ray.is_initialized():
        return False
    common = dict(log_to_driver=False, logging_level=logging.WARNING)
    if options.ray_address:
        try:
            ray.init(address=options.ray_address, **common)
        except ConnectionError as e:
            raise ValueError(f"ray_address: cannot join the Ray cluster at {options.ray_address!r}: {e}") from None
    else:
        # workers at normal priority: they are the job (Ray's default, nice 15, starves them on a busy machine)
        ray.init(num_cpus=math.ceil(options.workers * options.num_cpus_per_worker), include_dashboard=False,
                 _system_config={"worker_niceness": 0}, **common)
    return True


def _stream_results(pending: list[Item], options: BatchOptions):
    """Yield ``(id, result, mp4)`` as the Ray Data workers finish items (in any order)."""
    import ray
    import ray.data
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress bars and plans: ours counts items
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
    worker_options = {**asdict(options), "threads": options.threads or max(1, int(options.num_cpus_per_worker))}
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
    items, errors = read_items(prompts, resolve_defaults(options))
    for error in errors:
        _report(prompts, error)
    invalid = len(errors)
    folder = OutputFolder(Path(output_dir))
    summary = {"items": len(items), "skipped": 0, "generated": 0, "failed": 0, "invalid": invalid}
    started = False
    try:
        run = run_spec(options)
        pending, keep = plan(items, run, folder.path)
        folder.start_manifest(keep)
        summary["skipped"] = len(items) - len(pending)
        by_id = {item.id: item for item in pending}
        if pending:
            started = _start_ray(options)
            bar = tqdm(total=len(items), initial=summary["skipped"], unit="video", desc="batch",
                       disable=not progress, dynamic_ncols=True)
            with bar, _ray_errors(summary):
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
        if started:
            import ray
            ray.shutdown()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
