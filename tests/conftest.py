import pytest
import torch

# Tests run tiny tensors: one thread is as fast, deterministic, and immune to OpenMP spin-waiting
# (seconds per call) when something else keeps the cores busy.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny random TextToVideoSDPipeline folder written by diffusers (the real layout)."""
    from helpers import make_diffusers_pipeline_folder
    return make_diffusers_pipeline_folder(str(tmp_path_factory.mktemp("tiny-t2v")))


@pytest.fixture(scope="module")
def models_one_thread():
    """One torch thread for tests on tiny tensors: as fast, and no OpenMP spin-waiting (seconds per
    call) when other processes keep the cores busy. Restores the thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
