"""Long videos (FreeNoise): window math, window fusion, windowed temporal attention, noise rescheduling,
and the pipeline option (no change within one window, shapes and determinism for 40 frames)."""
import numpy as np
import pytest
import torch

from helpers import TINY_UNET
from videofusion import TextToVideoSDPipeline
from videofusion.long_video import LongVideo, long_video_latents, reschedule_noise, rescheduled_frames
from videofusion.models.windows import frame_windows, fuse_windows, window_weights
from videofusion.models import UNet3DConditionModel
from videofusion.models.layers import TransformerTemporalModel
from videofusion.noise import initial_latents


def gen(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


# ---- window math ---------------------------------------------------------------------------


@pytest.mark.parametrize("args,expected", [
    ((10, 4, 3), [(0, 4), (3, 7), (6, 10)]),
    ((11, 4, 3), [(0, 4), (3, 7), (6, 10), (7, 11)]),  # last window aligned to the end
    ((6, 4, 2), [(0, 4), (2, 6)]),
    ((4, 4, 2), [(0, 4)]),
    ((3, 16, 4), [(0, 3)]),  # shorter than a window: one window
    ((40, 16, 4), [(0, 16), (4, 20), (8, 24), (12, 28), (16, 32), (20, 36), (24, 40)]),
    ((20, 16, 16), [(0, 16), (4, 20)]),
])
def test_frame_windows_by_hand(args, expected):
    assert frame_windows(*args) == expected


def test_window_weights_are_diffusers_pyramid():
    assert window_weights(4).tolist() == [1, 2, 2, 1]
    assert window_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert window_weights(1).tolist() == [1]


def test_fuse_windows_by_hand():
    """6 frames, windows (0, 4) and (2, 6), weights [1, 2, 2, 1]: window outputs 0 and 2 blend as
    frame 2: (0*2 + 2*1) / 3, frame 3: (0*1 + 2*2) / 3."""
    x = torch.arange(6.0).reshape(1, 6, 1)
    fused = fuse_windows(lambda t: torch.full_like(t, float(t[0, 0, 0])), x, window=4, stride=2)
    assert torch.allclose(fused.flatten(), torch.tensor([0, 0, 2 / 3, 4 / 3, 2, 2]))


def test_fuse_windows_of_a_per_frame_function_is_that_function():
    x = torch.randn(3, 23, 5)
    assert torch.allclose(fuse_windows(lambda t: 2 * t + 1, x, 8, 3), 2 * x + 1, atol=1e-6)
    assert torch.equal(fuse_windows(lambda t: t.flip(1), x, 23, 4), x.flip(1))  # one window: fn itself


def test_long_video_arguments_are_checked():
    with pytest.raises(ValueError, match="stride"):
        LongVideo(window=4, stride=8)
    with pytest.raises(ValueError, match="window"):
        LongVideo(window=0)
    with pytest.raises(ValueError, match="stride"):
        LongVideo(stride=2.5)
    with pytest.raises(TypeError, match="reschedule_noise"):
        LongVideo(reschedule_noise="yes")


# ---- windowed temporal attention -------------------------------------------------------------


def temporal_layer(seed=0):
    torch.manual_seed(seed)
    return TransformerTemporalModel(16, heads=4, dim_head=4, norm_num_groups=4).eval()


@torch.no_grad()
def test_windowed_attention_equals_plain_when_the_window_covers_every_frame():
    layer, x = temporal_layer(), torch.randn(2 * 8, 16, 3, 3)
    plain = layer(x, 8)
    layer.temporal_window = (8, 3)
    assert torch.equal(layer(x, 8), plain)
    # the fusion itself (not only the short cut): a window of exactly num_frames is fn(x)
    y = torch.randn(5, 8, 16)
    block = layer.transformer_blocks[0]
    attend = lambda t: block.attn2(block.norm2(block.attn1(block.norm1(t)) + t)) + block.attn1(block.norm1(t)) + t
    assert torch.allclose(fuse_windows(attend, y, 8, 3), attend(y), atol=1e-6)


@torch.no_grad()
def test_windowed_attention_is_local():
    """With windows (0, 4), (2, 6), (4, 8) of 8 frames, frame 0 reaches only frames 0..3 through the
    attentions: changing it leaves frames 4..7 of the block output exactly as they were."""
    layer = temporal_layer()
    layer.temporal_window = (4, 2)
    y = torch.randn(6, 8, 16)
    z = y.clone()
    z[:, 0] += torch.randn(6, 16)  # not a constant: LayerNorm would remove that
    a, b = layer._mix(y), layer._mix(z)
    assert torch.equal(a[:, 4:], b[:, 4:])
    assert (a[:, 1:4] - b[:, 1:4]).abs().amax() > 1e-4
    layer.temporal_window = None  # plain attention: every frame sees frame 0
    assert (layer._mix(y)[:, 4:] - layer._mix(z)[:, 4:]).abs().amax() > 1e-4


@torch.no_grad()
def test_unet_temporal_window_covering_all_frames_is_exact_and_chunking_keeps_windows():
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**TINY_UNET).eval()
    x, ctx = torch.randn(1, 4, 10, 8, 8), torch.randn(1, 77, 16)
    plain = unet(x, 10, ctx).sample
    unet.set_temporal_window(10, 2)
    assert torch.equal(unet(x, 10, ctx).sample, plain)
    unet.set_temporal_window(4, 2)
    windowed = unet(x, 10, ctx).sample
    assert (windowed - plain).abs().amax() > 1e-3
    unet.enable_frame_chunking(3, pixels_per_chunk=5)
    assert torch.allclose(unet(x, 10, ctx).sample, windowed, atol=1e-5)
    unet.set_temporal_window(None)
    assert torch.allclose(unet(x, 10, ctx).sample, plain, atol=1e-5)
    with pytest.raises(ValueError, match="stride"):
        unet.set_temporal_window(4, 5)


# ---- noise rescheduling ----------------------------------------------------------------------


@pytest.mark.parametrize("num_frames,window,stride", [(40, 16, 4), (23, 8, 3), (17, 5, 5), (9, 4, 1), (6, 8, 2)])
def test_every_window_is_a_permutation_of_the_first(num_frames, window, stride):
    source = rescheduled_frames(num_frames, window, stride, gen(1)).tolist()
    assert len(source) == num_frames
    assert source[:window] == list(range(min(window, num_frames)))
    for start in range(0, num_frames - window + 1, stride):
        assert sorted(source[start:start + window]) == list(range(window)), (start, source)


def test_rescheduling_is_deterministic_per_generator_and_shuffles():
    a, b = rescheduled_frames(64, 16, 4, gen(3)), rescheduled_frames(64, 16, 4, gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, rescheduled_frames(64, 16, 4, gen(4)))
    assert a[16:].tolist() != [i % 16 for i in range(16, 64)]  # not a plain repeat


def test_reschedule_noise_copies_first_window_frames_per_video():
    first = torch.randn(2, 4, 8, 3, 3)
    out = reschedule_noise(first, 20, 8, 2, [gen(1), gen(2)])
    assert out.shape == (2, 4, 20, 3, 3)
    for i, g in enumerate((gen(1), gen(2))):
        assert torch.equal(out[i], first[i][:, rescheduled_frames(20, 8, 2, g)])  # video i: generator i only
    alone = reschedule_noise(first[1:], 20, 8, 2, [gen(2)])
    assert torch.equal(alone[0], out[1])
    with pytest.raises(ValueError, match="first window"):
        reschedule_noise(first, 20, 6, 2, gen())


@pytest.mark.parametrize("noise", ["independent", "decomposed"])
def test_long_video_latents(noise):
    shape, lv = (1, 4, 40, 4, 4), LongVideo(16, 4)
    z = long_video_latents(shape, [gen(5)], noise=noise, noise_ratio=0.5, long_video=lv)
    first = initial_latents((1, 4, 16, 4, 4), [gen(5)], noise=noise, noise_ratio=0.5)
    assert z.shape == shape and torch.equal(z[:, :, :16], first)
    frames = [z[0, :, f] for f in range(40)]
    for f in range(16, 40):  # every later frame is one of the first window's frames
        assert any(torch.equal(frames[f], frames[j]) for j in range(16))
    # within one window, or with the option off or reschedule_noise=False: plain initial noise
    short = (1, 4, 16, 4, 4)
    assert torch.equal(long_video_latents(short, gen(5), noise=noise, long_video=lv),
                       initial_latents(short, gen(5), noise=noise))
    fresh = LongVideo(16, 4, reschedule_noise=False)
    assert torch.equal(long_video_latents(shape, gen(5), noise=noise, long_video=fresh),
                       initial_latents(shape, gen(5), noise=noise))


# ---- the pipeline option ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # temporal convs start as the identity: give them weights
        torch.manual_seed(0)
        for name, p in pipe.unet.named_parameters():
            if "conv4" in name:
                p.normal_(0, 0.05)
    return pipe


def run(pipe, seed=0, **kw):
    kw = {"num_inference_steps": 2, "height": 16, "width": 16, **kw}
    return pipe("a red circle moving left", generator=[gen(seed)], **kw).frames


@pytest.mark.parametrize("noise", ["independent", "decomposed"])
def test_pipeline_within_one_window_is_unchanged(pipe, noise):
    plain = run(pipe, num_frames=8, noise=noise)
    assert np.array_equal(run(pipe, num_frames=8, noise=noise, long_video=LongVideo(8, 2)), plain)


def test_pipeline_40_frames_shapes_determinism_and_reset(pipe):
    lv = LongVideo(window=16, stride=4)
    a = run(pipe, num_frames=40, long_video=lv)
    assert a.shape == (1, 40, 16, 16, 3) and np.isfinite(a).all()
    assert np.array_equal(run(pipe, num_frames=40, long_video=lv), a)
    assert not np.array_equal(run(pipe, seed=1, num_frames=40, long_video=lv), a)
    plain = run(pipe, num_frames=40)
    assert not np.array_equal(plain, a)
    assert all(m.temporal_window is None for m in pipe.unet.modules() if isinstance(m, TransformerTemporalModel))
    decomposed = run(pipe, num_frames=40, long_video=lv, noise="decomposed", noise_ratio=0.3)
    assert decomposed.shape == a.shape and not np.array_equal(decomposed, a)


def test_pipeline_rejects_a_bad_long_video(pipe):
    with pytest.raises(TypeError, match="long_video"):
        run(pipe, num_frames=20, long_video=(16, 4))


# ---- the long-video option in the CLI and the demo evaluation ---------------------------------


def test_cli_long_video_and_num_frames_options():
    from videofusion.apps.main import build_parser
    parser = build_parser()
    args = parser.parse_args(["eval-demo", "--num-frames", "64", "--long-video", "16:4"])
    assert args.num_frames == 64 and args.long_video == LongVideo(16, 4)
    assert parser.parse_args(["eval-demo"]).long_video is None
    assert parser.parse_args(["generate", "a circle", "--long-video", "8"]).long_video == LongVideo(8, 4)
    for bad in ("4:8", "x", "0:1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["eval-demo", "--long-video", bad])


def test_evaluate_demo_passes_num_frames_and_long_video(tiny_pipeline_dir):
    from videofusion.demo.evaluate import evaluate_demo
    report = evaluate_demo(tiny_pipeline_dir, seeds=1, heldout_seeds=0, max_combos=1, num_frames=20,
                           num_inference_steps=1, long_video=LongVideo(8, 4), progress=False)
    assert report["settings"]["num_frames"] == 20 and report["settings"]["long_video"] == LongVideo(8, 4)
    assert report["seen"]["n"] == 1
    # 20 frames > the 16 the demo was trained on: also scored per 16-frame segment (one whole segment)
    assert len(report["videos"][0]["segment_directions"]) == 1
    assert 0.0 <= report["seen"]["segment_direction"] <= 1.0 and 0.0 <= report["seen"]["segment_still"] <= 1.0


def test_evaluate_demo_guidance_scale_reaches_the_pipeline(tiny_pipeline_dir):
    from videofusion.apps.main import build_parser
    from videofusion.demo.evaluate import evaluate_demo
    assert build_parser().parse_args(["eval-demo", "--guidance-scale", "3"]).guidance_scale == 3.0
    reports = [evaluate_demo(tiny_pipeline_dir, seeds=1, heldout_seeds=0, max_combos=1, num_frames=8,
                             num_inference_steps=2, guidance_scale=g, progress=False) for g in (1.0, 20.0)]
    assert [r["settings"]["guidance_scale"] for r in reports] == [1.0, 20.0]
    assert reports[0]["videos"][0]["predicted"] != reports[1]["videos"][0]["predicted"]


def test_eval_demo_cli_prints_segment_columns_for_long_videos(tiny_pipeline_dir, tmp_path, capsys):
    import json

    from videofusion.apps.main import main
    report_path = tmp_path / "report.json"
    assert main(["eval-demo", "--model", str(tiny_pipeline_dir), "--seeds", "1", "--heldout-seeds", "0",
                 "--max-combos", "1", "--num-frames", "20", "--steps", "1", "--output", str(report_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "direction per 16 frames" in lines[0] and "still per 16 frames" in lines[0]
    assert lines[1].split()[:2] == ["seen", "1"] and lines[1].count("%") == 6
    assert lines[2].split() == ["heldout", "0"] + ["-"] * 6  # no held-out videos: no accuracies
    assert json.loads(report_path.read_text())["seen"]["n"] == 1
