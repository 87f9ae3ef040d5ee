"""Bad input to the original-release conversion: a missing part, a file given for the wrong part, a
configuration that does not match the weights, a file that would need pickle code, wrong arguments. Each
is an error naming the file (or the option) and what is wrong, raised before any tensor is assigned;
on the command line, one line and exit code 2."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_clip_tokenizer
from test_convert_oracles import write_release

import videofusion.convert.release as release_module
from videofusion import DiffusionPipeline
from videofusion.apps.main import main
from videofusion.convert import load_release


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("original") / "release")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_clip_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer-folder")
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture
def release(original, tmp_path):
    """A copy of the release to spoil: the weight files linked, configuration.json copied."""
    folder = tmp_path / "release"
    folder.mkdir()
    for f in original.iterdir():
        if f.name == "configuration.json":
            shutil.copy(f, folder / f.name)
        else:
            (folder / f.name).symlink_to(f)
    return folder


@pytest.fixture
def no_assignment(monkeypatch):
    """Fails the test if any tensor is assigned to a model: the error must come first."""
    def assign(*args, **kwargs):
        raise AssertionError("tensors were assigned before the error")
    monkeypatch.setattr(release_module, "assign_state_dict", assign)


def edit_config(folder: Path, change) -> None:
    path = folder / "configuration.json"
    config = json.loads(path.read_text())
    change(config["model"])
    path.write_text(json.dumps(config))


def test_a_missing_part_names_its_file_and_key(release, tokenizer, no_assignment):
    (release / "VQGAN_autoencoder.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"the autoencoder's file VQGAN_autoencoder.pth "
                                                r"\(model_args.ckpt_autoencoder\) is missing"):
        load_release(release, tokenizer=tokenizer)


def test_the_autoencoders_file_given_as_the_unet_is_named_as_such(release, tokenizer, no_assignment):
    edit_config(release, lambda m: m["model_args"].update(ckpt_unet="VQGAN_autoencoder.pth"))
    with pytest.raises(ValueError, match=r"VQGAN_autoencoder.pth \(model_args.ckpt_unet: the UNet\) holds the "
                                         r"autoencoder's weights \(keys such as first_stage_model\."):
        load_release(release, tokenizer=tokenizer)


def test_a_file_with_no_part_lists_its_first_keys(release, tokenizer, no_assignment):
    (release / "open_clip_pytorch_model.bin").unlink()
    torch.save({"down_blocks.0.weight": torch.zeros(1)}, release / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model.bin .* holds none of the OpenCLIP text encoder's "
                                         r"keys .*first keys: down_blocks.0.weight \(a diffusers-layout file"):
        load_release(release, tokenizer=tokenizer)


def test_a_config_that_does_not_match_the_weights_names_the_file_and_first_keys(release, tokenizer, no_assignment):
    edit_config(release, lambda m: m["model_cfg"].update(unet_dim=64))
    with pytest.raises(ValueError) as e:
        load_release(release, tokenizer=tokenizer)
    message = str(e.value)
    assert "text2video_pytorch_model.pth does not match the UNet configuration.json's model.model_cfg" in message
    assert "input_blocks.0.0.weight (32, 4, 3, 3) in the file vs (64, 4, 3, 3)" in message


def test_a_missing_tensor_is_found_before_any_is_assigned(release, original, tokenizer, no_assignment):
    weights = torch.load(original / "open_clip_pytorch_model.bin", weights_only=True)
    del weights["transformer.resblocks.1.mlp.c_fc.bias"]
    (release / "open_clip_pytorch_model.bin").unlink()
    torch.save(weights, release / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model.bin does not match the text tower its own shapes "
                                         r"describe: 1 missing keys: transformer.resblocks.1.mlp.c_fc.bias"):
        load_release(release, tokenizer=tokenizer)


class Payload:
    """Unpickling it would create a file: loading must refuse it without running it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_file_that_needs_pickle_code_is_refused_and_its_code_never_runs(release, original, tokenizer, tmp_path,
                                                                          no_assignment):
    marker = tmp_path / "code-ran"
    weights = torch.load(original / "text2video_pytorch_model.pth", weights_only=True)
    (release / "text2video_pytorch_model.pth").unlink()
    torch.save({**weights, "extra": Payload(str(marker))}, release / "text2video_pytorch_model.pth")
    with pytest.raises(ValueError, match=r"text2video_pytorch_model.pth: refused: loading it would run pickle code "
                                         r"\(Unsupported global.*weights_only=True"):
        load_release(release, tokenizer=tokenizer)
    assert not marker.exists()


def test_a_truncated_file_is_named(release, original, tokenizer, no_assignment):
    data = (original / "VQGAN_autoencoder.pth").read_bytes()
    (release / "VQGAN_autoencoder.pth").unlink()
    (release / "VQGAN_autoencoder.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read .*VQGAN_autoencoder.pth: it is truncated or not a torch file"):
        load_release(release, tokenizer=tokenizer)


@pytest.mark.parametrize("key,value,says", [
    ("unet_num_heads", 10, r"model_cfg.unet_num_heads must be 8 .*got 10"),
    ("unet_dim_mult", [2, 4], r"model_cfg.unet_dim_mult must be a list starting with 1 .*got \[2, 4\]"),
    ("temporal_attention", "False", r"model_cfg.temporal_attention must be \"True\" .*got 'False'"),
    ("mean_type", "x_{t-1}", r"model_cfg.mean_type must be one of \['eps', 'v', 'x0'\]"),
])
def test_configuration_values_the_diffusers_layout_cannot_hold(release, tokenizer, key, value, says, no_assignment):
    edit_config(release, lambda m: m["model_cfg"].update({key: value}))
    with pytest.raises(ValueError, match=r"configuration.json: model\." + says):
        load_release(release, tokenizer=tokenizer)


def test_without_openclips_vocabulary_or_a_tokenizer_the_error_says_what_to_install(release, monkeypatch,
                                                                                    no_assignment):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else
                        find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match=r"OpenCLIP's vocabulary bpe_simple_vocab_16e6.txt.gz is not "
                                                r"installed; pip install \"videofusion\[original\]\".*--tokenizer"):
        load_release(release)


def test_a_variant_of_an_original_release_is_an_error(release, tokenizer):
    with pytest.raises(ValueError, match=r"variant: .* is an original release, with one weight file per part"):
        DiffusionPipeline.from_pretrained(str(release), tokenizer=tokenizer, variant="fp16")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_command_line_errors_are_one_line_with_exit_code_2(release, original, tokenizer_dir, tmp_path, capsys):
    existing = tmp_path / "out"
    existing.mkdir()
    cases = {
        ("convert", str(tmp_path / "nowhere"), str(tmp_path / "a")): "SRC: no folder",
        ("convert", str(tmp_path), str(tmp_path / "b")): "is not an original release folder: it has no "
                                                         "configuration.json",
        ("convert", str(original), str(existing)): "DST: " + str(existing) + " exists; pass --overwrite",
        ("convert", str(original), str(original / "inside")): "must be outside SRC",
        ("convert", str(original), str(tmp_path / "c"), "--variant", "fp-16"): "--variant: ",
        ("convert", str(original), str(tmp_path / "d"), "--tokenizer", str(tmp_path / "x")): "--tokenizer: no folder",
    }
    for argv, says in cases.items():
        assert main(list(argv)) == 2
        line = one_error_line(capsys)
        assert line.startswith("videofusion convert: error: ") and says in line, line
    (release / "open_clip_pytorch_model.bin").unlink()
    shutil.copy(original / "VQGAN_autoencoder.pth", release / "open_clip_pytorch_model.bin")
    assert main(["convert", str(release), str(tmp_path / "e"), "--tokenizer", str(tokenizer_dir)]) == 2
    assert "open_clip_pytorch_model.bin (model_args.ckpt_clip: the OpenCLIP text encoder) holds the autoencoder's " \
        "weights" in one_error_line(capsys)
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))  # nothing left behind
