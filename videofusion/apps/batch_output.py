"""The output folder of ``videofusion batch``: ``<id>.mp4`` files written atomically, ``manifest.jsonl`` (one line
per finished item, what its video depends on), ``errors.jsonl``, and the lock that keeps two runs apart.
Which items a rerun still has to make is :func:`plan`'s answer."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..io.saving import atomic_write_bytes, atomic_write_text, sweep_partial_files
from .batch_items import Item

MANIFEST = "manifest.jsonl"
ERRORS = "errors.jsonl"
LOCK = ".videofusion-batch.lock"

# What an output depends on besides the item: a manifest line with other values is stale.
SPEC_KEYS = ("prompt", "seed", "settings", "video", "video_file", "lora", "model", "model_files", "variant",
             "scheduler", "dtype", "fps")


def item_spec(item: Item, run: dict[str, Any]) -> dict[str, Any]:
    """What an item's output depends on (the :data:`SPEC_KEYS`), as recorded in the manifest: for an item
    with a video, its path and the file's size and modification time too."""
    video_file = None
    if item.video is not None:
        stat = os.stat(item.video)
        video_file = f"{stat.st_size}:{stat.st_mtime_ns}"
    lora = [[path, scale, _file_stamp(path)] for path, scale in item.lora]
    return {"prompt": item.prompt, "seed": item.seed, "settings": item.settings, "video": item.video,
            "video_file": video_file, "lora": lora, **run}


def _file_stamp(path: str) -> str | None:
    """``size:mtime`` of a local file, of a folder's newest file; None for a Hub id."""
    if os.path.isdir(path):
        stats = [os.stat(p) for p in Path(path).rglob("*") if p.is_file()]
        return f"{sum(s.st_size for s in stats)}:{max((s.st_mtime_ns for s in stats), default=0)}"
    if os.path.isfile(path):
        stat = os.stat(path)
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return None


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
        sweep_partial_files(path)  # left by a killed run; we hold the lock
        self._manifest: int | None = None

    def start_manifest(self, keep: list[dict]) -> None:
        """Rewrite the manifest with ``keep`` only (atomically), then open it for appending."""
        text = "".join(json.dumps(r) + "\n" for r in keep)
        atomic_write_text(self.path / MANIFEST, text)
        self._manifest = os.open(self.path / MANIFEST, os.O_WRONLY | os.O_APPEND)

    def add(self, record: dict, mp4: bytes) -> None:
        """Write ``<id>.mp4`` atomically, then append its manifest line (one write, fsynced)."""
        atomic_write_bytes(self.path / f"{record['id']}.mp4", mp4)
        os.write(self._manifest, (json.dumps(record) + "\n").encode("utf-8"))
        os.fsync(self._manifest)

    def write_errors(self, errors: list[dict]) -> None:
        """``errors.jsonl`` lists this run's bad lines and failed items; removed when there are none."""
        if errors:
            atomic_write_text(self.path / ERRORS, "".join(json.dumps(e) + "\n" for e in errors))
        else:
            (self.path / ERRORS).unlink(missing_ok=True)

    def close(self) -> None:
        if self._manifest is not None:
            os.close(self._manifest)
        self._lock.close()
