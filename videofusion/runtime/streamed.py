"""Streamed offload: weights in pinned CPU memory, copied to the GPU block by block on a side CUDA
stream while the previous blocks compute, with at most ``max_blocks`` blocks on the GPU at once.

A *block* is a module whose weights total at most ``block_bytes`` (default 64 MiB), found by
splitting each model top-down (:func:`partition`), never below one layer (a ResNet, a temporal conv,
a spatial or temporal transformer: up to 94 MiB in the 1.7B UNet in fp16, 68 blocks in all). When a block's
forward starts, :class:`PrefetchSchedule` decides what to do: evict the blocks outside the window
``[this block, its predicted successors...]`` of ``max_blocks`` blocks, copy in the window's missing
blocks (this one first, if it is missing: a stall), and the compute stream waits only for this
block's copy. The successor of a block is the block that ran right after it the previous time
(registration order until then), so from the second UNet step on the prefetch follows the real
execution order, wrapping around from the last block to the first.

Evicting costs nothing: the pinned host copy is still there and the GPU copy is dropped. The copies
are allocated on the side stream, so the caching allocator hands their memory back only to later
copies on that stream, and before copying the side stream waits for the compute stream to finish
what was queued so far (which read the evicted blocks). So freed memory is reused at once, safely,
and the weights on the GPU stay at ``max_blocks`` blocks however far the CPU runs ahead of the GPU
(``record_stream`` would delay the reuse until the GPU caught up, letting the weights pile up).
Exact: only the weights' locations change.

On a device other than CUDA there are no streams: transfers are synchronous. On the CPU (``device=
"cpu"``, for tests) "loading" is a no-op swap back to the original tensor and "evicting" swaps in a
NaN tensor of the same shape and no memory, so computing with a block that is not resident shows up
as NaN outputs: the schedule is testable without a GPU. ``trace`` (a list, off by default) records
``("load" | "evict" | "run", block)`` events.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

DEFAULT_BLOCK_BYTES = 64 * 2**20


class PrefetchSchedule:
    """Which of ``num_blocks`` blocks are on the device, and which to copy next. Bookkeeping only.

    ``enter(k)`` is called when block ``k`` is about to run and returns ``(evict, load)``: the blocks
    to drop and the blocks to copy, in order (``k`` first when it is missing). Afterwards the resident
    blocks are the window ``[k, next(k), next(next(k)), ...]`` of at most ``max_blocks`` distinct
    blocks, where ``next`` is learned: the block entered right after ``j`` last time (``j + 1``,
    cyclically, before that). Entering the running block again (a chunked layer) changes nothing.
    """

    def __init__(self, num_blocks: int, max_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks: must be >= 1, got {num_blocks}")
        if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1:
            raise ValueError(f"max_blocks: must be an int >= 1, got {max_blocks!r}")
        self.max_blocks = max_blocks
        self.next = [(k + 1) % num_blocks for k in range(num_blocks)]
        self.resident: list[int] = []
        self.current: int | None = None

    def window(self, k: int) -> list[int]:
        """``k`` and its predicted successors: at most ``max_blocks`` distinct blocks."""
        out, j = [k], k
        while len(out) < self.max_blocks:
            j = self.next[j]
            if j in out:
                break
            out.append(j)
        return out

    def enter(self, k: int) -> tuple[list[int], list[int]]:
        if k == self.current:
            return [], []
        if self.current is not None:
            self.next[self.current] = k
        self.current = k
        window = self.window(k)
        evict = [b for b in self.resident if b not in window]
        load = [b for b in window if b not in self.resident]
        self.resident = [b for b in self.resident if b in window] + load
        return evict, load

    def clear(self) -> list[int]:
        """Forget residency (everything evicted); returns the blocks that were resident."""
        was, self.resident, self.current = self.resident, [], None
        return was


def tensor_bytes(module: nn.Module, recurse: bool = True) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(recurse), *module.buffers(recurse)))


def partition(model: nn.Module, block_bytes: int,
              atomic: tuple[type, ...] = ()) -> tuple[list[nn.Module], list[nn.Module]]:
    """Split ``model`` top-down into blocks: ``(blocks, split)``. A module is one block when its weights
    total at most ``block_bytes``, when it has no children, or when it is an ``atomic`` type (its
    forward reads its children's weights directly). The model itself and module lists are always
    split (a model's own methods, like a VAE's ``decode``, may bypass its forward). ``split`` lists the
    split modules; their own direct tensors (usually none, or tiny) stay on the device throughout.
    Blocks without weights are left out."""
    blocks, split = [], []

    def visit(m: nn.Module, is_root: bool) -> None:
        container = isinstance(m, (nn.ModuleList, nn.ModuleDict))
        children = list(m.children())
        if not is_root and not container and (not children or isinstance(m, atomic)
                                               or tensor_bytes(m) <= block_bytes):
            if tensor_bytes(m):
                blocks.append(m)
            return
        split.append(m)
        for child in children:
            visit(child, False)

    visit(model, True)
    return blocks, split


@dataclass
class Slot:
    """Where one tensor lives in a module (``owner._parameters[name]`` or ``owner._buffers[name]``)
    and its host copy."""

    owner: nn.Module
    name: str
    is_param: bool
    host: torch.Tensor

    def set(self, t: torch.Tensor) -> None:
        if self.is_param:
            self.owner._parameters[self.name].data = t
        else:
            self.owner._buffers[self.name] = t

    def get(self) -> torch.Tensor:
        return self.owner._parameters[self.name] if self.is_param else self.owner._buffers[self.name]


def slots_of(module: nn.Module, recurse: bool) -> list[Slot]:
    mods = module.modules() if recurse else [module]
    out = []
    for m in mods:
        out += [Slot(m, n, True, p.data) for n, p in m._parameters.items() if p is not None]
        out += [Slot(m, n, False, b) for n, b in m._buffers.items() if b is not None]
    return out


def placeholder(t: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like ``t`` with no memory (one element expanded): NaN for floats, else 0."""
    fill = float("nan") if t.is_floating_point() or t.is_complex() else 0
    return torch.full((), fill, dtype=t.dtype, device=t.device).expand(t.shape)


@dataclass
class Block:
    module: nn.Module
    slots: list[Slot] = field(default_factory=list)


class StreamedOffload:
    """Streamed offload of whole models to ``device`` (see the module docstring).

    ``attach(model)`` for each model (text encoder, UNet, VAE): their weights move to (pinned) CPU
    memory and forward pre-hooks bring each block in; ``detach()`` undoes it and leaves the models on
    the CPU. ``max_blocks`` >= 1 blocks on the device at once (1: no overlap, like sequential offload;
    more: deeper prefetch, more memory); ``block_bytes`` bounds a block's size (a single layer larger
    than it is still one block). ``atomic`` module types are never split: the model's layers that run
    chunk by chunk (they must stay resident across their chunks) or read their children's weights
    directly (for the UNet3D and VAE: :data:`videofusion.models.layers.OFFLOAD_UNITS`).
    """

    def __init__(self, device: torch.device | str, max_blocks: int = 4, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 *, atomic: tuple[type, ...]):
        if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1:
            raise ValueError(f"max_blocks: must be an int >= 1, got {max_blocks!r}")
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1:
            raise ValueError(f"block_bytes: must be a positive int (bytes), got {block_bytes!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_blocks, self.block_bytes, self.atomic = max_blocks, block_bytes, atomic
        self.blocks: list[Block] = []
        self.sticky: list[Slot] = []
        self.handles: list = []
        self.schedule: PrefetchSchedule | None = None
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.events: dict[int, torch.cuda.Event] = {}
        self.trace: list[tuple[str, int]] | None = None

    # ---------------------------------------------------------------- setup
    def attach(self, model: nn.Module) -> None:
        """Offload ``model``: its blocks' weights to host memory, hooks that stream them in."""
        blocks, split = partition(model, self.block_bytes, self.atomic)
        for module in split:
            for slot in slots_of(module, recurse=False):
                slot.host = slot.get().detach().to(self.device)
                slot.set(slot.host)
                self.sticky.append(slot)
        for module in blocks:
            block = Block(module, slots_of(module, recurse=True))
            for slot in block.slots:
                slot.host = self._host_copy(slot.get().detach())
                slot.set(slot.host if self.device.type != "cpu" else placeholder(slot.host))
            k = len(self.blocks)
            self.blocks.append(block)
            self.handles.append(module.register_forward_pre_hook(lambda m, args, k=k: self.enter(k)))
        self.schedule = PrefetchSchedule(len(self.blocks), self.max_blocks) if self.blocks else None

    def _host_copy(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return t
        t = t.to("cpu")
        return t.pin_memory() if self.device.type == "cuda" else t

    def detach(self) -> None:
        """Remove the hooks; every weight back to its host (CPU) tensor."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        if self.stream is not None:
            torch.cuda.synchronize(self.device)  # nothing may still read the GPU copies we drop
        for slot in [s for b in self.blocks for s in b.slots]:
            slot.set(slot.host)
        for slot in self.sticky:
            slot.host = slot.get().detach().to("cpu")
            slot.set(slot.host)
        self.blocks, self.sticky, self.events, self.schedule = [], [], {}, None

    def release(self) -> None:
        """Evict every resident block (frees the device memory of the weights between calls)."""
        if self.schedule is not None:
            evict = self.schedule.clear()
            self._fence(evict)
            for k in evict:
                self._evict(k)

    # ---------------------------------------------------------------- the hook
    def enter(self, k: int) -> None:
        """Block ``k`` is about to run: evict, copy in (this block first), wait for this block."""
        evict, load = self.schedule.enter(k)
        self._fence(evict)
        for b in evict:
            self._evict(b)
        for b in load:
            self._load(b)
        self._wait(k)
        if self.trace is not None:
            self.trace.append(("run", k))

    def _load(self, k: int) -> None:
        if self.trace is not None:
            self.trace.append(("load", k))
        slots = self.blocks[k].slots
        if self.device.type == "cpu":
            for slot in slots:
                slot.set(slot.host)
        elif self.stream is None:
            for slot in slots:
                slot.set(slot.host.to(self.device))
        else:
            with torch.cuda.stream(self.stream):
                for slot in slots:
                    slot.set(slot.host.to(self.device, non_blocking=True))
                event = torch.cuda.Event()
                event.record(self.stream)
            self.events[k] = event

    def _fence(self, evict: list[int]) -> None:
        """Before the side stream copies into memory freed by ``evict``: wait for the compute stream."""
        if evict and self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))

    def _wait(self, k: int) -> None:
        event = self.events.pop(k, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def _evict(self, k: int) -> None:
        if self.trace is not None:
            self.trace.append(("evict", k))
        self.events.pop(k, None)  # a prefetch evicted unused: its copy was stream-ordered, nothing to wait for
        for slot in self.blocks[k].slots:
            slot.set(slot.host if self.device.type != "cpu" else placeholder(slot.host))
