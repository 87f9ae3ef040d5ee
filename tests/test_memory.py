"""Memory modes for long videos, on the CPU: frame chunking (exact), chunked VAE decode, frames streamed
to the encoder, and streamed offload's schedule (which block is resident when; outputs unchanged)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from helpers import TINY_UNET, TINY_VAE
from videofusion import TextToVideoSDPipeline, export_to_video, load_video
from videofusion.long_video import LongVideo
from videofusion.models import AutoencoderKL, UNet3DConditionModel
from videofusion.models.chunking import group_normalize, group_stats, map_rows
from videofusion.models.layers import OFFLOAD_UNITS, TemporalConvLayer, TransformerTemporalModel
from videofusion.runtime.streamed import PrefetchSchedule, StreamedOffload, partition, tensor_bytes


def gen(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


def randomise_temporal_convs(model: nn.Module, seed: int = 0) -> None:
    """Temporal convs start as the identity (last conv zero); give them weights so they count."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TemporalConvLayer):
                m.conv4[-1].weight.normal_(0, 0.05)
                m.conv4[-1].bias.normal_(0, 0.05)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**TINY_UNET).eval()
    randomise_temporal_convs(unet)
    return unet


# ---- frame chunking ------------------------------------------------------------------------


def test_group_stats_match_group_norm():
    x = torch.randn(2, 5, 8, 13) * 3 + 1  # (b, f, c, pixels)
    mean, rstd = group_stats(x, groups=4, eps=1e-6, pixels=4)
    norm = nn.GroupNorm(4, 8, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    expected = norm(x.permute(0, 2, 1, 3))  # GroupNorm on (b, c, f, pixels)
    got = torch.cat([group_normalize(x[..., p:p + 4], mean, rstd, norm.weight, norm.bias) for p in range(0, 13, 4)], -1)
    assert torch.allclose(got.permute(0, 2, 1, 3), expected, atol=1e-5)


def test_map_rows_is_exact_and_keeps_channels_last():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x, t = torch.randn(7, 3, 5, 5), torch.randn(7, 4)
    fn = lambda a, b: conv(a) + b[:, :, None, None]
    assert torch.allclose(map_rows(fn, 3, x, t), fn(x, t), atol=1e-6)
    cl = map_rows(conv, 2, x.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layer_cls", [TemporalConvLayer, TransformerTemporalModel])
@pytest.mark.parametrize("channels_last", [False, True])
@torch.no_grad()
def test_temporal_layers_over_pixel_chunks_are_exact(layer_cls, channels_last):
    torch.manual_seed(0)
    layer = (TemporalConvLayer(16, 4) if layer_cls is TemporalConvLayer
             else TransformerTemporalModel(16, heads=4, dim_head=4, norm_num_groups=4)).eval()
    randomise_temporal_convs(layer)
    x = torch.randn(2 * 7, 16, 5, 3)  # b=2, 7 frames, 5x3 pixels
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plain = layer(x, 7)
    for pixels in (1, 4, 14):
        layer.pixels_per_chunk = pixels
        assert torch.allclose(layer(x, 7), plain, atol=1e-5), pixels
    layer.pixels_per_chunk, layer.frames_per_chunk = None, 3  # auto: 3 frames' worth of tokens
    assert torch.allclose(layer(x, 7), plain, atol=1e-5)


@pytest.mark.parametrize("frames_per_chunk,pixels_per_chunk", [(1, None), (4, None), (3, 5), (7, 1), (64, 3)])
@torch.no_grad()
def test_unet_frame_chunking_is_exact(unet, frames_per_chunk, pixels_per_chunk):
    x, ctx = torch.randn(2, 4, 11, 8, 8), torch.randn(2, 77, 16)  # 11 frames: no chunk size divides 22 rows
    plain = unet(x, 10, ctx).sample
    unet.enable_frame_chunking(frames_per_chunk, pixels_per_chunk)
    try:
        assert torch.allclose(unet(x, 10, ctx).sample, plain, atol=1e-5)
        assert unet.up_blocks[1].frames_per_chunk == frames_per_chunk
    finally:
        unet.disable_frame_chunking()
    assert all(m.frames_per_chunk is None for m in unet.modules() if hasattr(m, "frames_per_chunk"))


@torch.no_grad()
def test_frame_chunking_with_odd_latent_sizes(unet):
    x, ctx = torch.randn(1, 4, 5, 6, 10), torch.randn(1, 77, 16)  # sizes not multiples of 2: forced upsample sizes
    plain = unet(x, 3, ctx).sample
    unet.enable_frame_chunking(2)
    try:
        assert torch.allclose(unet(x, 3, ctx).sample, plain, atol=1e-5)
    finally:
        unet.disable_frame_chunking()


def test_frame_chunking_arguments_are_checked(unet):
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="frames_per_chunk"):
            unet.enable_frame_chunking(bad)
    with pytest.raises(ValueError, match="pixels_per_chunk"):
        unet.enable_frame_chunking(4, 0)


# ---- VAE decode in chunks ------------------------------------------------------------------


@torch.no_grad()
def test_vae_decode_in_chunks_is_exact():
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE).eval()
    z = torch.randn(7, 4, 4, 4)
    plain = vae.decode(z).sample
    plain_mean = vae.encode(plain).latent_dist.mean
    for size in (1, 3, 7, 10):
        vae.enable_slicing(size)
        assert torch.allclose(vae.decode(z).sample, plain, atol=1e-5)
        assert torch.allclose(vae.encode(plain).latent_dist.mean, plain_mean, atol=1e-5)
    with pytest.raises(ValueError, match="slice_size"):
        vae.enable_slicing(0)


# ---- the pipeline: chunked decode, frames streamed to the encoder --------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    randomise_temporal_convs(pipe.unet)
    return pipe


def run(pipe, **kw):
    kw = {"num_inference_steps": 2, "height": 16, "width": 24, "num_frames": 10, **kw}
    return pipe("a red circle moving left", generator=[gen()], **kw)


def test_pipeline_chunked_decode_and_frame_chunking_are_exact(pipe):
    plain_np, plain_pt = run(pipe).frames, run(pipe, output_type="pt").frames
    pipe.enable_vae_slicing(3)
    pipe.enable_frame_chunking(4)
    try:
        np.testing.assert_allclose(run(pipe).frames, plain_np, atol=1e-5)
        pt = run(pipe, output_type="pt").frames
        assert pt.device.type == "cpu" and pt.shape == plain_pt.shape == (1, 10, 3, 16, 24)
        assert torch.allclose(pt, plain_pt, atol=1e-5)
    finally:
        pipe.disable_vae_slicing()
        pipe.disable_frame_chunking()


@pytest.mark.parametrize("slicing", [None, 3])
def test_streamed_mp4_equals_the_normal_export(pipe, tmp_path, slicing):
    frames = run(pipe).frames
    expected = load_video(export_to_video(frames, str(tmp_path / "normal.mp4")))
    if slicing:
        pipe.enable_vae_slicing(slicing)
    try:
        out = run(pipe, output_path=str(tmp_path / "streamed.mp4"))
    finally:
        pipe.disable_vae_slicing()
    assert out.frames is None and out.paths == [str(tmp_path / "streamed.mp4")]
    got = load_video(out.paths[0])
    assert len(got) == 10 and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, expected))


def test_output_path_is_checked_before_any_model_runs(pipe, tmp_path):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="output_path"):
            run(pipe, output_path=str(tmp_path / "x.txt"))
        with pytest.raises(ValueError, match="output_path"):
            run(pipe, output_path=[str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")])
        with pytest.raises(ValueError, match="output_path"):
            run(pipe, output_path=str(tmp_path / "x.mp4"), output_type="latent")
        with pytest.raises(FileNotFoundError, match="output_path"):
            run(pipe, output_path=str(tmp_path / "missing" / "x.mp4"))
    finally:
        handle.remove()
    assert not calls and not list(tmp_path.iterdir())


# ---- streamed offload: the schedule ---------------------------------------------------------------


def test_schedule_guesses_registration_order_then_learns():
    s = PrefetchSchedule(5, max_blocks=2)
    assert s.enter(0) == ([], [0, 1])
    assert s.enter(0) == ([], [])  # the running block again (a chunked layer): nothing
    assert s.enter(2) == ([0, 1], [2, 3])  # guess was wrong: 2 missing, a stall
    assert s.enter(1) == ([3], [1])  # window [1, 2]: 2 stays
    assert s.next[:3] == [2, 2, 1]  # learned: 0 -> 2, 2 -> 1
    s.clear()
    assert s.enter(0) == ([], [0, 2])  # the learned order prefetches 2 now
    assert s.enter(2) == ([0], [1])
    assert s.resident == [2, 1]


def test_schedule_never_holds_more_than_max_blocks_and_wraps_around():
    s = PrefetchSchedule(6, max_blocks=3)
    order = [3, 0, 5, 1, 4, 2]
    for _ in range(3):
        for k in order:
            evict, load = s.enter(k)
            assert k in s.resident and len(s.resident) <= 3 and not set(evict) & set(s.resident)
    # from the second pass on, each block was loaded before it ran: no stall
    for k in order:
        evict, load = s.enter(k)
        assert k not in load
    assert s.window(2) == [2, 3, 0]  # the last block predicts the first ones of the next pass
    one = PrefetchSchedule(3, max_blocks=1)
    assert [one.enter(k) for k in (0, 1, 2)] == [([], [0]), ([0], [1]), ([1], [2])]
    with pytest.raises(ValueError, match="max_blocks"):
        PrefetchSchedule(3, 0)


def test_partition_splits_root_and_lists_keeps_atomic_layers_whole(unet):
    limit = 6000
    blocks, split = partition(unet, limit, (TemporalConvLayer, TransformerTemporalModel))
    assert unet in split and unet not in blocks
    assert not any(isinstance(b, (nn.ModuleList, nn.ModuleDict)) for b in blocks)
    for b in blocks:
        whole = isinstance(b, (TemporalConvLayer, TransformerTemporalModel)) or not list(b.children())
        assert tensor_bytes(b) <= limit or whole
    assert any(isinstance(b, TransformerTemporalModel) and tensor_bytes(b) > limit for b in blocks)
    ids = {id(p) for b in blocks for p in b.parameters()}
    assert ids == {id(p) for p in unet.parameters()}  # every weight in exactly one block
    assert sum(len(list(b.parameters())) for b in blocks) == len(list(unet.parameters()))


@torch.no_grad()
def test_streamed_offload_on_cpu_is_exact_and_follows_the_schedule(unet):
    """On the CPU an evicted block holds NaN placeholders: equal outputs prove every block was
    resident when it ran; the trace shows at most max_blocks resident and, from the second pass
    on, every block loaded before the block ahead of it ran (prefetched, no stall)."""
    x, ctx = torch.randn(2, 4, 6, 8, 8), torch.randn(2, 77, 16)
    unet.enable_frame_chunking(4)  # chunked layers call a block several times in a row
    try:
        plain = unet(x, 10, ctx).sample
        offload = StreamedOffload("cpu", max_blocks=3, block_bytes=6000, atomic=OFFLOAD_UNITS)
        offload.attach(unet)
        offload.trace = []
        outs = [unet(x, 10, ctx).sample for _ in range(3)]
        trace = offload.trace
        offload.detach()
        after = unet(x, 10, ctx).sample
    finally:
        unet.disable_frame_chunking()
    assert all(torch.equal(o, plain) for o in outs) and torch.equal(after, plain)
    assert len(offload.blocks) == 0 and all(torch.isfinite(p).all() for p in unet.parameters())
    resident, runs = set(), []
    for i, (event, k) in enumerate(trace):
        if event == "load":
            resident.add(k)
        elif event == "evict":
            resident.discard(k)
        else:
            assert k in resident
            runs.append((i, k))
        assert len(resident) <= 3
    runs = [r for n, r in enumerate(runs) if n == 0 or runs[n - 1][1] != r[1]]  # a chunked layer runs repeatedly
    per_pass = len(runs) // 3
    for (j, _), (i, k) in zip(runs[per_pass:], runs[per_pass + 1:]):  # passes 2 and 3
        loads = [n for n, e in enumerate(trace[:i]) if e == ("load", k)]
        assert loads and loads[-1] < j, (k, i, j)


def test_pipeline_streamed_offload_on_cpu_is_exact(pipe):
    plain = run(pipe, num_frames=20, long_video=LongVideo(8, 4)).frames
    pipe.enable_streamed_offload(max_blocks=2, device="cpu", block_bytes=8000)
    pipe.enable_frame_chunking(6)
    pipe.enable_vae_slicing(4)
    try:
        assert pipe.device.type == "cpu" and len(pipe.placement.offload.blocks) > 20
        got = run(pipe, num_frames=20, long_video=LongVideo(8, 4)).frames
    finally:
        pipe.disable_cpu_offload()
        pipe.disable_frame_chunking()
        pipe.disable_vae_slicing()
    np.testing.assert_allclose(got, plain, atol=1e-5)
    assert all(torch.isfinite(p).all() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    with pytest.raises(ValueError, match="max_blocks"):
        pipe.enable_streamed_offload(max_blocks=0, device="cpu")
    assert pipe.placement.offload is None


def test_bench_memory_tiny_runs(capsys):
    """bench/memory.py --tiny on a minimal plan: every row measured, outputs equal the resident run."""
    from helpers import load_bench
    bench = load_bench("memory")
    assert bench.main(["--tiny", "--frames", "4", "--modes", "resident", "streamed-2", "--steps", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"mode"')]
    assert [r["mode"] for r in rows] == ["resident", "streamed-2"] and all("seconds" in r for r in rows)
    assert rows[1]["max_abs_diff"] < 1e-5
