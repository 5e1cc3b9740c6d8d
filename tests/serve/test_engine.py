"""The engine without HTTP: continuous batching gives the same tokens as the reference `generate`."""

from __future__ import annotations

import pytest
import torch
from servekit import one_torch_thread  # noqa: F401 (fixture)

from diji.model.generate import SamplingParams, generate
from diji.model.transformer import ModelConfig, Transformer
from diji.serve.engine import Engine, EngineConfig, GenParams, Scheduler, Sequence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(ctx: int = 64, **extra) -> Transformer:
    torch.manual_seed(0)
    # A large init spread makes a random model's greedy tokens vary, so a wrong cache shows up.
    cfg = ModelConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=ctx,
                      initializer_range=0.5, **extra)
    return Transformer(cfg).eval()


@torch.no_grad()
def greedy_without_cache(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """The plainest reference: recompute the whole sequence for every new token."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def letters(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i % 26) for i in ids)


def run_all(engine: Engine) -> dict[tuple[str, int], list]:
    out: dict[tuple[str, int], list] = {}
    while engine.scheduler.busy:
        for ev in engine.step():
            out.setdefault((ev.request_id, ev.index), []).append(ev)
    return out


@pytest.mark.parametrize("variant", [{}, {"kv_lora_rank": 16, "qk_rope_head_dim": 4},
                                     {"n_routed_experts": 4, "num_experts_per_tok": 2}], ids=["gqa", "mla", "moe"])
def test_continuous_batching_matches_uncached_greedy_with_fewer_slots_than_requests(variant):
    model = tiny_model(**variant)
    engine = Engine(model, letters, EngineConfig(max_batch_size=3))
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [20], [21, 22, 23], [40, 41, 42, 43]]
    lengths = [10, 3, 8, 12, 5, 7]
    for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        engine.add(f"r{i}", p, GenParams(max_tokens=n, temperature=0))
    kinds = []
    out: dict[str, list[int]] = {}
    while engine.scheduler.busy:
        kinds.append(engine.scheduler.waiting and engine.scheduler.free and "prefill" or "decode")
        assert len(engine.scheduler.running) <= 3
        for ev in engine.step():
            out.setdefault(ev.request_id, []).extend(ev.token_ids)
    for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        assert out[f"r{i}"] == greedy_without_cache(model, p, n), i
    # Requests 3.. were admitted while others were mid-decode (a prefill after the first decode).
    first_decode = kinds.index("decode")
    assert "prefill" in kinds[first_decode:]
    assert engine.scheduler.free == [2, 1, 0] and not engine.scheduler.running


def test_scheduler_admits_into_free_slots_and_abort_frees_them():
    s = Scheduler(slots=2, max_prefill_tokens=100)
    seqs = [Sequence(f"r{i}", 0, [1, 2, 3], GenParams(max_tokens=4), letters) for i in range(3)]
    for q in seqs:
        s.add(q)
    kind, batch = s.schedule()
    assert kind == "prefill" and batch == seqs[:2] and list(s.waiting) == [seqs[2]]
    assert s.schedule() == ("decode", seqs[:2])
    s.abort("r0")
    assert seqs[0].status == "finished" and seqs[0].finish_reason == "abort"
    kind, batch = s.schedule()  # the freed slot goes to the waiting request at the next step
    assert kind == "prefill" and batch == [seqs[2]] and seqs[2].slot == 0
    s.abort("r2")
    s.abort("r1")
    assert not s.busy and sorted(s.free) == [0, 1]


def test_prefill_token_budget_splits_admission():
    s = Scheduler(slots=4, max_prefill_tokens=5)
    for i in range(3):
        s.add(Sequence(f"r{i}", 0, [1, 2, 3], GenParams(), letters))
    assert len(s.schedule()[1]) == 1  # 3 + 3 > 5: the second prompt waits for the next step
    assert len(s.schedule()[1]) == 1


def test_stop_strings_hold_back_text_and_truncate():
    seq = Sequence("r", 0, [0], GenParams(max_tokens=20, stop=("cd",)), letters)
    emitted = "".join(seq.append(t) for t in (0, 1, 2, 3, 4))  # a b c d e
    assert seq.finish_reason == "stop" and emitted == "ab" and seq.text == "ab"
    seq = Sequence("r", 0, [0], GenParams(max_tokens=3, stop=("zz",)), letters)
    emitted = [seq.append(t) for t in (0, 1, 2)]
    assert emitted == ["", "a", "bc"] and seq.finish_reason == "length"


def test_half_a_utf8_character_waits_for_the_rest_but_invalid_bytes_flow():
    raw = "好".encode()  # three bytes, one token each

    def decode(ids):
        return bytes(raw[i] if i < 3 else 0x80 for i in ids).decode("utf-8", errors="replace")

    seq = Sequence("r", 0, [0], GenParams(max_tokens=20), decode)
    assert [seq.append(t) for t in (0, 1, 2)] == ["", "", "好"]
    # Stray continuation bytes never become a character: at most 3 U+FFFD are held back.
    out = [seq.append(3) for _ in range(6)]
    assert "".join(out) == "\ufffd" * 3 and out[-1] == "\ufffd"


def test_stop_token_ends_without_being_returned():
    engine = Engine(tiny_model(), letters, EngineConfig(max_batch_size=2))
    ref = generate(engine.runner.model, [[5, 6, 7]], SamplingParams(max_new_tokens=6))[0].tokens
    engine.add("r", [5, 6, 7], GenParams(max_tokens=6, temperature=0, stop_ids=(ref[2],)))
    events = run_all(engine)[("r", 0)]
    assert [t for ev in events for t in ev.token_ids] == ref[:2]
    assert events[-1].finish_reason == "stop"


def test_prompt_logprobs_equal_a_plain_forward_and_max_tokens_zero_samples_nothing():
    model = tiny_model()
    engine = Engine(model, letters, EngineConfig(max_batch_size=4))
    prompt = [3, 17, 99, 250, 8, 42]
    engine.add("echo", prompt, GenParams(max_tokens=0, prompt_logprobs=2))
    engine.add("other", [1, 2], GenParams(max_tokens=3, temperature=0))  # batched with a ragged neighbour
    events = run_all(engine)
    ev = events[("echo", 0)][0]
    assert ev.token_ids == [] and ev.finish_reason == "length"
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).float().log_softmax(-1)[0]
    assert ev.prompt_logprobs[0] is None
    for j, entry in enumerate(ev.prompt_logprobs[1:]):
        assert entry.token_id == prompt[j + 1]
        assert entry.logprob == pytest.approx(float(ref[j, prompt[j + 1]]), abs=1e-5)
        assert entry.top[0][0] == int(ref[j].argmax()) and len(entry.top) == 2


def test_seeded_sampling_is_reproducible_and_n_choices_differ():
    def sample_once():
        engine = Engine(tiny_model(), letters, EngineConfig(max_batch_size=4))
        engine.add("r", [5, 6, 7], GenParams(max_tokens=12, temperature=1.0, seed=7), n=2)
        events = run_all(engine)
        return [[t for ev in events[("r", i)] for t in ev.token_ids] for i in range(2)]

    a, b = sample_once(), sample_once()
    assert a == b and a[0] != a[1]


def test_a_seeded_request_samples_the_same_tokens_whatever_runs_beside_it():
    def tokens(neighbours: int) -> list[int]:
        engine = Engine(tiny_model(), letters, EngineConfig(max_batch_size=8))
        for i in range(neighbours):
            engine.add(f"n{i}", [1, 2, 3 + i], GenParams(max_tokens=10, temperature=0.9))
        engine.add("r", [5, 6, 7], GenParams(max_tokens=10, temperature=1.0, top_k=50, seed=11))
        return [t for ev in run_all(engine)[("r", 0)] for t in ev.token_ids]

    assert tokens(0) == tokens(5)


def test_generated_logprobs_are_the_models_and_top_is_sorted():
    model = tiny_model()
    engine = Engine(model, letters, EngineConfig(max_batch_size=2))
    engine.add("r", [9, 8, 7], GenParams(max_tokens=3, temperature=0, logprobs=3))
    events = run_all(engine)[("r", 0)]
    toks = [t for ev in events for t in ev.token_ids]
    lps = [lp for ev in events for lp in ev.logprobs]
    with torch.no_grad():
        ref = model(torch.tensor([[9, 8, 7, *toks]])).float().log_softmax(-1)[0]
    for j, (t, lp) in enumerate(zip(toks, lps, strict=True)):
        assert lp.logprob == pytest.approx(float(ref[2 + j, t]), abs=1e-5)
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True) and lp.top[0][0] == t


def test_add_refuses_a_prompt_that_does_not_fit_the_context():
    engine = Engine(tiny_model(ctx=16), letters, EngineConfig(max_batch_size=1))
    with pytest.raises(ValueError, match="context of 16"):
        engine.add("r", list(range(10)), GenParams(max_tokens=7))
    with pytest.raises(ValueError):
        EngineConfig(max_batch_size=0)


def test_a_sampled_stop_token_is_reported_with_its_logprob_but_not_as_text():
    """lm-eval scores `echo` requests by the last generated token's log-prob, even when it is EOS."""
    model = tiny_model()
    first = greedy_without_cache(model, [5, 6, 7], 1)[0]
    engine = Engine(model, letters, EngineConfig(max_batch_size=2))
    engine.add("r", [5, 6, 7], GenParams(max_tokens=1, temperature=0, stop_ids=(first,), logprobs=1))
    events = run_all(engine)[("r", 0)]
    last = events[-1]
    assert last.finish_reason == "stop" and last.token_ids == [] and last.text == ""
    tok, lp = last.stop_token
    assert tok == first
    with torch.no_grad():
        want = float(model(torch.tensor([[5, 6, 7]]))[0, -1].log_softmax(-1)[first])
    assert abs(lp.logprob - want) < 1e-4


def test_tiny_temperature_and_top_p_sample_without_nan():
    model = tiny_model()
    engine = Engine(model, letters, EngineConfig(max_batch_size=4))
    for i, (t, p) in enumerate(((1e-300, 1.0), (1.0, 1e-300), (5e-324, 5e-324), (1e-6, 0.5))):
        engine.add(f"r{i}", [1, 2, 3], GenParams(max_tokens=6, temperature=t, top_p=p))
    out = run_all(engine)
    assert all(evs[-1].finish_reason == "length" and evs[-1].error is None for evs in out.values())
    greedy = greedy_without_cache(model, [1, 2, 3], 6)
    assert [t for ev in out[("r0", 0)] for t in ev.token_ids] == greedy  # below MIN_TEMPERATURE: greedy


def test_a_row_with_non_finite_logits_fails_alone():
    model = tiny_model()
    engine = Engine(model, letters, EngineConfig(max_batch_size=4))
    real = engine.runner.decode

    def nan_for_row_zero(seqs):
        logits = real(seqs).clone()
        for i, s in enumerate(seqs):
            if s.request_id == "bad":
                logits[i] = float("nan")
        return logits

    engine.runner.decode = nan_for_row_zero
    engine.add("bad", [4, 5, 6], GenParams(max_tokens=8, temperature=1.0))
    engine.add("good", [1, 2, 3], GenParams(max_tokens=8, temperature=0))
    out = run_all(engine)
    assert out[("bad", 0)][-1].finish_reason == "error" and "non-finite" in out[("bad", 0)][-1].error
    good = [t for ev in out[("good", 0)] for t in ev.token_ids]
    assert good == greedy_without_cache(model, [1, 2, 3], 8) and out[("good", 0)][-1].finish_reason == "length"
    assert not engine.scheduler.running and len(engine.scheduler.free) == 4


def test_a_batched_forward_failure_is_retried_per_sequence():
    model = tiny_model()
    engine = Engine(model, letters, EngineConfig(max_batch_size=4))
    real = engine.runner.decode

    def fails_with_bad(seqs):
        if any(s.request_id == "bad" for s in seqs):
            raise RuntimeError("device fault for one sequence")
        return real(seqs)

    engine.runner.decode = fails_with_bad
    engine.add("bad", [4, 5, 6], GenParams(max_tokens=5))
    engine.add("good", [1, 2, 3], GenParams(max_tokens=5, temperature=0))
    out = run_all(engine)
    assert out[("bad", 0)][-1].finish_reason == "error"
    assert [t for ev in out[("good", 0)] for t in ev.token_ids] == greedy_without_cache(model, [1, 2, 3], 5)


@pytest.mark.parametrize("max_tokens", [2, 5, 12, 40])
def test_json_mode_always_yields_a_parsable_object(max_tokens):
    import json

    model = tiny_model(ctx=128)
    texts = [chr(32 + i % 95) for i in range(300)]  # a vocabulary of single printable characters
    engine = Engine(model, lambda ids: "".join(texts[i] for i in ids), EngineConfig(max_batch_size=4),
                    json_vocab=lambda: [None if i == 299 else t for i, t in enumerate(texts)])
    for seed in range(4):
        engine.add(f"r{seed}", [1, 2, 3], GenParams(max_tokens=max_tokens, temperature=1.5, seed=seed,
                                                    json_mode=True, stop_ids=(299,)))
    out = run_all(engine)
    for evs in out.values():
        text = "".join(ev.text for ev in evs)
        assert isinstance(json.loads(text), dict), text
        assert sum(len(ev.token_ids) for ev in evs) <= max_tokens


def test_tool_calls_are_parsed_from_hermes_blocks_and_bare_llama_json():
    from diji.serve.protocol import parse_tool_calls

    ids = iter(f"call_{i}" for i in range(10))
    text, calls = parse_tool_calls('ok <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', {"f"},
                                   lambda: next(ids))
    assert text == "ok" and calls[0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    text, calls = parse_tool_calls('{"name": "f", "parameters": {"y": "z"}}', {"f"}, lambda: next(ids))
    assert text is None and calls[0]["function"]["arguments"] == '{"y": "z"}'
    same = '<tool_call>{"name": "g", "arguments": {}}</tool_call>'  # not an offered tool: stays text
    assert parse_tool_calls(same, {"f"}, lambda: next(ids)) == (same, [])
    assert parse_tool_calls("<tool_call>{broken</tool_call>", {"f"}, lambda: next(ids))[1] == []
