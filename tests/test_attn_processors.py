"""Attention processors as in diffusers: ``attn_processors`` / ``set_attn_processor`` /
``set_default_attn_processor`` on the UNet and the VAE, with diffusers' processors and a script's own
processor run on our layers and compared with diffusers' models running the same processors."""
import pytest
import torch

import diffusers
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from tests.helpers import TINY_UNET, TINY_VAE
from videofusion.models import AutoencoderKL, UNet3DConditionModel
from videofusion.models.attention import SDPAAttnProcessor

pytestmark = pytest.mark.usefixtures("models_one_thread")


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def twins(ref_class, our_class, config: dict):
    """diffusers' model with random weights and ours with the same weights."""
    torch.manual_seed(0)
    ref = perturbed(ref_class(**config))
    ours = our_class(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


@pytest.fixture(scope="module")
def unets():
    return twins(diffusers.UNet3DConditionModel, UNet3DConditionModel, TINY_UNET)


@pytest.fixture(scope="module")
def vaes():
    return twins(diffusers.AutoencoderKL, AutoencoderKL, TINY_VAE)


def unet_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 3, 8, 8, generator=g), torch.tensor(500), torch.randn(2, 5, 16, generator=g)


class ScaledProcessor:
    """What a script writes: the classic attention through the layer's helpers, its probabilities recorded,
    the output scaled by a ``gain`` passed in ``cross_attention_kwargs``."""

    def __init__(self):
        self.shapes = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, gain=1.0):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.shapes.append(tuple(probs.shape))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return gain * attn.to_out[1](attn.to_out[0](out))


def test_processor_names_are_diffusers(unets, vaes):
    for ours, ref in (unets, vaes):
        assert list(ours.attn_processors) == list(ref.attn_processors)
        assert all(isinstance(p, SDPAAttnProcessor) for p in ours.attn_processors.values())


@pytest.mark.parametrize("processor", [AttnProcessor, AttnProcessor2_0])
def test_diffusers_processors_run_on_our_layers(unets, vaes, processor):
    ours, ref = unets
    sample, t, context = unet_inputs()
    with torch.no_grad():
        builtin = ours(sample, t, context).sample
        ours.set_attn_processor(processor())
        assert all(type(p) is processor for p in ours.attn_processors.values())
        theirs = ours(sample, t, context).sample
        ref.set_attn_processor(processor())
        expected = ref(sample, t, context).sample
        ours.set_default_attn_processor()
        assert torch.equal(ours(sample, t, context).sample, builtin)
    torch.testing.assert_close(theirs, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(builtin, expected, atol=1e-5, rtol=0)

    ours, ref = vaes  # the mid-block image attention: group norm, residual connection
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours.set_attn_processor(processor())
        ref.set_attn_processor(processor())
        a, b = ours(x, sample_posterior=False).sample, ref(x, sample_posterior=False).sample
        ours.set_default_attn_processor()
        c = ours(x, sample_posterior=False).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(c, b, atol=1e-5, rtol=0)


def test_a_scripts_processor_with_call_kwargs_matches_diffusers(unets):
    ours, ref = unets
    sample, t, context = unet_inputs()
    mine, theirs = ScaledProcessor(), ScaledProcessor()
    names = list(ours.attn_processors)
    ours.set_attn_processor({name: mine for name in names})  # the dict form
    ref.set_attn_processor(theirs)
    try:
        with torch.no_grad():
            a = ours(sample, t, context, cross_attention_kwargs={"gain": 0.5}).sample
            b = ref(sample, t, context, cross_attention_kwargs={"gain": 0.5}).sample
            plain = ours(sample, t, context).sample
    finally:
        ours.set_default_attn_processor()
        ref.set_attn_processor(AttnProcessor2_0())  # diffusers refuses set_default_ after a custom one
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - plain).abs().max() > 1e-3  # the gain reached the processors
    assert mine.shapes == 2 * theirs.shapes and len(theirs.shapes) == len(names)  # ours ran twice
    assert all(isinstance(layer.call_kwargs, dict) and not layer.call_kwargs for layer in ours.modules()
               if hasattr(layer, "call_kwargs"))  # the call's kwargs end with the call


def test_bad_processor_settings_are_clear_errors(unets):
    ours, _ = unets
    names = list(ours.attn_processors)
    with pytest.raises(ValueError, match="number of processors"):
        ours.set_attn_processor({names[0]: AttnProcessor()})
    with pytest.raises(ValueError, match="no entry for"):
        ours.set_attn_processor({f"x{i}": AttnProcessor() for i in range(len(names))})
    with pytest.raises(TypeError, match="processor: must be callable"):
        ours.set_attn_processor("sdpa")
    sample, t, context = unet_inputs()
    with pytest.raises(ValueError, match=r"cross_attention_kwargs: keys \['gain'\].*built-in"):
        ours(sample, t, context, cross_attention_kwargs={"gain": 0.5})
    assert all(isinstance(p, SDPAAttnProcessor) for p in ours.attn_processors.values())


def test_module_processor_is_registered_then_replaced(unets):
    ours, _ = unets

    class Learned(torch.nn.Module):  # processors with weights are modules, as diffusers' IP-adapter ones
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(()))

        def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            return self.gain * attn.attend(hidden_states, encoder_hidden_states)

    layer = next(m for m in ours.modules() if hasattr(m, "set_processor"))
    layer.set_processor(Learned())
    assert any(name.endswith("processor.gain") for name, _ in layer.named_parameters())
    layer.set_processor(AttnProcessor())
    assert not any("processor" in name for name, _ in layer.named_parameters())
    layer.set_processor(SDPAAttnProcessor())
    assert layer.processor is None


def test_pipeline_call_kwargs_reach_the_processors_for_the_call_only(tiny_pipeline_dir):
    """The pipeline's cross_attention_kwargs: "scale" is the LoRA scale, the other keys go to the UNet's
    processors for that call (diffusers passes them on); with the built-in they are refused before any step."""
    import numpy as np

    from videofusion import FIFO, TextToVideoSDPipeline
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    call = dict(num_frames=2, height=16, width=16, num_inference_steps=2, output_type="np")
    steps = []
    pipe.unet.register_forward_hook(lambda *args: steps.append(1))
    with pytest.raises(ValueError, match=r"cross_attention_kwargs: keys \['gain'\].*built-in"):
        pipe("a red circle", cross_attention_kwargs={"gain": 0.5}, **call)
    assert steps == []
    builtin = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).frames
    processor = ScaledProcessor()
    pipe.unet.set_attn_processor(processor)
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).frames
    np.testing.assert_allclose(plain, builtin, atol=1e-4)
    halved = pipe("a red circle", generator=torch.Generator().manual_seed(0),
                  cross_attention_kwargs={"gain": 0.5, "scale": 1.0}, **call).frames
    assert np.abs(halved - plain).max() > 1e-3
    assert all(not layer.call_kwargs for layer in pipe.unet.modules() if hasattr(layer, "call_kwargs"))
    fifo = pipe("a red circle", generator=torch.Generator().manual_seed(0), long_video=FIFO(window=2),
                cross_attention_kwargs={"gain": 0.5}, **dict(call, num_frames=4))
    assert np.isfinite(fifo.frames).all()  # FIFO's own decoding loop ends the call's kwargs too
    assert all(not layer.call_kwargs for layer in pipe.unet.modules() if hasattr(layer, "call_kwargs"))
