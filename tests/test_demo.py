"""The built-in demo model ships in the package and is the default of `videofusion generate`."""
import av

from videofusion.apps.main import main
from videofusion.demo import DEMO_MODEL_PATH


def test_demo_model_is_shipped_in_the_diffusers_layout():
    for name in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                 "scheduler/scheduler_config.json"):
        assert (DEMO_MODEL_PATH / name).is_file(), name
    size = sum(p.stat().st_size for p in DEMO_MODEL_PATH.rglob("*") if p.is_file())
    assert size <= 25 * 2**20


def test_generate_defaults_to_the_demo_model(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["generate", "a red circle moving left", "--seed", "0", "--steps", "2", "-q", "-o", str(out)]) == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    assert len(frames) == 16 and (frames[0].width, frames[0].height) == (64, 64)


def test_the_shipped_model_follows_colour_and_direction():
    """The shipped model's score check (docs/demo-model.md: colour and direction 100% on eval-demo's 158
    videos), on four prompts covering four colours and all four directions, read back from the pixels."""
    import torch

    from videofusion import DiffusionPipeline
    from videofusion.demo import DEMO_DEFAULTS
    from videofusion.demo.evaluation import score_clip
    prompts = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
               "a yellow circle moving down"]
    pipe = DiffusionPipeline.from_pretrained(str(DEMO_MODEL_PATH), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(prompts, generator=[torch.Generator().manual_seed(i) for i in range(4)], **DEMO_DEFAULTS).frames
    for prompt, video in zip(prompts, frames):
        scored = score_clip(video, prompt)
        assert scored["colour_ok"] and scored["direction_ok"], (prompt, scored["predicted"])
