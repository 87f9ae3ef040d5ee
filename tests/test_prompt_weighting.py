"""Prompt weighting: the parser (sd-webui's syntax) and the weighted embeddings."""
import pytest
import torch

from videofusion import TextToVideoSDPipeline
from videofusion.pipelines.prompts import ROUND, SQUARE, emphasize, parse_weights, weighted_batch


@pytest.mark.parametrize("text, expected", [
    ("a red ball", [("a red ball", 1.0)]),
    ("a (red) ball", [("a ", 1.0), ("red", ROUND), (" ball", 1.0)]),
    ("((red))", [("red", ROUND * ROUND)]),
    ("[red]", [("red", SQUARE)]),
    ("a (red ball:1.5)", [("a ", 1.0), ("red ball", 1.5)]),
    ("(a (red:2) ball)", [("a ", ROUND), ("red", 2 * ROUND), (" ball", ROUND)]),
    (r"a \(red\) ball", [("a (red) ball", 1.0)]),
    ("time: noon (sun", [("time: noon ", 1.0), ("sun", ROUND)]),  # unclosed: weighs the rest
    ("red) ball]", [("red) ball]", 1.0)]),  # stray closing brackets are text
    ("(red:1)", [("red", 1.0)]),
    ("", [("", 1.0)]),
])
def test_parse_weights(text, expected):
    got = parse_weights(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_emphasize_keeps_the_mean():
    z = torch.randn(2, 7, 4)
    w = torch.ones(2, 7)
    w[0, 3] = 1.5
    out = emphasize(z, w)
    assert torch.allclose(out.mean(dim=(1, 2)), z.mean(dim=(1, 2)), atol=1e-6)
    assert torch.equal(out[1], z[1])  # weights of 1: the prompt unchanged


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir, models_one_thread):
    return TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)


def embeds(pipe, prompt):
    return pipe.encode_prompt(prompt, torch.device("cpu"), 1, False)[0]


def test_weight_one_is_the_plain_prompt_bit_for_bit(pipe):
    plain = embeds(pipe, "a red circle moving left")
    pipe.enable_prompt_weighting()
    try:
        for prompt in ("a red circle moving left", "a (red:1) circle moving left", "a (red:1.0) circle (moving left:1)"):
            assert torch.equal(embeds(pipe, prompt), plain), prompt
        weighted = embeds(pipe, "a (red:1.5) circle moving left")
    finally:
        pipe.disable_prompt_weighting()
    # the same tokens as the plain prompt, "red"'s weighted 1.5, then the mean restored
    _, ids, weights = weighted_batch(pipe.tokenizer, ["a (red:1.5) circle moving left"])
    assert torch.equal(ids, pipe.tokenizer(["a red circle moving left"], padding="max_length", max_length=77,
                                           truncation=True, return_tensors="pt").input_ids)
    red = len(pipe.tokenizer("a ").input_ids) - 1  # after the begin token and "a "
    n_red = len(pipe.tokenizer("red").input_ids) - 2
    assert weights[0, red:red + n_red].tolist() == [1.5] * n_red and weights.sum() == 77 + 0.5 * n_red
    assert torch.allclose(weighted, emphasize(plain, weights), atol=1e-6)
    assert not torch.allclose(weighted, plain, atol=1e-4)
    assert not torch.equal(embeds(pipe, "a (red:1.5) circle moving left"), weighted)  # off: brackets are text


def test_emphasize_does_not_rescale_by_a_mean_of_rounding_errors():
    z = torch.randn(2, 5, 8)
    z = z - z.mean(dim=-1, keepdim=True)  # a layer norm without bias: every token's mean is 0
    w = torch.tensor([[1.0, 2.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0, 1.0]])
    out = emphasize(z, w)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, z * w[..., None], atol=1e-6)  # the weights as given, no rescaling
