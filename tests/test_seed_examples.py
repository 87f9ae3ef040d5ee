"""The seed documentation's three Python examples, with `diffusers` replaced by `videofusion` and the
Hub id replaced by a tiny local folder in the real layout (fp16 variant files, as on the Hub).

On a machine without an accelerator, `pipe.to("cuda")` becomes `pipe.to("cpu")` and the offload
calls warn and leave the models on the CPU (see README, "Memory options")."""
import os
import warnings

import av
import pytest
import torch

EXAMPLE_1 = '''
import torch
from videofusion import DiffusionPipeline
from videofusion.utils import export_to_video

pipe = DiffusionPipeline.from_pretrained("damo-vilab/text-to-video-ms-1.7b", torch_dtype=torch.float16, variant="fp16")
pipe = pipe.to("cuda")

prompt = "Spiderman is surfing"
video_frames = pipe(prompt).frames[0]
video_path = export_to_video(video_frames)
video_path
'''

EXAMPLE_2 = '''
import torch
from videofusion import DiffusionPipeline
from videofusion.utils import export_to_video

pipe = DiffusionPipeline.from_pretrained("damo-vilab/text-to-video-ms-1.7b", torch_dtype=torch.float16, variant="fp16")
pipe.enable_model_cpu_offload()

# memory optimization
pipe.enable_vae_slicing()

prompt = "Darth Vader surfing a wave"
video_frames = pipe(prompt, num_frames=64).frames[0]
video_path = export_to_video(video_frames)
video_path
'''

EXAMPLE_3 = '''
import torch
from videofusion import DiffusionPipeline, DPMSolverMultistepScheduler
from videofusion.utils import export_to_video

pipe = DiffusionPipeline.from_pretrained("damo-vilab/text-to-video-ms-1.7b", torch_dtype=torch.float16, variant="fp16")
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
pipe.enable_model_cpu_offload()

prompt = "Spiderman is surfing"
video_frames = pipe(prompt, num_inference_steps=25).frames[0]
video_path = export_to_video(video_frames)
video_path
'''


@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory):
    from helpers import MICRO_UNET, MICRO_VAE, make_diffusers_pipeline_folder
    return make_diffusers_pipeline_folder(str(tmp_path_factory.mktemp("fp16-t2v")), variant="fp16",
                                          dtype=torch.float16, unet=MICRO_UNET, vae=MICRO_VAE, max_length=16)


@pytest.mark.parametrize("example,num_frames", [(EXAMPLE_1, 16), (EXAMPLE_2, 64), (EXAMPLE_3, 16)],
                         ids=["basic", "offload_vae_slicing_64_frames", "dpm_solver_25_steps"])
def test_seed_example_runs(example, num_frames, fp16_folder):
    code = example.replace('"damo-vilab/text-to-video-ms-1.7b"', repr(fp16_folder))
    if not torch.cuda.is_available():
        code = code.replace('pipe.to("cuda")', 'pipe.to("cpu")')
    scope = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # offload without an accelerator warns
        exec(compile(code, "seed_example", "exec"), scope)
    pipe, path = scope["pipe"], scope["video_path"]
    try:
        assert pipe.unet.dtype == torch.float16
        assert scope["video_frames"].shape == (num_frames, 8, 8, 3)
        with av.open(path) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert sum(1 for _ in container.decode(stream)) == num_frames
    finally:
        os.remove(path)
