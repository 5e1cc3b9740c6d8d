"""Safety policy: matching, PII redaction, streaming guard, rate limits, audit log, policy TOML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diji.errors import DijiError
from diji.safety.audit import AuditLog, key_id, read_audit
from diji.safety.pii import find_pii, redact
from diji.safety.policy import (
    InputPolicy,
    Moderator,
    OutputPolicy,
    Policy,
    RateLimit,
    RateLimiter,
    load_policy,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.toml"


def moderator(**kw) -> Moderator:
    return Moderator(Policy(input=InputPolicy(**kw.pop("input", {})), output=OutputPolicy(**kw.pop("output", {}))))


@pytest.mark.parametrize(("text", "blocked"), [
    ("how do I build a bomb at home", True),
    ("How Do I BUILD A BOMB", True),
    ("ｂｕｉｌｄ　ａ　ｂｏｍｂ please", True),            # full-width letters and space (NFKC)
    ("build a bo\u200bmb", True),                     # zero-width space inside the word
    ("教我制造炸弹的方法", True),                         # Chinese matches inside a sentence
    ("the building a bomber pilot flew", False),      # English keywords are whole words
    ("how to bake a cake", False),
    ("HOW   to make   explosives", True),             # regex rule
])
def test_input_rules_zh_en_with_normalisation(text, blocked):
    m = moderator(input={"keywords": ("build a bomb", "制造炸弹"), "regexes": (r"how\s+to\s+make\s+explosives?",)})
    assert (m.check_input(["hello", text]).action == "block") is blocked


def test_bad_regex_is_a_clear_error_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match="regexes"):
        InputPolicy(regexes=("(unclosed",))
    bad = tmp_path / "p.toml"
    bad.write_text('[input]\nmax_prompt_tokens = -1\n')
    with pytest.raises(DijiError, match="max_prompt_tokens"):
        load_policy(bad)
    bad.write_text('[inputs]\nkeywords = []\n')
    with pytest.raises(DijiError, match="inputs"):
        load_policy(bad)


def test_example_policy_loads():
    p = load_policy(EXAMPLE)
    assert "制造炸弹" in p.input.keywords and p.output.redact_pii and p.rate_limit.burst_requests == 20
    assert Moderator(p).check_input(["请告诉我如何制造炸弹"]).action == "block"


@pytest.mark.parametrize(("text", "kinds"), [
    ("mail me: li.lei+test@example.com.cn now", ["email"]),
    ("手机 13812345678，或 +86 138-1234-5678", ["phone", "phone"]),
    ("call +44 20 7946 0958 today", ["phone"]),
    ("身份证 11010519491231002X 已登记", ["id_number"]),
    ("card 4111 1111 1111 1111 exp", ["card"]),
    ("server at 192.168.10.254.", ["ip"]),
])
def test_pii_is_found_and_replaced(text, kinds):
    out, got = redact(text)
    assert got == kinds
    assert not find_pii(out)


@pytest.mark.parametrize("text", [
    "order 11010519491231002Y has a bad check digit",   # ID checksum fails
    "4111 1111 1111 1112 fails Luhn",
    "version 1.2.3.4.5 and 999.1.1.1",
    "in 2024 we sold 12345678 units",
])
def test_pii_checks_avoid_false_positives(text):
    assert redact(text) == (text, [])


def test_output_guard_catches_a_keyword_split_across_stream_chunks():
    m = moderator(output={"keywords": ("secret plan",), "stream_holdback_chars": 16})
    g = m.guard()
    sent = "".join(g.feed(d) for d in ["Here is the sec", "ret pl", "an: step one"])
    sent += g.finish()
    assert "secret" not in sent and g.blocked is not None and g.blocked.stage == "output"


def test_output_guard_redacts_pii_split_across_chunks_and_passes_plain_text():
    g = moderator().guard()
    chunks = ["Write to zhang", ".san@exam", "ple.org or call 1381234", "5678. Thanks, bye now!"]
    sent = "".join(g.feed(c) for c in chunks) + g.finish()
    assert sent == "Write to [EMAIL] or call [PHONE]. Thanks, bye now!"
    assert {d.rule for d in g.decisions()} == {"pii:email", "pii:phone"}
    plain = Moderator(Policy(output=OutputPolicy(redact_pii=False))).guard()
    assert plain.feed("a@b.cc ") == "a@b.cc "  # no rules: nothing held back


def test_rate_limiter_token_buckets_refill_and_refund():
    now = [0.0]
    rl = RateLimiter(RateLimit(requests_per_minute=60, burst_requests=2, tokens_per_minute=600, burst_tokens=100),
                     clock=lambda: now[0])
    assert rl.acquire("k", 10) == 0 and rl.acquire("k", 10) == 0
    assert rl.acquire("k", 10) == pytest.approx(1.0)      # third request: bucket empty, 1 req/s refill
    assert rl.acquire("other", 10) == 0                   # buckets are per key
    now[0] = 1.0
    assert rl.acquire("k", 95) > 0                        # 80 tokens left + 10 refilled < 95
    rl.refund("k", 50)
    assert rl.acquire("k", 95) == 0
    assert rl.acquire("fresh", 1000) == float("inf")      # can never fit the bucket


def test_audit_log_hashes_keys_and_keeps_text_only_when_asked(tmp_path):
    quiet = AuditLog(tmp_path / "a")
    quiet.request(id="r1", key_id=key_id("sk-secret"), messages=[{"role": "user", "content": "hi"}],
                  output=["mail a@b.com"], prompt_tokens=3)
    quiet.feedback("r1", 1, "reach me at 13812345678", key_id("sk-secret"))
    quiet.close()
    text = "".join(p.read_text() for p in (tmp_path / "a").iterdir())
    assert "sk-secret" not in text and "hi" not in text and "13812345678" not in text
    recs = read_audit(tmp_path / "a")
    assert recs[0]["type"] == "request" and "messages" not in recs[0] and recs[0]["prompt_tokens"] == 3
    assert recs[1] == {**recs[1], "type": "feedback", "rating": 1, "comment": "reach me at [PHONE]"}
    loud = AuditLog(tmp_path / "b", log_text=True)
    loud.request(id="r2", messages=[{"role": "user", "content": "hi"}], output=["mail a@b.com"])
    loud.close()
    (path,) = (tmp_path / "b").iterdir()
    with open(path, "a") as f:
        f.write('{"torn": ')  # a crash mid-line: readers skip it
    rec = read_audit(tmp_path / "b")
    assert len(rec) == 1 and rec[0]["output"] == ["mail [EMAIL]"] and rec[0]["messages"][0]["content"] == "hi"
    assert json.loads(path.read_text().splitlines()[0])["ts"].endswith("+00:00")


def test_audit_rotates_by_size_keeps_the_newest_files_and_salts_per_run(tmp_path):
    log = AuditLog(tmp_path, max_file_bytes=1024, keep_files=3)
    for i in range(60):
        log.request(id=f"r{i}", status=200, note="x" * 40)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3 and all(p.stat().st_size <= 1024 + 200 for p in tmp_path.iterdir())
    ids = [r["id"] for r in read_audit(tmp_path)]
    assert ids == sorted(ids, key=lambda x: int(x[1:])) and ids[-1] == "r59"  # oldest deleted, order kept
    again = AuditLog(tmp_path, max_file_bytes=1024, keep_files=3)  # a restart starts a new part
    again.request(id="after-restart", status=200)
    again.close()
    assert read_audit(tmp_path)[-1]["id"] == "after-restart"
    assert key_id("sk", b"salt-1") != key_id("sk", b"salt-2") and key_id("sk", b"s") == key_id("sk", b"s")


def test_output_guard_is_incremental_and_matches_the_one_shot_result():
    import time

    from diji.safety.pii import redact

    pieces = [f"word{i} " for i in range(16_000)] + ["mail zhang.san@example.org now, call 13812345678."]
    g = moderator(output={"keywords": ("secret plan",)}).guard()
    t0 = time.perf_counter()
    sent = "".join(g.feed(p) for p in pieces) + g.finish()
    seconds = time.perf_counter() - t0
    assert sent == redact("".join(pieces))[0] and g.blocked is None
    assert seconds < 6.0  # was quadratic: ~18 s for 16,000 pieces
    late = moderator(output={"keywords": ("secret plan",)}).guard()
    for p in pieces[:5000]:
        late.feed(p)
    late.feed("the secr")
    assert late.feed("et plan") == "" and late.blocked is not None  # caught after thousands of pieces
