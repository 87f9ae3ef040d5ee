"""bench/demo_clock.py: the frame-clock experiment's table starts as a no-op and tells frames apart once trained."""
import importlib.util
from pathlib import Path

import pytest
import torch

from helpers import TINY_UNET
from videofusion.models import UNet3DConditionModel

ROOT = Path(__file__).resolve().parents[1]


def _clock_module():
    spec = importlib.util.spec_from_file_location("demo_clock", ROOT / "bench" / "demo_clock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frame_clock_is_a_no_op_at_zero_and_breaks_frame_symmetry():
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**TINY_UNET).eval()
    x = torch.randn(1, 4, 1, 8, 8).expand(1, 4, 4, 8, 8).contiguous()  # the same frame 4 times
    context = torch.randn(1, 5, TINY_UNET["cross_attention_dim"])
    with torch.no_grad():
        before = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
        table = _clock_module().add_frame_clock(unet, num_frames=4)
        assert "conv_in.frame_clock" in unet.state_dict()
        assert any(p is table for p in unet.parameters())  # so the optimizer and the EMA train it
        same = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
        torch.testing.assert_close(same, before)  # zero table: exactly the UNet it was given
        table.copy_(torch.randn_like(table))
        after = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample  # (1, 4, f, h, w)
    # identical input frames: without a clock the middle frames agree; with one they differ
    assert (before[:, :, 1] - before[:, :, 2]).abs().max() < 1e-5
    assert (after[:, :, 1] - after[:, :, 2]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="frame clock"):
        unet(torch.randn(1, 4, 3, 8, 8), torch.tensor([1]), encoder_hidden_states=context)


def test_sinusoidal_start_and_bad_init():
    module = _clock_module()
    unet = UNet3DConditionModel(**TINY_UNET)
    table = module.add_frame_clock(unet, num_frames=4, init="sinusoidal")
    channels = unet.conv_in.out_channels
    assert table.shape == (4, channels)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0] * (channels // 2)))  # sin 0, cos 0
    assert len({tuple(row.tolist()) for row in table}) == 4  # every frame its own code
    with pytest.raises(ValueError, match="init"):
        module.add_frame_clock(UNet3DConditionModel(**TINY_UNET), num_frames=4, init="ramp")
