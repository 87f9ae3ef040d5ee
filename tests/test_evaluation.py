"""Prompt-adherence evaluator on rendered ground-truth clips, clean and degraded."""
from itertools import product

import numpy as np
import pytest
import torch

from videofusion.demo.evaluation import analyse_clip, classify_colour, parse_prompt, score_clip, summarise
from videofusion.demo.shapes import (
    BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS, ShapeSpec, caption, render_clip, sample_specs,
)


def box_blur(clip):
    """3x3 box blur of (f, h, w, 3) floats, edges replicated."""
    p = np.pad(clip, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = clip.shape[1:3]
    return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def grid_specs(rng, sizes=SIZES):
    """Every (colour, shape, direction) on both backgrounds, for each size; speeds cycle; random starts."""
    speeds = list(SPEEDS)
    cells = product(COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS, sizes)
    return [ShapeSpec(c, sh, d, speeds[i % 3], size, bg, start=tuple(rng.uniform(size=2)),
                      noise=0.02 * (i % 2), seed=i)
            for i, (c, sh, d, bg, size) in enumerate(cells)]


def test_ground_truth_clips_are_read_correctly():
    specs = grid_specs(np.random.default_rng(0))  # 72 combos x 2 backgrounds x 3 sizes, all speeds
    results = [score_clip(render_clip(s), caption(s)) for s in specs]
    summary = summarise(results)
    assert summary["n"] == 432
    assert summary["colour"] == 1.0 and summary["direction"] == 1.0
    assert summary["shape"] >= 0.95


def test_noisy_blurred_clips_are_still_read_correctly():
    rng = np.random.default_rng(1)
    specs = grid_specs(rng, sizes=["small", "large"])[::2]  # 144 clips
    results = []
    for spec in specs:
        clip = render_clip(spec) / 255.0 + rng.normal(0.0, 0.1, (16, 64, 64, 3))
        clip = np.clip(box_blur(box_blur(clip)), 0.0, 1.0)
        results.append(score_clip(clip, caption(spec)))
    summary = summarise(results)
    assert summary["colour"] >= 0.95 and summary["direction"] >= 0.95


def test_washed_out_tinted_clips_keep_their_colour():
    rng = np.random.default_rng(2)
    results = []
    for spec in sample_specs(60, seed=2):
        clip = render_clip(spec) / 255.0
        clip = (0.35 * clip + 0.65 * clip[:, :1, :1]) * np.array([1.0, 0.95, 0.85])  # low contrast, warm tint
        results.append(score_clip(np.clip(clip + rng.normal(0, 0.03, clip.shape), 0, 1), caption(spec)))
    summary = summarise(results)
    assert summary["colour"] >= 0.95 and summary["direction"] >= 0.95


def test_wrong_prompts_are_caught():
    spec = ShapeSpec("blue", "triangle", "up", size="large")
    clip = render_clip(spec)
    right = score_clip(clip, "a blue triangle moving up")
    assert right["colour_ok"] and right["shape_ok"] and right["direction_ok"]
    result = score_clip(clip, "a red square moving down")
    assert result["colour_ok"] is False and result["shape_ok"] is False and result["direction_ok"] is False
    assert result["predicted"]["colour"] == "blue" and result["predicted"]["shape"] == "triangle"
    # Each wrong word is caught on its own, over every alternative.
    for colour in set(COLOURS) - {"blue"}:
        assert score_clip(clip, f"a {colour} triangle moving up")["colour_ok"] is False
    for shape in set(SHAPES) - {"triangle"}:
        assert score_clip(clip, f"a blue {shape} moving up")["shape_ok"] is False
    for direction in set(DIRECTIONS) - {"up"}:
        assert score_clip(clip, f"a blue triangle moving {direction}")["direction_ok"] is False


def test_still_clip_has_no_direction():
    clip = np.repeat(render_clip(ShapeSpec("yellow", "square", "left"))[:1], 16, axis=0)
    predicted = analyse_clip(clip)
    assert predicted["direction"] == "none"
    assert predicted["colour"] == "yellow" and predicted["shape"] == "square"
    assert score_clip(clip, "a yellow square moving left")["direction_ok"] is False
    jitter = clip / 255.0 + np.random.default_rng(0).normal(0, 0.05, clip.shape)
    assert analyse_clip(np.clip(jitter, 0, 1))["direction"] == "none"


@pytest.mark.parametrize("name,clip", [
    ("grey", np.full((8, 32, 32, 3), 0.4, np.float32)),
    ("black", np.zeros((8, 32, 32, 3), np.uint8)),
    ("noise", np.clip(0.5 + np.random.default_rng(0).normal(0, 0.1, (8, 32, 32, 3)), 0, 1)),
    ("one frame", np.full((1, 32, 32, 3), 200, np.uint8)),
])
def test_blank_clip_predicts_nothing(name, clip):
    predicted = analyse_clip(clip)
    assert predicted["colour"] is None and predicted["shape"] is None and predicted["direction"] is None
    result = score_clip(clip, "a red circle moving left")
    assert result["colour_ok"] is False and result["shape_ok"] is False and result["direction_ok"] is False


def test_grey_shape_has_no_colour_but_moves():
    clip = render_clip(ShapeSpec("red", "circle", "right", size="large")).astype(np.float32)
    grey = np.repeat(clip.mean(-1, keepdims=True), 3, axis=-1) / 255.0  # (f, h, w, 3)
    predicted = analyse_clip(grey)
    assert predicted["colour"] is None
    assert predicted["direction"] == "right" and predicted["shape"] == "circle"


def test_input_types_agree():
    clip = render_clip(ShapeSpec("cyan", "circle", "down", size="small"))
    expected = analyse_clip(clip)
    assert expected["colour"] == "cyan" and expected["direction"] == "down"
    for variant in (clip / 255.0, (clip / 255.0).astype(np.float64), torch.from_numpy(clip / 255.0),
                    list(clip / 255.0)):
        got = analyse_clip(variant)
        assert (got["colour"], got["shape"], got["direction"]) == (expected["colour"], expected["shape"],
                                                                   expected["direction"])
        assert got["contrast"] == pytest.approx(expected["contrast"], abs=1e-5)


def test_bad_clips_raise_clear_errors():
    with pytest.raises(ValueError, match="frames must have shape"):
        analyse_clip(np.zeros((1, 8, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="frames must have shape"):
        analyse_clip(np.zeros((8, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        analyse_clip(np.full((2, 32, 32, 3), 200.0))
    with pytest.raises(TypeError, match="dtype"):
        analyse_clip(np.zeros((2, 32, 32, 3), np.int64))
    with pytest.raises(TypeError, match="prompt"):
        score_clip(np.zeros((2, 32, 32, 3), np.uint8), None)


def test_parse_prompt():
    assert parse_prompt("a red circle moving left") == {
        "colour": "red", "shape": "circle", "direction": "left"}
    assert parse_prompt("A small Magenta TRIANGLE moving up slowly on a dark background") == {
        "colour": "magenta", "shape": "triangle", "direction": "up"}
    assert parse_prompt("two green squares drifting rightwards") == {
        "colour": "green", "shape": "square", "direction": "right"}
    assert parse_prompt("Spiderman is surfing") == {"colour": None, "shape": None, "direction": None}


def test_classify_colour():
    for name, rgb in COLOURS.items():
        assert classify_colour(np.array(rgb) / 255.0) == name
        assert classify_colour(np.array(rgb) / 255.0 - 0.9) == name  # a difference from a grey
    assert classify_colour([0.5, 0.52, 0.48]) is None


def test_summarise_counts_only_named_attributes():
    results = [
        {"colour_ok": True, "shape_ok": False, "direction_ok": True},
        {"colour_ok": True, "shape_ok": True, "direction_ok": True},
        {"colour_ok": False, "shape_ok": None, "direction_ok": True},
        {"colour_ok": None, "shape_ok": None, "direction_ok": None},
    ]
    assert summarise(results) == {"colour": 2 / 3, "shape": 1 / 2, "direction": 1.0, "all": 2 / 4, "n": 4}
    assert summarise([]) == {"colour": None, "shape": None, "direction": None, "all": None, "n": 0}
    prompt_without_colour = score_clip(render_clip(ShapeSpec("red", "square", "up")), "a square moving up")
    assert prompt_without_colour["colour_ok"] is None and prompt_without_colour["shape_ok"] is True


def test_segments_tell_steady_motion_from_motion_that_stops():
    """A 64-frame clip that moves all along shows its direction in each 16-frame segment; one that moves
    in its first 16 frames and then stands still still reads "left" as a whole, but 3 of its 4
    segments are still."""
    spec = ShapeSpec("red", "circle", "left", "slow", start=(0.5, 0.5))
    steady = render_clip(spec, num_frames=64)
    stops = np.concatenate([render_clip(spec, num_frames=16), np.repeat(render_clip(spec, num_frames=16)[-1:], 48, 0)])
    prompt = "a red circle moving left"
    a, b = score_clip(steady, prompt, segment_frames=16), score_clip(stops, prompt, segment_frames=16)
    assert a["direction_ok"] and a["segment_directions"] == ["left"] * 4
    assert b["segment_directions"] == ["left", "none", "none", "none"]
    summary = summarise([a, b])
    assert summary["segment_direction"] == 5 / 8 and summary["segment_still"] == 3 / 8
    # a 70-frame clip has 4 whole segments (the 6-frame rest is dropped); clips that fit get no segments
    assert len(score_clip(render_clip(spec, num_frames=70), prompt, segment_frames=16)["segment_directions"]) == 4
    assert "segment_directions" not in score_clip(render_clip(spec), prompt, segment_frames=16)
    assert "segment_direction" not in summarise([score_clip(render_clip(spec), prompt)])
