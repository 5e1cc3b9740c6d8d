import pytest
import torch

from diji.model.generate import SamplingParams, generate, sample
from diji.model.transformer import ModelConfig, Transformer

CFG = ModelConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def model():
    m = Transformer(CFG)
    m.init_weights(seed=3)
    return m.eval()


def greedy_reference(m, prompt, n):
    """No cache: re-run the full sequence for each token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_with_cache_equals_no_cache_reference(model):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    out = generate(model, prompts, SamplingParams(max_new_tokens=10))
    for p, g in zip(prompts, out, strict=True):
        assert g.tokens == greedy_reference(model, p, 10)
        assert g.finish_reason == "length"


def test_stops_at_stop_token_and_omits_it(model):
    full = generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=10))[0].tokens
    stop = full[3]
    cut = full.index(stop)
    out = generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=10, stop_ids=(stop,)))[0]
    assert out.tokens == full[:cut] and out.finish_reason == "stop"


def test_sampling_is_seedable_and_varies_with_seed(model):
    p = SamplingParams(max_new_tokens=20, temperature=1.5, seed=1)
    a = generate(model, [[1, 2]], p)[0].tokens
    b = generate(model, [[1, 2]], p)[0].tokens
    c = generate(model, [[1, 2]], SamplingParams(max_new_tokens=20, temperature=1.5, seed=2))[0].tokens
    assert a == b and a != c


def test_stop_token_is_reported(model):
    full = generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=10))[0].tokens
    out = generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=10, stop_ids=(full[2], 60)))[0]
    assert out.stop_token == full[2] and out.tokens == full[: full.index(full[2])]
    assert generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=3))[0].stop_token is None


@pytest.mark.parametrize("temperature", [0.0, 1.3])
def test_n_samples_per_prompt_equal_repeating_the_prompt(model, temperature):
    """n > 1 prefills each prompt once and copies its cache; the samples are those of repeated prompts."""
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [4]]
    p = SamplingParams(max_new_tokens=12, temperature=temperature, seed=4)
    shared = generate(model, prompts, p, n=3)
    repeated = generate(model, [q for q in prompts for _ in range(3)], p)
    assert [g.tokens for g in shared] == [g.tokens for g in repeated]
    if temperature:
        assert len({tuple(g.tokens) for g in shared[:3]}) > 1  # the copies are sampled independently
    with pytest.raises(ValueError, match="n"):
        generate(model, prompts, p, n=0)


def test_row_seeds_make_each_row_independent_of_its_batch(model):
    """With one seed per row, a row's sample is the same whichever rows share its batch."""
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [4]]
    p = SamplingParams(max_new_tokens=12, temperature=1.3)
    together = generate(model, prompts, p, n=2, row_seeds=[10, 11, 20, 21, 30, 31])
    alone = generate(model, prompts[1:2], p, n=2, row_seeds=[20, 21])
    assert [g.tokens for g in together[2:4]] == [g.tokens for g in alone]
    assert together[2].tokens != together[3].tokens
    with pytest.raises(ValueError, match="one seed per result row"):
        generate(model, prompts, p, row_seeds=[1, 2])


def test_top_k_one_is_greedy_and_top_p_keeps_the_top_token():
    logits = torch.tensor([[0.1, 3.0, 0.2, -1.0], [2.0, 0.0, 5.0, 1.0]])
    assert sample(logits, 1.0, top_k=1).tolist() == [1, 2]
    assert sample(logits, 1.0, top_p=1e-6).tolist() == [1, 2]


def test_context_overflow_and_bad_params_are_value_errors(model):
    with pytest.raises(ValueError, match="context"):
        generate(model, [[1] * 60], SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    assert generate(model, [[1, 2]], SamplingParams(max_new_tokens=0))[0].tokens == []


@pytest.mark.parametrize("kw", [dict(temperature=1e-300), dict(temperature=1.0, top_p=1e-300),
                                dict(temperature=1e-300, top_p=1e-300, top_k=3), dict(temperature=1e-45)])
def test_tiny_temperature_or_top_p_behaves_like_greedy_never_nan(kw):
    logits = torch.tensor([[0.1, 3.0, 0.2, -1.0], [2.0, 0.0, 5.0, 1.0], [-1e30, 7.0, 6.999, float("-inf")]])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample(logits, kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0),
                      gen).tolist() == [1, 2, 1]


def test_huge_temperature_and_non_finite_logits_still_sample_a_valid_token():
    logits = torch.tensor([[0.1, 3.0, 0.2, -1.0], [float("nan"), 1.0, float("inf"), 0.0]])
    for t in (1e300, 1.0):
        tok = sample(logits, t, generator=torch.Generator().manual_seed(1))
        assert tok.shape == (2,) and all(0 <= int(i) < 4 for i in tok)


def test_generate_with_tiny_temperature_equals_greedy(model):
    greedy = generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=8))[0].tokens
    tiny = generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=8, temperature=1e-300, top_p=1e-300, seed=0))
    assert tiny[0].tokens == greedy


def test_greedy_sample_is_argmax_including_ties_and_nan():
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [float("nan"), 1.0, float("nan"), 0.0],
                           [float("-inf"), float("inf"), float("inf"), 0.0], [3.0, 3.0, 3.0, 3.0]])
    assert sample(logits, 0.0).tolist() == logits.argmax(-1).tolist() == [1, 0, 1, 0]
    wide = torch.randint(0, 3, (16, 4096), generator=torch.Generator().manual_seed(0)).float()
    assert torch.equal(sample(wide, 0.0), wide.argmax(-1))
