"""A colour the demo model never saw (orange, for a LoRA): the data option, reading it back from pixels, and
``eval-demo --lora / --extra-colours`` (docs/lora.md, "A new colour on the demo model")."""
import hashlib
import json

import numpy as np
import pytest

from videofusion.demo.evaluation import analyse_clip, classify_colour, parse_prompt, score_clip
from videofusion.demo.shapes import (
    COLOURS, EXTRA_COLOURS, ShapeSpec, ShapesDataset, caption, render_clip, sample_specs,
)
from videofusion.training.data import open_dataset


def test_default_data_is_unchanged():
    """The shipped model's data (configs/demo-broadcast.toml's spreads), byte for byte as before extra colours."""
    data = ShapesDataset(6, seed=0, start_spread=0.1, cross_spread=0.5)
    h = hashlib.sha256()
    for i in range(6):
        item = data[i]
        h.update(item["video"].numpy().tobytes())
        h.update(item["caption"].encode())
    assert h.hexdigest() == "a9c077ad207eafffb6baee0acc6ff33087c82242cb5faf047d3ca4c8d7f2659e"
    assert all(s.colour in COLOURS for s in ShapesDataset(200, seed=3).specs)


def test_extra_colours_repaint_a_share_of_the_clips():
    plain = sample_specs(200, seed=1, start_spread=0.1)
    data = ShapesDataset(200, seed=1, num_frames=4, start_spread=0.1, extra_colours=["orange"], extra_share=0.3)
    orange = [i for i, s in enumerate(data.specs) if s.colour == "orange"]
    assert 40 <= len(orange) <= 80  # about 30%
    for i, (spec, before) in enumerate(zip(data.specs, plain)):  # only the colour of the repainted ones changes
        assert spec == (before if i not in orange else ShapeSpec(**{**before.__dict__, "colour": "orange"}))
    i = orange[0]
    assert data.caption(i) == f"an orange {data.specs[i].shape} moving {data.specs[i].direction}"
    video = data[i]["video"]  # (3, f, h, w) in [-1, 1]
    pixels = ((video + 1) * 127.5).round().reshape(3, -1).T
    assert (np.abs(pixels.numpy() - EXTRA_COLOURS["orange"]).max(axis=1) <= 1).any()  # the shape is orange
    again = open_dataset({"shapes": 200, "seed": 1, "start_spread": 0.1, "extra_colours": ["orange"],
                          "extra_share": 0.3}, 4, 64, 64)
    assert again.specs == data.specs
    with pytest.raises(ValueError, match="extra_colours"):
        open_dataset({"shapes": 2, "extra_colours": ["purple"]}, 4, 64, 64)
    with pytest.raises(ValueError, match="extra_share needs extra_colours"):
        open_dataset({"shapes": 2, "extra_share": 0.5}, 4, 64, 64)
    with pytest.raises(ValueError, match="extra colour"):
        ShapesDataset(2, extra_colours=["red"])
    with pytest.raises(ValueError, match="extra_share"):
        ShapesDataset(2, extra_colours=["orange"], extra_share=0.0)


def test_orange_is_read_only_when_asked():
    orange = np.asarray(EXTRA_COLOURS["orange"]) / 255
    assert classify_colour(orange) in ("red", "yellow")  # the default reader knows the six colours only
    assert classify_colour(orange, ["orange"]) == "orange"
    for name, rgb in COLOURS.items():  # the known colours still read as themselves beside orange
        assert classify_colour(np.asarray(rgb) / 255, ["orange"]) == name
    spec = ShapeSpec("orange", "square", "up", background="light")
    clip = render_clip(spec, 8, 64, 64)
    assert caption(spec) == "an orange square moving up"
    assert analyse_clip(clip)["colour"] != "orange" and analyse_clip(clip, ["orange"])["colour"] == "orange"
    assert parse_prompt(caption(spec))["colour"] is None
    assert parse_prompt(caption(spec), ["orange"])["colour"] == "orange"
    scored = score_clip(clip, caption(spec), extra_colours=["orange"])
    assert scored["colour_ok"] and scored["direction_ok"]
    with pytest.raises(ValueError, match="extra_colours"):
        classify_colour(orange, ["purple"])


def test_eval_demo_lora_and_extra_colours(tiny_pipeline_dir, tmp_path, capsys, models_one_thread):
    """--lora PATH[:SCALE] reaches the pipeline (scale 0: the model alone), --extra-colours adds the orange
    prompts; mistakes are one line and exit code 2, before any model loads."""
    from lora_oracle import UNET_TARGETS, add_peft_adapter, diffusers_unet, save_diffusers_lora
    from videofusion.apps.main import main
    sd, config = add_peft_adapter(diffusers_unet(tiny_pipeline_dir), "x", UNET_TARGETS, seed=1, alpha=64)
    lora = save_diffusers_lora(str(tmp_path / "lora"), sd, config)
    args = ["eval-demo", "--model", tiny_pipeline_dir, "--seeds", "1", "--heldout-seeds", "0", "--max-combos", "1",
            "--steps", "1", "--num-frames", "2", "--threads", "1"]
    reports = {}
    for name, extra in [("plain", []), ("zero", ["--lora", f"{lora}:0"]), ("lora", ["--lora", f"{lora}:0.7"])]:
        assert main(args + extra + ["--output", str(tmp_path / f"{name}.json")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    contrast = {k: r["videos"][0]["predicted"]["contrast"] for k, r in reports.items()}
    assert contrast["zero"] == contrast["plain"] != contrast["lora"]
    assert reports["lora"]["loras"] == [{"path": lora, "scale": 0.7}] and "extra" not in reports["lora"]
    capsys.readouterr()

    args_orange = ["eval-demo", "--model", tiny_pipeline_dir, "--seeds", "0", "--heldout-seeds", "0", "--steps", "1",
                   "--num-frames", "2", "--threads", "1", "--extra-colours", "orange", "--extra-seeds", "1"]
    assert main(args_orange + ["--output", str(tmp_path / "orange.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:4]] == [["seen", "0"], ["heldout", "0"], ["extra", "12"]]
    report = json.loads((tmp_path / "orange.json").read_text())
    assert {v["prompt"].split()[0] + " " + v["prompt"].split()[1] for v in report["videos"]} == {"an orange"}
    assert [v["seed"] for v in report["videos"]] == list(range(12))

    (tmp_path / "notes.safetensors").write_bytes(b"not weights")
    for extra, option in [(["--lora", str(tmp_path / "notes.safetensors")], "--lora"),
                          (["--extra-colours", "orange,purple"], "--extra-colours"),
                          (["--extra-colours", "orange", "--extra-seeds", "-1"], "--extra-seeds")]:
        assert main(["eval-demo", "--model", str(tmp_path / "no-such-model"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"videofusion eval-demo: error: {option}"), err


def test_the_demo_vae_renders_orange_and_keeps_its_six_colours():
    """The shipped decoder was fine-tuned on clips in random colours: an orange clip, encoded and decoded, reads
    orange (a decoder trained on the six colours alone gave yellow), and the six still read as themselves."""
    import torch
    from videofusion.demo import DEMO_MODEL_PATH
    from videofusion.models import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(str(DEMO_MODEL_PATH / "vae"), torch_dtype=torch.float32)
    specs = sample_specs(len(COLOURS) + 3, seed=4)
    colours = list(COLOURS) + ["orange"] * 3
    for spec, colour in zip(specs, colours):
        clip = render_clip(ShapeSpec(**{**spec.__dict__, "colour": colour}), 8, 64, 64)  # (f, h, w, 3) uint8
        x = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (f, 3, h, w) in [-1, 1]
        with torch.no_grad():
            decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample  # (f, 3, h, w)
        frames = ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        assert analyse_clip(frames, extra_colours=["orange"])["colour"] == colour, (colour, spec)
