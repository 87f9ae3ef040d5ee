"""Video I/O: H.264 MP4 export (read back with PyAV), GIF export, load_video, input forms, errors, atomicity."""

import os
import tempfile
import types
from fractions import Fraction

import av
import numpy as np
import PIL.Image
import pytest
import torch

import videofusion.io.video as video
from videofusion.io.video import VideoWriter, export_to_gif, export_to_video, load_video, to_uint8_frames

NUM_FRAMES, HEIGHT, WIDTH = 6, 32, 48


def gradient(num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH) -> np.ndarray:
    """A smooth float test video in [0, 1], (num_frames, height, width, 3): red ramps in x, green in y,
    blue in time (each frame differs, so GIF writers cannot merge frames)."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([xx / (width - 1), yy / (height - 1), np.full(xx.shape, 0.1 + 0.8 * i / max(num_frames - 1, 1))], -1)
        for i in range(num_frames)
    ]
    return np.stack(frames).astype(np.float32)


def read_mp4(path):
    """-> (stream facts dict, decoded rgb frames (f, h, w, 3) uint8, frame times in s)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        facts = dict(codec=cc.name, pix_fmt=cc.pix_fmt, rate=stream.average_rate, width=stream.width,
                     height=stream.height, colorspace=cc.colorspace, color_range=cc.color_range)
        decoded = list(container.decode(stream))
    return facts, np.stack([f.to_ndarray(format="rgb24") for f in decoded]), [float(f.time) for f in decoded]


def listdir(path):
    return sorted(os.listdir(path))


# ----------------------------------------------------------------------------- MP4


def test_mp4_is_h264_yuv420p_with_requested_frames_fps_size_and_close_pixels(tmp_path):
    frames = gradient()
    out = export_to_video(frames, tmp_path / "out.mp4", fps=8, crf=10)
    assert out == str(tmp_path / "out.mp4") and listdir(tmp_path) == ["out.mp4"]
    facts, decoded, times = read_mp4(out)
    assert facts == dict(codec="h264", pix_fmt="yuv420p", rate=8, width=WIDTH, height=HEIGHT,
                         colorspace=1, color_range=1)  # BT.709, limited range, tagged
    assert decoded.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert times == pytest.approx([i / 8 for i in range(NUM_FRAMES)])
    assert np.abs(decoded / 255.0 - frames).mean() < 4 / 255
    data = (tmp_path / "out.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: browsers play while downloading


def test_odd_sizes_are_padded_to_even_by_edge_replication(tmp_path):
    frames = gradient(4, 33, 47)
    facts, decoded, _ = read_mp4(export_to_video(frames, tmp_path / "odd.mp4", crf=10))
    assert (facts["height"], facts["width"]) == (34, 48)
    assert np.abs(decoded[:, :33, :47] / 255.0 - frames).mean() < 4 / 255
    # the padding repeats the last row / column (up to compression error)
    assert np.abs(decoded[:, 33].astype(int) - decoded[:, 32]).mean() < 3
    assert np.abs(decoded[:, :, 47].astype(int) - decoded[:, :, 46]).mean() < 3


@pytest.mark.parametrize("fps, rate", [(29.97, Fraction(2997, 100)), (Fraction(24000, 1001), Fraction(24000, 1001)),
                                       (12.5, Fraction(25, 2)), (24, Fraction(24))])
def test_fractional_and_integer_fps(tmp_path, fps, rate):
    facts, _, times = read_mp4(export_to_video(gradient(3, 16, 16), tmp_path / "f.mp4", fps=fps))
    assert facts["rate"] == rate
    assert times == pytest.approx([i / float(rate) for i in range(3)], abs=1e-4)


def test_crf_trades_size_for_quality(tmp_path):
    frames = gradient(4, 48, 64) + np.random.default_rng(0).normal(0, 0.05, (4, 48, 64, 3)).astype(np.float32)
    sizes, errors = [], []
    for crf in (5, 40):
        path = export_to_video(frames, tmp_path / f"crf{crf}.mp4", crf=crf)
        sizes.append(os.path.getsize(path))
        errors.append(np.abs(read_mp4(path)[1] / 255.0 - np.clip(frames, 0, 1)).mean())
    assert sizes[0] > 2 * sizes[1] and errors[0] < errors[1]


@pytest.mark.parametrize("suffix", [".mov", ".mkv", ".m4v"])
def test_other_containers(tmp_path, suffix):
    facts, decoded, _ = read_mp4(export_to_video(gradient(3, 16, 16), tmp_path / f"v{suffix}"))
    assert facts["codec"] == "h264" and decoded.shape == (3, 16, 16, 3)


def test_default_path_is_a_new_mp4_in_the_temp_folder():
    first, second = export_to_video(gradient(2, 16, 16)), export_to_video(gradient(2, 16, 16))
    try:
        assert first != second and first.endswith(".mp4") and os.path.isfile(first)
        assert os.path.dirname(first) == tempfile.gettempdir()
        assert read_mp4(first)[1].shape == (2, 16, 16, 3)
    finally:
        os.remove(first)
        os.remove(second)


def test_written_file_has_umask_permissions_and_replaces_existing(tmp_path):
    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")
    export_to_video(gradient(2, 16, 16), target)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert read_mp4(target)[1].shape[0] == 2 and listdir(tmp_path) == ["v.mp4"]


# ----------------------------------------------------------------------------- input forms


def input_forms(frames: np.ndarray) -> dict:
    """The same video in every accepted form; `frames` is float (f, h, w, 3) in [0, 1]."""
    u8 = (frames * 255).round().astype(np.uint8)
    t = torch.from_numpy(frames)
    return {
        "np float": frames,
        "np float64 batch of one": frames[None].astype(np.float64),
        "np uint8": u8,
        "torch channels last": t,
        "torch channels first": t.permute(0, 3, 1, 2),
        "torch batch of one channels first (output_type=pt)": t.permute(0, 3, 1, 2)[None],
        "torch uint8 channels last": torch.from_numpy(u8),
        "list of np": list(frames),
        "list of PIL": [PIL.Image.fromarray(f) for f in u8],
        "batch of one list of PIL (output_type=pil)": [[PIL.Image.fromarray(f) for f in u8]],
        "tuple of torch frames channels first": tuple(t.permute(0, 3, 1, 2)),
    }


def test_every_input_form_gives_the_same_frames_and_video(tmp_path):
    expected = (gradient(3, 16, 24) * 255).round().astype(np.uint8)
    frames = ((expected + 0.2) / 255).astype(np.float32)  # away from .5 rounding ties in float32 and float64
    forms = input_forms(frames)
    reference = read_mp4(export_to_video(frames, tmp_path / "ref.mp4"))[1]
    for name, form in forms.items():
        got = to_uint8_frames(form)
        assert got.dtype == np.uint8 and got.flags.c_contiguous, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
        np.testing.assert_array_equal(read_mp4(export_to_video(form, tmp_path / "v.mp4"))[1], reference, err_msg=name)


def test_grayscale_is_replicated_to_rgb():
    gray = (np.arange(2 * 8 * 10) % 256).astype(np.uint8).reshape(2, 8, 10)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for form in (gray[..., None], list(gray), [PIL.Image.fromarray(g, mode="L") for g in gray],
                 torch.from_numpy(gray[:, None])):  # torch (f, 1, h, w)
        np.testing.assert_array_equal(to_uint8_frames(form), rgb)


def test_floats_are_clipped_and_rounded():
    values = np.array([-0.5, 0.0, 0.5, 0.998, 1.0, 1.5], dtype=np.float32)
    frames = np.broadcast_to(values[None, None, :, None], (1, 2, 6, 3))
    np.testing.assert_array_equal(to_uint8_frames(frames)[0, 0, :, 0], [0, 0, 128, 254, 255, 255])


def test_floats_that_look_like_0_255_warn():
    with pytest.warns(UserWarning, match="Divide by 255"):
        to_uint8_frames(gradient(1, 4, 4) * 255)


BAD_INPUTS = [
    (np.zeros((2, 3, 8, 8, 3)), ValueError, r"batch of 2 videos.*video_frames\[i\]"),
    (torch.zeros(2, 3, 3, 8, 8), ValueError, "batch of 2 videos"),
    ([[np.zeros((8, 8, 3))], [np.zeros((8, 8, 3))]], ValueError, "batch of 2 videos"),
    ([], ValueError, "empty"),
    (np.zeros((0, 8, 8, 3)), ValueError, "empty"),
    (np.zeros((3, 8, 8, 2)), ValueError, "2 channels"),
    (np.zeros((3, 8, 8, 4)), ValueError, "RGBA"),
    ([PIL.Image.new("RGBA", (8, 8))], ValueError, "alpha"),
    (np.zeros((8, 8, 3)), ValueError, r"shape \(8, 8, 3\).*num_frames, height, width, 3"),
    (np.zeros((3, 8, 8, 3), dtype=np.int64), TypeError, "uint8 in \\[0, 255\\] or float in \\[0, 1\\]"),
    (np.full((3, 8, 8, 3), np.nan, dtype=np.float32), ValueError, "NaN"),
    (torch.zeros(2, 3, 8, 3), ValueError, "ambiguous"),
    ([np.zeros((8, 8, 3)), np.zeros((8, 9, 3))], ValueError, r"video_frames\[1\] has shape"),
    ([np.zeros((8, 8, 3), np.uint8)] * 4 + ["frame"], TypeError, r"video_frames\[4\]: expected a PIL image"),
    ("frames.mp4", TypeError, "expected a numpy array, torch tensor or list"),
]


@pytest.mark.parametrize("frames, error, match", BAD_INPUTS)
def test_bad_frames_raise_clear_errors_and_write_nothing(tmp_path, frames, error, match):
    with pytest.raises(error, match=match):
        export_to_video(frames, tmp_path / "out.mp4")
    assert listdir(tmp_path) == []


BAD_ARGUMENTS = [
    (dict(fps=0), ValueError, "fps must be a positive"),
    (dict(fps=-8), ValueError, "fps must be a positive"),
    (dict(fps=float("nan")), ValueError, "fps must be a positive"),
    (dict(fps="8"), TypeError, "fps must be a positive number"),
    (dict(fps=True), TypeError, "fps must be a positive number"),
    (dict(crf=60), ValueError, r"crf must be a number in \[0, 51\]"),
    (dict(output_video_path="missing/out.mp4"), FileNotFoundError, "missing' does not exist"),
    (dict(output_video_path="out.gif"), ValueError, "export_to_gif"),
    (dict(output_video_path="out.avi"), ValueError, r"\.mp4, \.m4v, \.mov, \.mkv"),
    (dict(output_video_path="."), ValueError, "must end with"),
    (dict(output_video_path=3), TypeError, "str or os.PathLike"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGUMENTS)
def test_bad_arguments_raise_clear_errors_and_write_nothing(tmp_path, kwargs, error, match):
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("output_video_path"), str):
        kwargs["output_video_path"] = str(tmp_path / kwargs["output_video_path"])
    kwargs.setdefault("output_video_path", str(tmp_path / "out.mp4"))
    with pytest.raises(error, match=match):
        export_to_video(gradient(2, 8, 8), **kwargs)
    assert listdir(tmp_path) == []


def test_folder_as_target_is_rejected(tmp_path):
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export_to_video(gradient(2, 8, 8), tmp_path / "dir.mp4")


# ----------------------------------------------------------------------------- atomicity and streaming


def test_failure_mid_encode_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    calls = []

    class FailingVideoFrame:
        @staticmethod
        def from_ndarray(array, format):
            calls.append(1)
            if len(calls) == 5:
                raise RuntimeError("encoder exploded")
            return av.VideoFrame.from_ndarray(array, format=format)

    monkeypatch.setattr(video, "_av", lambda: types.SimpleNamespace(open=av.open, VideoFrame=FailingVideoFrame))
    (tmp_path / "keep.mp4").write_bytes(b"old")
    for name in ("new.mp4", "keep.mp4"):
        calls.clear()
        with pytest.raises(RuntimeError, match="encoder exploded"):
            export_to_video(gradient(8, 16, 16), tmp_path / name)
        assert len(calls) == 5  # it failed after 4 frames had been encoded
    assert listdir(tmp_path) == ["keep.mp4"] and (tmp_path / "keep.mp4").read_bytes() == b"old"


def test_video_writer_streams_chunks_like_one_export(tmp_path):
    frames = gradient(7, 16, 24)
    with VideoWriter(tmp_path / "stream.mp4", fps=8, width=24, height=16) as writer:
        writer.write(frames[:3])  # np float
        writer.write(torch.from_numpy(frames[3:5]).permute(0, 3, 1, 2))  # torch channels first
        writer.write([PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in frames[5:]])  # PIL list
        assert listdir(tmp_path)[0].startswith(".stream.mp4.")  # only a hidden temp file so far
        assert not (tmp_path / "stream.mp4").exists()
    assert writer.num_frames == 7 and listdir(tmp_path) == ["stream.mp4"]
    np.testing.assert_array_equal(read_mp4(tmp_path / "stream.mp4")[1],
                                  read_mp4(export_to_video(frames, tmp_path / "once.mp4"))[1])


def test_video_writer_discards_on_bad_chunk_or_exception(tmp_path):
    good = gradient(4, 16, 16)
    bad_chunk = list(good) + [np.zeros((16, 16, 4), np.float32)]  # 5th element invalid (RGBA)
    with pytest.raises(ValueError, match=r"frames\[4\] has shape \(16, 16, 4\)"):
        with VideoWriter(tmp_path / "a.mp4") as writer:
            writer.write(good)
            writer.write(bad_chunk)
    with pytest.raises(KeyError):
        with VideoWriter(tmp_path / "b.mp4") as writer:
            writer.write(good)
            raise KeyError("user code failed")
    with pytest.raises(ValueError, match="expected 16x16"):
        with VideoWriter(tmp_path / "c.mp4") as writer:
            writer.write(good)
            writer.write(gradient(1, 16, 18))
    with pytest.raises(ValueError, match="expected 8x8"):
        with VideoWriter(tmp_path / "d.mp4", width=8, height=8) as writer:
            writer.write(good)
    with pytest.raises(ValueError, match="no frames were written"):
        with VideoWriter(tmp_path / "e.mp4"):
            pass
    assert listdir(tmp_path) == []


def test_video_writer_misuse(tmp_path):
    writer = VideoWriter(tmp_path / "a.mp4")
    with pytest.raises(RuntimeError, match="context manager"):
        writer.write(gradient(1, 8, 8))
    with pytest.raises(ValueError, match="width must be a positive int"):
        VideoWriter(tmp_path / "a.mp4", width=0)
    assert listdir(tmp_path) == []


# ----------------------------------------------------------------------------- GIF and load_video


def test_gif_frames_durations_and_loop(tmp_path):
    frames = gradient(8, 16, 20)
    out = export_to_gif(frames, tmp_path / "a.gif", fps=8)
    assert out == str(tmp_path / "a.gif") and listdir(tmp_path) == ["a.gif"]
    with PIL.Image.open(out) as gif:
        assert gif.format == "GIF" and gif.n_frames == 8 and gif.info["loop"] == 0 and gif.size == (20, 16)
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert all(abs(d - 125) <= 5 and d % 10 == 0 for d in durations)  # 1000/8 ms in GIF's 10 ms steps
    assert sum(durations) == 1000  # the rounding error is carried, not accumulated
    assert video.gif_durations_ms(3, Fraction(10)) == [100, 100, 100]


def test_gif_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at most 50"):
        export_to_gif(gradient(2, 8, 8), tmp_path / "a.gif", fps=60)
    with pytest.raises(ValueError, match=r"must end with one of \.gif"):
        export_to_gif(gradient(2, 8, 8), tmp_path / "a.mp4")
    with pytest.raises(ValueError, match=r"batch of 2 videos.*frames\[i\]"):
        export_to_gif(np.zeros((2, 2, 8, 8, 3)), tmp_path / "a.gif")
    assert listdir(tmp_path) == []


def test_gif_write_is_atomic(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"GIF89a partial")
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_to_gif(gradient(3, 8, 8), tmp_path / "a.gif")
    assert listdir(tmp_path) == []


def test_load_video_mp4_round_trip(tmp_path):
    frames = gradient()
    path = export_to_video(frames, tmp_path / "v.mp4", fps=8, crf=10)
    images, fps = load_video(path, return_fps=True)
    assert fps == 8.0 and len(images) == NUM_FRAMES
    assert all(isinstance(im, PIL.Image.Image) and im.mode == "RGB" and im.size == (WIDTH, HEIGHT) for im in images)
    assert np.abs(np.stack([np.asarray(im) for im in images]) / 255.0 - frames).mean() < 4 / 255
    assert load_video(path, convert_method=lambda ims: ims[::2]).__len__() == 3


def test_load_video_gif_round_trip_and_matches_diffusers(tmp_path):
    from diffusers.utils import load_video as diffusers_load_video

    frames = gradient(5, 16, 20)
    path = export_to_gif(frames, tmp_path / "a.gif", fps=10)
    images, fps = load_video(path, return_fps=True)
    assert fps == 10.0 and len(images) == 5 and all(im.mode == "RGB" and im.size == (20, 16) for im in images)
    assert np.abs(np.stack([np.asarray(im) for im in images]) / 255.0 - frames).mean() < 8 / 255  # 256 colours
    reference = diffusers_load_video(path)
    for ours, theirs in zip(images, reference, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs.convert("RGB")))


def test_load_video_errors(tmp_path):
    with pytest.raises(ValueError, match="URLs are not supported"):
        load_video("https://example.com/v.mp4")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="not a readable video"):
        load_video(tmp_path / "junk.mp4")
    with pytest.raises(TypeError, match="video must be a path"):
        load_video(3)


def test_utils_reexports_like_diffusers():
    from videofusion import utils

    assert utils.export_to_video is export_to_video
    assert utils.export_to_gif is export_to_gif and utils.load_video is load_video


def test_pyav_is_optional_until_a_video_file_is_written(tmp_path):
    """``import videofusion`` and GIF export work without PyAV (the GPU machine has none); MP4 export
    then fails with an ImportError that names the package, and leaves no file behind."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["av"] = None  # as if PyAV were not installed
import numpy as np
import videofusion
frames = np.zeros((2, 8, 8, 3), np.uint8)
videofusion.export_to_gif(frames, {str(tmp_path / "a.gif")!r})
try:
    videofusion.export_to_video(frames, {str(tmp_path / "a.mp4")!r})
except ImportError as error:
    print("ImportError:", error)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "pip install av" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif"]
