import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny random TextToVideoSDPipeline folder written by diffusers (the real layout)."""
    from helpers import make_diffusers_pipeline_folder
    return make_diffusers_pipeline_folder(str(tmp_path_factory.mktemp("tiny-t2v")))
