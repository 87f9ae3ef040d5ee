"""videofusion.loading: diffusers-format folders (safetensors/bin, variants, shards), Hub cache, errors.

A toy PretrainedModel covers the file machinery; the real UNet3DConditionModel / AutoencoderKL
round-trip with diffusers both ways (diffusers is the oracle for the folder format).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
from torch import nn

from videofusion.io import loading, saving
from videofusion.io.files import find_weights, load_state_dict, parse_weight_name, read_model_index, select_weight_files
from videofusion.io.hub import model_allow_patterns, pipeline_allow_patterns, resolve_pretrained
from videofusion.io.loading import load_model

from videofusion.models.config import PretrainedModel


@dataclass
class ToyConfig:
    in_channels: int = 3
    hidden: int = 8

    def __post_init__(self):
        if not (isinstance(self.hidden, int) and self.hidden > 0):
            raise ValueError(f"hidden: must be a positive int, got {self.hidden!r}")


class Toy(PretrainedModel):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig | None = None, **kwargs):
        super().__init__()
        self.config = self.make_config(config, **kwargs)
        c = self.config
        self.conv_in = nn.Conv2d(c.in_channels, c.hidden, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Linear(c.hidden, c.hidden), nn.GroupNorm(2, c.hidden)])
        self.register_buffer("scale", torch.ones(c.hidden))  # persistent: in the checkpoint
        self.register_buffer("freqs", torch.arange(4.0).exp(), persistent=False)  # computed, not saved


def toy(seed: int = 0, **kwargs) -> Toy:
    torch.manual_seed(seed)
    model = Toy(**kwargs)
    with torch.no_grad():
        model.scale.uniform_()
        model.blocks[1].weight.normal_()
    return model


def assert_same_weights(a: nn.Module, b: nn.Module, dtype: torch.dtype | None = None) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        expected = sa[k] if dtype is None else sa[k].to(dtype)
        assert sb[k].dtype == expected.dtype, k
        assert torch.equal(sb[k], expected), k


# ----------------------------------------------------------------------------------------- file names

def test_parse_weight_names_as_diffusers_and_transformers_write_them():
    cases = {
        "diffusion_pytorch_model.safetensors": ("diffusion_pytorch_model", None, "safetensors", "single"),
        "diffusion_pytorch_model.fp16.bin": ("diffusion_pytorch_model", "fp16", "bin", "single"),
        "diffusion_pytorch_model.fp16-00001-of-00002.safetensors": ("diffusion_pytorch_model", "fp16", "safetensors", "shard"),
        "diffusion_pytorch_model-00002-of-00002.fp16.safetensors": ("diffusion_pytorch_model", "fp16", "safetensors", "shard"),
        "diffusion_pytorch_model.safetensors.index.fp16.json": ("diffusion_pytorch_model", "fp16", "safetensors", "index"),
        "diffusion_pytorch_model.safetensors.fp16.index.json": ("diffusion_pytorch_model", "fp16", "safetensors", "index"),
        "pytorch_model.bin.index.json": ("pytorch_model", None, "bin", "index"),
        "model-00001-of-00003.safetensors": ("model", None, "safetensors", "shard"),
    }
    for name, want in cases.items():
        w = parse_weight_name(name)
        assert (w.stem, w.variant, w.ext, w.kind) == want, name
    for other in ["config.json", "merges.txt", "text2video_pytorch_model.pth", "model.onnx", "a.fp16.ema.bin"]:
        assert parse_weight_name(other) is None, other


def test_select_weight_files_prefers_safetensors_and_keeps_the_variant_apart():
    names = ["config.json", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors",
             "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
             "diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
             "diffusion_pytorch_model.safetensors.index.fp16.json", "diffusion_pytorch_model.ema.bin"]
    assert select_weight_files(names, None) == ["diffusion_pytorch_model.safetensors"]
    assert select_weight_files(names, "fp16") == [
        "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "diffusion_pytorch_model.safetensors.index.fp16.json"]
    assert select_weight_files(names, "ema") == ["diffusion_pytorch_model.ema.bin"]
    assert select_weight_files(names, "bf16") == []
    assert select_weight_files(["open_clip_pytorch_model.bin"], None) == []  # not a diffusers/transformers name


# The published damo-vilab/text-to-video-ms-1.7b layout (shared/reference), plus the usual extras,
# and a zeroscope-style folder of original-format weights that is no component.
MS_REPO = ["model_index.json", "README.md", ".gitattributes", "samples/astronaut.gif",
           "scheduler/scheduler_config.json", "tokenizer/merges.txt", "tokenizer/vocab.json",
           "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
           "zs2_576w/open_clip_pytorch_model.bin", "zs2_576w/configuration.json",
           "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
           "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.fp16.bin"]
for _folder in ("unet", "vae"):
    MS_REPO += [f"{_folder}/config.json"] + [f"{_folder}/diffusion_pytorch_model{v}.{ext}"
                                             for v in ("", ".fp16") for ext in ("safetensors", "bin")]
MS_INDEX = {"_class_name": "TextToVideoSDPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "safety_checker": [None, None]}
MS_CONFIGS = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
              "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
              "tokenizer/vocab.json", "unet/config.json", "vae/config.json"]


def test_pipeline_allow_patterns_download_only_the_variant():
    fp16 = pipeline_allow_patterns(MS_INDEX, MS_REPO, "fp16")
    assert fp16 == sorted(MS_CONFIGS + ["text_encoder/model.fp16.safetensors",
                                        "unet/diffusion_pytorch_model.fp16.safetensors",
                                        "vae/diffusion_pytorch_model.fp16.safetensors"])
    plain = pipeline_allow_patterns(MS_INDEX, MS_REPO, None)
    assert plain == sorted(MS_CONFIGS + ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                                         "vae/diffusion_pytorch_model.safetensors"])
    # bin only where there is no safetensors; a component without the variant falls back to plain (diffusers)
    repo = [f for f in MS_REPO if not f.startswith(("text_encoder/model.", "vae/diffusion_pytorch_model.fp16"))]
    mixed = pipeline_allow_patterns(MS_INDEX, repo, "fp16")
    assert "text_encoder/pytorch_model.fp16.bin" in mixed and "vae/diffusion_pytorch_model.safetensors" in mixed
    assert not any(".bin" in f and f.startswith(("unet", "vae")) for f in mixed)
    with pytest.raises(ValueError, match="bf16.*no component"):
        pipeline_allow_patterns(MS_INDEX, MS_REPO, "bf16")


def test_model_allow_patterns_for_one_subfolder():
    assert model_allow_patterns(MS_REPO, "fp16", "unet") == ["unet/config.json",
                                                            "unet/diffusion_pytorch_model.fp16.safetensors"]
    assert model_allow_patterns(MS_REPO, None, "scheduler") == ["scheduler/scheduler_config.json"]
    with pytest.raises(ValueError, match=r"bf16.*diffusion_pytorch_model\.fp16\.bin"):
        model_allow_patterns(MS_REPO, "bf16", "unet", repo="org/name")
    root_model = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "README.md"]
    assert model_allow_patterns(root_model) == ["config.json", "diffusion_pytorch_model.safetensors"]


# ------------------------------------------------------------------------------------- save and load

@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("variant", [None, "fp16"])
@pytest.mark.parametrize("shard", [None, 600], ids=["single", "sharded"])
def test_round_trip(tmp_path, safe, variant, shard):
    model = toy()
    if variant == "fp16":
        model = model.half()
    model.save_pretrained(tmp_path, variant=variant, safe_serialization=safe, max_shard_size=shard)
    ext = "safetensors" if safe else "bin"
    names = sorted(os.listdir(tmp_path))
    v = f".{variant}" if variant else ""
    if shard is None:
        assert names == ["config.json", f"diffusion_pytorch_model{v}.{ext}"]
    else:  # diffusers' names: variant before the shard suffix, and inside the index name
        index = f"diffusion_pytorch_model.{ext}.index{v}.json"
        assert index in names and f"diffusion_pytorch_model{v}-00001-of-0000{len(names) - 2}.{ext}" in names
        assert len(names) > 3
        weight_map = json.loads((tmp_path / index).read_text())["weight_map"]
        assert set(weight_map) == set(model.state_dict())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"_class_name": "Toy", "_diffusers_version": "0.42.1", "in_channels": 3, "hidden": 8}

    loaded = load_model(Toy, str(tmp_path), variant=variant, torch_dtype=model.dtype)
    assert_same_weights(model, loaded)
    assert not loaded.training
    assert torch.equal(loaded.freqs, torch.arange(4.0).exp())  # non-persistent buffer computed, not meta
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    # torch_dtype=None: the model's own dtype (float32) whatever the file holds, as diffusers does
    assert_same_weights(model, Toy.from_pretrained(str(tmp_path), variant=variant), torch.float32)
    assert len(find_weights(tmp_path, variant=variant)) == (1 if shard is None else len(names) - 2)


def test_torch_dtype_casts_floats_only_and_weights_stay_mapped(tmp_path):
    model = toy()
    model.save_pretrained(tmp_path)
    half = load_model(Toy, tmp_path, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert_same_weights(model, half, torch.bfloat16)
    # mapped weights are a private copy-on-write mapping: writing to them never touches the file
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    before = file.read_bytes()
    mapped = load_model(Toy, tmp_path)
    with torch.no_grad():
        for p in mapped.parameters():
            p.add_(1)
    assert file.read_bytes() == before
    assert_same_weights(model, load_model(Toy, tmp_path))
    # same dtype as the file: the parameters are the memory-mapped tensors themselves (zero copy)
    big = Toy(hidden=1024, in_channels=2048)
    big.save_pretrained(tmp_path / "big")
    del big
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    before = rss()
    loaded = load_model(Toy, tmp_path / "big")
    weight_bytes = sum(p.numel() * 4 for p in loaded.parameters())
    assert weight_bytes > 60e6
    assert rss() - before < weight_bytes / 4  # untouched mapped pages are not resident


def test_loading_builds_on_meta_without_random_init(tmp_path, monkeypatch):
    toy().save_pretrained(tmp_path)
    seen = []
    real = torch.nn.init.kaiming_uniform_

    def spy(tensor, *args, **kwargs):
        seen.append(tensor.is_meta)
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", spy)
    load_model(Toy, tmp_path)
    assert seen and all(seen)  # Conv2d and Linear init ran, on meta tensors only
    seen.clear()
    Toy()  # outside loading, modules are built for real
    assert seen and not any(seen)


def test_empty_parameters_is_scoped_to_the_thread_and_the_block():
    import threading
    other = []
    with pytest.raises(RuntimeError), loading.empty_parameters():
        inside = nn.Linear(2, 2)
        thread = threading.Thread(target=lambda: other.append(nn.Linear(2, 2)))
        thread.start()
        thread.join()
        raise RuntimeError("leaves the block")
    assert inside.weight.is_meta and not other[0].weight.is_meta
    assert not nn.Linear(2, 2).weight.is_meta
    assert nn.Module.register_parameter is loading._register_parameter


def test_save_replaces_an_earlier_checkpoint_of_the_same_variant(tmp_path):
    toy(seed=1).save_pretrained(tmp_path)
    toy(seed=1).half().save_pretrained(tmp_path, variant="fp16")
    toy(seed=2).save_pretrained(tmp_path, safe_serialization=False, max_shard_size=600)
    names = os.listdir(tmp_path)
    assert "diffusion_pytorch_model.safetensors" not in names  # stale plain file gone, fp16 kept
    assert "diffusion_pytorch_model.fp16.safetensors" in names
    assert not any(n.endswith(".tmp") for n in names)
    assert_same_weights(toy(seed=2), load_model(Toy, tmp_path))
    assert_same_weights(toy(seed=1).half(), load_model(Toy, tmp_path, variant="fp16", torch_dtype=torch.float16))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "config.json"
    saving.atomic_write_text(target, "old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        saving.atomic_write(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]


def test_atomic_folder_swaps_in_a_whole_folder_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "model"
    with saving.atomic_folder(target) as folder:
        assert not target.exists() and folder.parent == tmp_path
        (folder / "a.txt").write_text("first")
    assert sorted(os.listdir(target)) == ["a.txt"]
    with pytest.raises(KeyboardInterrupt):
        with saving.atomic_folder(target) as folder:
            (folder / "a.txt").write_text("half")
            raise KeyboardInterrupt  # an interrupted build
    assert (target / "a.txt").read_text() == "first" and os.listdir(tmp_path) == ["model"]
    with saving.atomic_folder(target) as folder:
        (folder / "b.txt").write_text("second")
    assert sorted(os.listdir(target)) == ["b.txt"] and os.listdir(tmp_path) == ["model"]  # replaced whole
    real_replace, calls = os.replace, []

    def replace_failing_the_swap(src, dst):  # the old folder moves aside, then the swap itself fails
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("interrupted")
        real_replace(src, dst)

    with mock.patch.object(saving.os, "replace", replace_failing_the_swap), pytest.raises(OSError):
        with saving.atomic_folder(target) as folder:
            (folder / "c.txt").write_text("third")
    assert sorted(os.listdir(target)) == ["b.txt"] and os.listdir(tmp_path) == ["model"]  # the old one is back
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        with saving.atomic_folder(tmp_path / "file"):
            pass


def test_legacy_attention_keys_are_renamed(tmp_path):
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k, self.to_v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
            self.to_out = nn.ModuleList([nn.Linear(4, 4)])

    class Old(Toy):
        def __init__(self, config=None, **kwargs):
            super().__init__(config, **kwargs)
            self.attention = Attn()

    model = Old()
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for k, v in model.state_dict().items():
        for new, old in old_names.items():
            k = k.replace(f"attention.{new}.", f"attention.{old}.")
        sd[k] = v
    from safetensors.torch import save_file
    save_file(sd, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    assert_same_weights(model, load_model(Old, tmp_path))


# ------------------------------------------------------------------------------------------- errors

def test_missing_paths_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        resolve_pretrained(str(tmp_path / "no-such-dir"))
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        load_model(Toy, "./no-such-dir")
    toy().save_pretrained(tmp_path / "unet")
    with pytest.raises(FileNotFoundError, match=r"subfolder='vae'.*\['unet'\]"):
        load_model(Toy, tmp_path, subfolder="vae")
    (tmp_path / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*unet.*diffusion_pytorch_model\.safetensors"):
        load_model(Toy, tmp_path, subfolder="unet")
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="single model"):
        read_model_index(tmp_path / "unet")
    with pytest.raises(FileNotFoundError, match=r"no model_index\.json"):
        read_model_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a Hub id such as 'org/name' either"):
        resolve_pretrained("not a valid id!")


def test_variant_absent_lists_the_weight_files(tmp_path):
    toy().half().save_pretrained(tmp_path, variant="fp16")
    with pytest.raises(ValueError, match=r"variant None.*diffusion_pytorch_model\.fp16\.safetensors.*pass variant="):
        load_model(Toy, tmp_path)
    with pytest.raises(ValueError, match=r"variant 'bf16'.*\['diffusion_pytorch_model\.fp16\.safetensors'\]"):
        load_state_dict(tmp_path, variant="bf16")
    with pytest.raises(ValueError, match="variant: expected"):
        load_model(Toy, tmp_path, variant="../fp16")


def test_corrupt_files_are_named(tmp_path):
    toy().save_pretrained(tmp_path / "st")
    path = tmp_path / "st" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])  # truncated download
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors.*truncated or corrupt"):
        load_model(Toy, tmp_path / "st")
    toy().save_pretrained(tmp_path / "bin", safe_serialization=False)
    path = tmp_path / "bin" / "diffusion_pytorch_model.bin"
    path.write_bytes(b"not a zip or a pickle" * 10)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin.*truncated or corrupt"):
        load_model(Toy, tmp_path / "bin")
    toy().save_pretrained(tmp_path / "sh", max_shard_size=600)
    os.remove(sorted((tmp_path / "sh").glob("*-00002-of-*"))[0])
    with pytest.raises(FileNotFoundError, match="00002.*missing"):
        load_model(Toy, tmp_path / "sh")


def test_key_and_shape_mismatches_are_named(tmp_path):
    model = toy()
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    del sd["blocks.0.bias"]
    sd["conv_in.weight"] = torch.zeros(8, 3, 5, 5)
    from safetensors.torch import save_file
    save_file(sd, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "Toy"}))
    with pytest.raises(ValueError) as e:
        load_model(Toy, tmp_path)
    msg = str(e.value)
    assert "1 missing keys: blocks.0.bias" in msg and "1 unexpected keys: extra.weight" in msg
    assert "conv_in.weight (8, 3, 5, 5) in the checkpoint vs (8, 3, 3, 3)" in msg


def test_bad_arguments_and_invalid_config(tmp_path):
    toy().save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="torch_dtype"):
        load_model(Toy, tmp_path, torch_dtype="float16")
    with pytest.raises(ValueError, match="torch_dtype: expected a floating"):
        load_model(Toy, tmp_path, torch_dtype=torch.int8)
    (tmp_path / "config.json").write_text(json.dumps({"hidden": -1}))
    with pytest.raises(ValueError, match="hidden: must be a positive int"):
        load_model(Toy, tmp_path)
    with pytest.raises(TypeError):
        load_model(Toy, tmp_path, low_cpu_mem_usage=True)


# ------------------------------------------------------------------------------------------------ hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(cache, repo_id="org/name"):
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    toy().half().save_pretrained(snapshot / "unet", variant="fp16")
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline",
                                                           "unet": ["diffusers", "UNet3DConditionModel"]}))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_offline_hub_cache(tmp_path, monkeypatch):
    snapshot = make_hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_pretrained("org/name", variant="fp16") == snapshot
    assert resolve_pretrained("org/name", revision=COMMIT) == snapshot
    model = load_model(Toy, "org/name", subfolder="unet", variant="fp16", torch_dtype=torch.float16)
    assert_same_weights(toy().half(), model)
    with pytest.raises(FileNotFoundError, match=r"no folder 'org/other' here.*no Hub model 'org/other'.*Hub cache.*offline"):
        resolve_pretrained("org/other")
    # HF_HOME/hub when HF_HUB_CACHE is unset; local_files_only works without HF_HUB_OFFLINE
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    make_hub_cache(tmp_path / "home" / "hub", "org/home")
    assert resolve_pretrained("org/home", local_files_only=True).name == COMMIT


def test_online_downloads_only_the_variant(tmp_path, monkeypatch):
    import huggingface_hub
    calls = {}
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    (index_dir / "model_index.json").write_text(json.dumps(MS_INDEX))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("videofusion.io.hub.hub_unreachable", lambda: None)  # the Hub answers
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, revision=None: MS_REPO)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **kw: str(index_dir / filename))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.update(kw) or str(tmp_path))
    assert resolve_pretrained("org/name", variant="fp16", cache_dir=tmp_path / "c") == tmp_path
    assert calls["allow_patterns"] == pipeline_allow_patterns(MS_INDEX, MS_REPO, "fp16")
    assert calls["cache_dir"] == str(tmp_path / "c")
    resolve_pretrained("org/name", subfolder="vae")
    assert calls["allow_patterns"] == ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    resolve_pretrained("org/name", allow_patterns=["model_index.json"])
    assert calls["allow_patterns"] == ["model_index.json"]

    def unreachable(self, repo_id, revision=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    with pytest.raises(FileNotFoundError, match="could not be reached.*no network"):
        resolve_pretrained("org/name", cache_dir=tmp_path / "empty")
    snapshot = make_hub_cache(tmp_path / "c")
    assert resolve_pretrained("org/name", cache_dir=tmp_path / "c") == snapshot  # falls back to the cache


def closing_server():
    """A local TCP port that accepts connections and closes them at once (an unreachable Hub); returns
    (endpoint, connections counter, stop)."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    count = [0]

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            count[0] += 1
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", count, server.close


def test_an_unreachable_hub_is_asked_once_and_a_path_like_name_never(tmp_path, monkeypatch):
    import huggingface_hub.constants
    endpoint, connections, stop = closing_server()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(FileNotFoundError) as error:
            resolve_pretrained("out/demo-init")  # a valid Hub id, and no out/ here
        assert "no folder 'out/demo-init' here" in str(error.value) and "could not be reached" in str(error.value)
        assert connections[0] == 1  # one probe, no retries (huggingface_hub alone retries 5 times with backoff)
        (tmp_path / "mymodels").mkdir()
        with pytest.raises(FileNotFoundError, match="no folder 'mymodels/demo' here"):
            resolve_pretrained("mymodels/demo")  # its parent folder exists: a path, not a Hub id
        assert connections[0] == 1
    finally:
        stop()


# -------------------------------------------------------------------------- real models vs diffusers

def _real_models():
    from helpers import TINY_UNET, TINY_VAE
    from videofusion.models import AutoencoderKL, UNet3DConditionModel
    return [(UNet3DConditionModel, TINY_UNET), (AutoencoderKL, TINY_VAE)]


@pytest.mark.parametrize("index", [0, 1], ids=["UNet3DConditionModel", "AutoencoderKL"])
@pytest.mark.parametrize("variant", [None, "fp16"])
def test_real_models_round_trip_with_diffusers(tmp_path, index, variant):
    import diffusers
    ours_cls, tiny = _real_models()[index]
    theirs_cls = getattr(diffusers, ours_cls.__name__)
    dtype = torch.float16 if variant else torch.float32
    shard = "20KB" if variant else "10GB"  # fp16: sharded both ways (diffusers' shard and index names)
    torch.manual_seed(0)
    theirs = theirs_cls(**tiny).to(dtype)
    theirs.save_pretrained(tmp_path / "d", variant=variant, max_shard_size=shard)
    assert any("-00002-of-" in n for n in os.listdir(tmp_path / "d")) == bool(variant)
    ours = ours_cls.from_pretrained(str(tmp_path / "d"), variant=variant, torch_dtype=dtype)
    assert_same_weights(theirs, ours)

    ours.save_pretrained(str(tmp_path / "v"), variant=variant, max_shard_size=shard)
    assert sorted(os.listdir(tmp_path / "v")) == sorted(os.listdir(tmp_path / "d"))
    back = theirs_cls.from_pretrained(tmp_path / "v", variant=variant, torch_dtype=dtype)
    assert_same_weights(theirs, back)
    ours.save_pretrained(str(tmp_path / "bin"), variant=variant, safe_serialization=False)
    assert_same_weights(theirs, theirs_cls.from_pretrained(tmp_path / "bin", variant=variant, torch_dtype=dtype))
    ours_keys = set(json.loads((tmp_path / "v" / "config.json").read_text()))
    assert {k for k in theirs.config if not k.startswith("_")} <= ours_keys  # every diffusers key written
    public = lambda config: json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))
    assert public(back.config) == public(theirs.config)
    # dtype without torch_dtype: float32, like diffusers
    assert ours_cls.from_pretrained(str(tmp_path / "d"), variant=variant).dtype == torch.float32
    assert theirs_cls.from_pretrained(tmp_path / "d", variant=variant).dtype == torch.float32
