"""``videofusion convert SRC DST``: an original ModelScope text-to-video release folder -> a diffusers folder.

SRC holds ``configuration.json``, ``text2video_pytorch_model.pth`` (the UNet; zeroscope v2's original UNet
files have its layout), ``VQGAN_autoencoder.pth`` and ``open_clip_pytorch_model.bin``. DST becomes a
``TextToVideoSDPipeline`` folder (``model_index.json`` + unet, vae, text_encoder, tokenizer, scheduler) that
videofusion and diffusers load; it is written whole or not at all (built beside it, then swapped in). The
conversion itself is :mod:`videofusion.convert`; this front end checks the arguments first and writes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..io.files import MODEL_INDEX, check_variant
from .common import CLIError

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def add_parser(sub) -> None:
    """Register ``videofusion convert`` on an argparse subparsers object."""
    p = sub.add_parser("convert", help="convert an original ModelScope text-to-video release to a diffusers folder",
                       description="Convert an original release folder (configuration.json, "
                                   "text2video_pytorch_model.pth, VQGAN_autoencoder.pth, open_clip_pytorch_model.bin) "
                                   "into a diffusers pipeline folder that videofusion and diffusers load.")
    p.add_argument("src", metavar="SRC", help="the original release folder")
    p.add_argument("dst", metavar="DST", help="the diffusers folder to write")
    p.add_argument("--variant", default=None,
                   help="write the weights as <name>.<VARIANT>.safetensors, e.g. fp16 (then --dtype defaults to "
                        "float16)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help="dtype of the written weights (default float32, or float16 with --variant fp16)")
    p.add_argument("--tokenizer", default=None, metavar="FOLDER",
                   help="a CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json; a pipeline folder's "
                        "tokenizer/ works) instead of building it from OpenCLIP's vocabulary, which needs the "
                        "original extra")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(run=run)


def check_arguments(args: argparse.Namespace):
    """Every argument checked before any weight is read; returns ``(dtype, tokenizer or None)``. CLIError
    naming the argument otherwise."""
    import torch

    from ..convert import is_original_release
    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    if not src.is_dir():
        raise CLIError(f"SRC: no folder {args.src!r}")
    if (src / MODEL_INDEX).is_file():
        raise CLIError(f"SRC: {args.src} is already a diffusers folder (it has {MODEL_INDEX}); load it as it is")
    if not is_original_release(src):
        raise CLIError(f"SRC: {args.src} is not an original release folder: it has no configuration.json")
    if dst.exists() and not dst.is_dir():
        raise CLIError(f"DST: {args.dst} exists and is a file, not a folder")
    if dst.exists() and not args.overwrite:
        raise CLIError(f"DST: {args.dst} exists; pass --overwrite to replace it, or choose another folder")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise CLIError(f"DST: {args.dst} must be outside SRC {args.src}")
    try:
        check_variant(args.variant)
    except ValueError as e:
        raise CLIError(f"--variant: {e}") from None
    name = args.dtype or ("float16" if args.variant == "fp16" else "float32")
    tokenizer = None
    if args.tokenizer is not None:
        from ..models.text import load_tokenizer
        folder = Path(args.tokenizer).expanduser()
        if not folder.is_dir():
            raise CLIError(f"--tokenizer: no folder {args.tokenizer!r}")
        try:
            tokenizer = load_tokenizer(folder, subfolder="tokenizer" if (folder / "tokenizer").is_dir() else None)
        except (OSError, ValueError) as e:
            raise CLIError(f"--tokenizer: {e}") from None
    return getattr(torch, name), tokenizer


def run(args: argparse.Namespace) -> int:
    from ..io.saving import atomic_folder
    from ..pipelines.registry import from_original_release

    dtype, tokenizer = check_arguments(args)
    start = time.perf_counter()
    extra = {"tokenizer": tokenizer} if tokenizer is not None else {}
    pipe = from_original_release(Path(args.src).expanduser(), torch_dtype=dtype, **extra)
    with atomic_folder(Path(args.dst).expanduser()) as tmp:
        pipe.save_pretrained(str(tmp), variant=args.variant)
    unet = pipe.unet.config
    print(f"{args.dst}  (TextToVideoSDPipeline: UNet {list(unet.block_out_channels)}, {str(dtype)[6:]}"
          f"{', variant ' + args.variant if args.variant else ''}; converted in {time.perf_counter() - start:.1f} s)")
    return 0
