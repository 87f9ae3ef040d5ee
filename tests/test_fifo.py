"""FIFO-Diffusion: the queue's bookkeeping on a stub, the initial queue, per-frame timesteps in the UNet, the
diagonal against plain DDIM on a UNet without temporal mixing, streamed = in-memory output, and the checks."""
import numpy as np
import pytest
import torch

from helpers import MS_SCHEDULER
from videofusion import FIFO, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, TextToVideoSDPipeline, LongVideo
from videofusion.apps.common import long_video_arg
from videofusion.io.video import export_to_video, load_video
from videofusion.long_video import QueueNoise
from videofusion.models.layers import TemporalConvLayer, TransformerTemporalModel
from videofusion.pipelines.fifo import initial_queue, sample_fifo

PROMPT = "a red circle moving left"


def gen(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


# ---- the loop on a stub: every frame passes every noise level exactly once -------------------------------


class TaggedFrames:
    """Frames as (1, 2, n, 1, 1) tensors: channel 0 the frame's id, channel 1 its current noise level
    (-1: clean). ``denoise`` checks that the levels the loop says are the frames' own and logs each step."""

    def __init__(self, num_levels: int):
        self.num_levels, self.next_id, self.steps, self.calls = num_levels, 0, [], []

    def new(self, n: int, level: int) -> torch.Tensor:
        ids = torch.arange(self.next_id, self.next_id + n, dtype=torch.float64)
        self.next_id += n
        return torch.stack([ids, torch.full((n,), float(level), dtype=torch.float64)]).reshape(1, 2, n, 1, 1)

    def denoise(self, x: torch.Tensor, levels: torch.Tensor, first: int) -> torch.Tensor:
        self.calls.append((x.shape[2], first))
        moved = x[:, :, first:].clone()
        assert torch.equal(moved[0, 1, :, 0, 0], levels[first:].double()), "a frame is not at the level it is told"
        self.steps += [(int(i), int(k)) for i, k in zip(moved[0, 0, :, 0, 0], moved[0, 1, :, 0, 0])]
        moved[:, 1] -= 1
        return moved


@pytest.mark.parametrize("window,partitions,lookahead", [(4, 2, True), (4, 3, False), (6, 1, True), (2, 4, False)])
def test_every_frame_passes_every_level_once(window, partitions, lookahead):
    fifo = FIFO(window=window, num_partitions=partitions, lookahead=lookahead)
    L, head = fifo.num_levels, fifo.head
    tags = TaggedFrames(L)
    context = tags.new(head, 0)
    context[:, 1] = -1  # finished frames in front: already clean
    start = torch.cat([context, torch.cat([tags.new(1, k) for k in range(L)], dim=2)], dim=2)
    num_steps = 3 * L + 5
    out = list(sample_fifo(tags.denoise, start, lambda: tags.new(1, L - 1), num_steps, window, fifo.stride))

    assert len(out) == num_steps and all(f.shape == (1, 2, 1, 1, 1) for f in out)
    assert all(float(f[0, 1]) == -1 for f in out)  # every frame leaves clean
    left = [int(f[0, 0]) for f in out]
    assert left == list(range(head, head + num_steps))  # first in, first out: diagonal frames in order
    assert len(set(tags.steps)) == len(tags.steps)  # no (frame, level) twice
    for frame in left:
        levels = [k for i, k in tags.steps if i == frame]
        start_level = frame - head if frame < head + L else L - 1  # queue frames start on the diagonal
        assert levels == list(range(start_level, -1, -1))
    assert not any(i < head for i, _ in tags.steps)  # the finished context frames never move
    per_step = L // fifo.stride
    assert tags.calls == [(window, head)] * (per_step * num_steps)  # n (2n with lookahead) windows per step


def test_sample_fifo_checks_the_queue_layout():
    with pytest.raises(ValueError, match="queue"):
        next(sample_fifo(lambda x, k, f: x, torch.zeros(1, 1, 7, 1, 1), lambda: None, 1, 4, 2))


def test_initial_queue_by_hand():
    """window 2, 2 partitions, lookahead: head 1, levels 0..3 hold frames 0, 0, 0, 1 of the first window."""
    first = torch.tensor([10.0, 20.0]).reshape(1, 1, 2, 1, 1)
    abar = torch.tensor([0.81, 0.64, 0.25, 0.0])
    noise = torch.ones(1, 1, 5, 1, 1)
    q = initial_queue(first, abar, noise, head=1)[0, 0, :, 0, 0]
    want = [0.9 * 10 + 0.19 ** 0.5, 0.9 * 10 + 0.19 ** 0.5, 0.8 * 10 + 0.6, 0.5 * 10 + 0.75 ** 0.5, 1.0]
    assert torch.allclose(q, torch.tensor(want))


def test_fifo_option_and_cli():
    fifo = FIFO()
    assert (fifo.window, fifo.num_partitions, fifo.lookahead, fifo.stride, fifo.head, fifo.num_levels) == \
        (16, 4, True, 8, 8, 64)
    assert isinstance(fifo, LongVideo) and not fifo.reschedule_noise
    assert FIFO(window=5, lookahead=False).stride == 5 and FIFO(window=5, lookahead=False).head == 0
    with pytest.raises(ValueError, match="window"):
        FIFO(window=5)
    with pytest.raises(ValueError, match="num_partitions"):
        FIFO(num_partitions=0)
    assert long_video_arg("fifo") == FIFO() and long_video_arg("fifo:2") == FIFO(num_partitions=2)
    assert long_video_arg("16:4") == LongVideo(16, 4)


def test_queue_noise_shares_the_base_and_is_per_video():
    a = QueueNoise((2, 4, 3, 3), [gen(1), gen(2)], noise="decomposed", noise_ratio=0.5)
    b = QueueNoise((1, 4, 3, 3), [gen(2)], noise="decomposed", noise_ratio=0.5)
    x, y = a(3), b(3)
    assert x.shape == (2, 4, 3, 3, 3) and torch.allclose(x[1:], y)  # video 1 depends on its generator only
    big = QueueNoise((1, 4, 16, 16), gen(), noise="decomposed", noise_ratio=0.5)
    frames = torch.cat([big(1) for _ in range(40)], dim=2)[0].reshape(4, 40, -1)  # (c, frames, pixels)
    corr = torch.corrcoef(frames.permute(1, 0, 2).reshape(40, -1))  # frames sharing the base: ~0.5
    assert 0.35 < corr[~torch.eye(40, dtype=bool)].mean() < 0.65
    with pytest.raises(ValueError, match="noise"):
        QueueNoise((1, 4, 2, 2), noise="shared")


# ---- the UNet: one timestep per frame ------------------------------------------------------------------------


def per_frame_unet(unet) -> None:
    """Temporal layers to the identity: the UNet then treats each frame on its own."""
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, TemporalConvLayer):
                m.conv4[-1].weight.zero_()
                m.conv4[-1].bias.zero_()
            elif isinstance(m, TransformerTemporalModel):
                m.proj_out.weight.zero_()
                m.proj_out.bias.zero_()


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir, models_one_thread):
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for m in pipe.unet.modules():  # temporal convs start as the identity: give them weights
            if isinstance(m, TemporalConvLayer):
                m.conv4[-1].weight.normal_(0, 0.05, generator=gen(3))
    return pipe


def test_unet_per_frame_timesteps(pipe):
    unet = pipe.unet
    sample = torch.randn(2, 4, 5, 8, 8, generator=gen(1))
    context = torch.randn(2, 7, unet.config.cross_attention_dim, generator=gen(2))
    with torch.no_grad():
        same = unet(sample, torch.full((2, 5), 300), context).sample
        scalar = unet(sample, 300, context).sample
        assert torch.allclose(same, scalar, atol=1e-6)
        t = torch.tensor([[999, 700, 400, 100, 1], [5, 500, 5, 500, 5]])
        mixed = unet(sample, t, context).sample
        assert not torch.allclose(mixed, scalar, atol=1e-3)
        unet.enable_frame_chunking(2)  # the time embedding follows the frames into their row chunks
        try:
            assert torch.allclose(unet(sample, t, context).sample, mixed, atol=1e-5)
        finally:
            unet.disable_frame_chunking()
        with pytest.raises(ValueError, match="timestep"):
            unet(sample, torch.zeros(2, 4), context)
        saved = {k: v.clone() for k, v in unet.state_dict().items()}
        try:  # without temporal mixing, frame j with timestep t_j is that frame alone at t_j
            per_frame_unet(unet)
            mixed = unet(sample, t, context).sample
            for j in range(5):
                alone = unet(sample[:, :, j:j + 1], t[:, j], context).sample
                assert torch.allclose(mixed[:, :, j:j + 1], alone, atol=1e-5)
        finally:
            unet.load_state_dict(saved)


# ---- the pipeline ------------------------------------------------------------------------------------------

SMALL = FIFO(window=4, num_partitions=1)  # 4 levels, lookahead: 2 windows of 4 frames per step


def run(pipe, **kw):
    kw = {"num_inference_steps": 2, "height": 16, "width": 16, "num_frames": 8, "long_video": SMALL,
          "generator": [gen()], **kw}
    return pipe(PROMPT, **kw)


def test_the_diagonal_is_ddim_for_a_frame_on_its_own(pipe):
    """A UNet without temporal mixing: a frame that entered the queue as fresh noise leaves as plain DDIM
    with num_partitions * window steps would make it from that noise (same guidance)."""
    saved = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    try:
        per_frame_unet(pipe.unet)
        fifo = FIFO(window=4, num_partitions=2)  # 8 levels: 4 windows per step, 4 warm-up frames dropped
        out = run(pipe, output_type="latent", guidance_scale=3.0, num_frames=6, long_video=fifo).frames
        g = gen()  # the queue's draws: first window (4), queue (2 + 8), then one per step
        shape = (1, 4, 1, 8, 8)
        torch.randn((1, 4, 4, 8, 8), generator=g)
        torch.randn((1, 4, 10, 8, 8), generator=g)
        fresh = [torch.randn(shape, generator=g) for _ in range(2)]
        assert out.shape == (1, 4, 6, 8, 8)
        for j in (4, 5):  # frames 0-3 come from the first window; frame j entered after step j - 4
            plain = pipe(PROMPT, num_inference_steps=8, height=16, width=16, num_frames=1, guidance_scale=3.0,
                         latents=fresh[j - 4], output_type="latent").frames
            assert torch.allclose(out[:, :, j:j + 1], plain, atol=1e-5), j
    finally:
        pipe.unet.load_state_dict(saved)


@pytest.fixture(scope="module")
def frames(pipe):
    """The in-memory output of :func:`run` (seed 0, 8 frames)."""
    return run(pipe).frames


def test_streamed_output_equals_in_memory_output(pipe, frames, tmp_path):
    assert frames.shape == (1, 8, 16, 16, 3)
    expected = load_video(export_to_video(frames[0], str(tmp_path / "memory.mp4")))
    out = run(pipe, output_path=str(tmp_path / "streamed.mp4"))
    assert out.frames is None and out.paths == [str(tmp_path / "streamed.mp4")]
    got = load_video(out.paths[0])
    assert len(got) == 8 and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, expected))
    pipe.enable_vae_slicing(3)  # decoded 3 frames at a time instead of a window's 4: same frames
    try:
        assert np.allclose(run(pipe).frames, frames, atol=1e-6)
    finally:
        pipe.disable_vae_slicing()


def test_batch_noise_and_one_window(pipe, frames):
    two = run(pipe, generator=[gen(0), gen(5)], num_videos_per_prompt=2).frames
    assert two.shape == (2, 8, 16, 16, 3) and np.allclose(two[0], frames[0], atol=1e-5)  # per video
    decomposed = run(pipe, noise="decomposed", noise_ratio=0.5, eta=1.0).frames
    assert np.isfinite(decomposed).all() and not np.allclose(decomposed, two[:1], atol=1e-3)
    short = run(pipe, num_frames=4).frames  # one window: plain generation
    assert np.array_equal(short, run(pipe, num_frames=4, long_video=None).frames)


def test_ddpm_runs_and_other_schedulers_are_refused(pipe):
    ddim = pipe.scheduler
    try:
        config = {k: v for k, v in MS_SCHEDULER.items() if k != "set_alpha_to_one"}
        pipe.scheduler = DDPMScheduler(**config)
        assert run(pipe, num_frames=6).frames.shape == (1, 6, 16, 16, 3)
        pipe.scheduler = EulerDiscreteScheduler.from_config(ddim.config)
        with pytest.raises(ValueError, match="EulerDiscreteScheduler.*DDIMScheduler"):
            run(pipe)
    finally:
        pipe.scheduler = ddim
    assert isinstance(pipe.scheduler, DDIMScheduler)
    with pytest.raises(ValueError, match="latents"):
        run(pipe, latents=torch.zeros(1, 4, 8, 8, 8))


# ---- the command line ----------------------------------------------------------------------------------------


def test_cli_generate_with_fifo_and_bad_fifo_options(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    from videofusion.apps import common
    from videofusion.apps.main import main
    made = []
    monkeypatch.setattr(common, "FIFO", lambda **kw: made.append(FIFO(window=4, **kw)) or made[-1])  # 4: fast
    out = tmp_path / "fifo.mp4"
    base = ["generate", PROMPT, "--model", tiny_pipeline_dir, "--steps", "1", "--height", "16", "--width", "16",
            "--seed", "1", "--quiet", "--scheduler", "ddim"]
    assert main([*base, "--num-frames", "7", "--long-video", "fifo:2", "--output", str(out)]) == 0
    assert made == [FIFO(window=4, num_partitions=2)]  # 8 levels: 4 warm-up frames, then the video's 7
    assert str(out) in capsys.readouterr().out and len(load_video(str(out))) == 7
    for extra in (["fifo:0"], ["fifo:x"]):  # argparse: one line, exit code 2
        with pytest.raises(SystemExit) as exit_info:
            main([*base, "--long-video", *extra])
        assert exit_info.value.code == 2 and "fifo:PARTITIONS" in capsys.readouterr().err
    refused = tmp_path / "euler.mp4"
    code = main([*base, "--num-frames", "7", "--long-video", "fifo", "--scheduler", "euler", "--output", str(refused)])
    err = capsys.readouterr().err
    assert code == 2 and "DDIMScheduler" in err and len(err.strip().splitlines()) == 1 and not refused.exists()
