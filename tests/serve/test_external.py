"""The server against tools nobody on the team wrote: lm-evaluation-harness and a real browser.

Needs `pip install "lm-eval[api]" playwright` and Debian's `chromium` (never `playwright install`,
which downloads a browser). Each test skips with the reason when its tool is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from servekit import MODEL_NAME, checkpoint, one_torch_thread, start_server  # noqa: F401 (fixtures)

from diji.data.tokenizer import Tokenizer
from diji.safety.audit import read_audit
from diji.safety.policy import AuditPolicy, OutputPolicy, Policy
from diji.serve.engine import Engine, EngineConfig, GenParams
from diji.train.checkpoint import load_checkpoint

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("audit-ext")


@pytest.fixture(scope="module")
def server(checkpoint, audit_dir):  # noqa: F811
    # No output redaction: with nothing held back, streamed text reaches the page token by token.
    policy = Policy(output=OutputPolicy(redact_pii=False), audit=AuditPolicy(dir=str(audit_dir)))
    srv = start_server(checkpoint, policy, max_batch_size=8)
    yield srv
    srv.stop()


# ---- lm-evaluation-harness ---------------------------------------------------------------------------
DOCS = [
    {"q": "the model reads", "choices": [" tokens and learns", " 模型 读取", " shards ; training"], "gold": 0},
    {"q": "data flows through", "choices": [" filters into shards", " the next one", " 预测 下"], "gold": 0},
    {"q": "training resumes after", "choices": [" a crash .", " learns to", " 数据 并"], "gold": 0},
    {"q": "模型 读取", "choices": [" 数据 并 学习", " the model", " into"], "gold": 0},
]


def write_tasks(root: Path) -> Path:
    """Two offline tasks: 3-way multiple choice (log-likelihoods) and greedy generation until a newline."""
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS), encoding="utf-8")
    common = f"""
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {json.dumps(str(data))}
        test_split: test
    """
    (root / "diji_ll.yaml").write_text(textwrap.dedent(f"""
        task: diji_ll
        {textwrap.dedent(common).strip().replace(chr(10), chr(10) + '        ')}
        output_type: multiple_choice
        doc_to_text: "{{{{q}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: gold
        metric_list:
          - metric: acc
    """))
    for name in ("diji_gen", "diji_chat"):
        (root / f"{name}.yaml").write_text(textwrap.dedent(f"""
            task: {name}
            {textwrap.dedent(common).strip().replace(chr(10), chr(10) + '            ')}
            output_type: generate_until
            doc_to_text: "{{{{q}}}}"
            doc_to_target: "{{{{choices[gold]}}}}"
            generation_kwargs:
              until: ["\\n"]
              max_gen_toks: 6
              do_sample: false
              temperature: 0
            metric_list:
              - metric: exact_match
        """))
    return root


def run_lm_eval(tmp: Path, model: str, model_args: str, tasks: str, extra: list[str]) -> dict[str, list[dict]]:
    out = tmp / f"out-{model}"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OPENAI_API_KEY": "unused", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", tasks,
           "--include_path", str(tmp), "--output_path", str(out), "--log_samples", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    samples: dict[str, list[dict]] = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return samples


def engine_loglikelihood(ckpt: Path, context: str, continuation: str) -> tuple[float, bool]:
    """The engine's own score, tokenised the way the harness does (trailing context spaces move over)."""
    loaded = load_checkpoint(ckpt)
    tok = Tokenizer.from_file(loaded.tokenizer_file)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    n = len(whole) - len(ctx)
    engine = Engine(loaded.model, tok.decode, EngineConfig(max_batch_size=1))
    engine.add("r", whole, GenParams(max_tokens=0, prompt_logprobs=1))
    (ev,) = engine.step()
    entries = ev.prompt_logprobs[-n:]
    return sum(e.logprob for e in entries), all(e.top[0][0] == e.token_id for e in entries)


@pytest.mark.external
@pytest.mark.slow
def test_lm_eval_local_completions_loglikelihood_and_generate(server, checkpoint, tmp_path):  # noqa: F811
    pytest.importorskip("lm_eval")
    write_tasks(tmp_path)
    args = (f"base_url={server.url}/v1/completions,model={MODEL_NAME},tokenizer_backend=remote,max_length=256,"
            "num_concurrent=2,max_retries=1,timeout=120")
    samples = run_lm_eval(tmp_path, "local-completions", args, "diji_ll,diji_gen", ["--batch_size", "4"])
    ll = samples["diji_ll"]
    assert len(ll) == len(DOCS)
    for s in ll:
        for (ll_value, greedy), arg in zip((r[0] for r in s["resps"]), s["arguments"].values(), strict=True):
            want, want_greedy = engine_loglikelihood(checkpoint, arg["arg_0"], arg["arg_1"])
            # The samples file stores is_greedy as the string "True"/"False".
            assert float(ll_value) == pytest.approx(want, abs=1e-4) and (str(greedy) == "True") == want_greedy
    gen = samples["diji_gen"]
    assert len(gen) == len(DOCS)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for s in gen:
            prompt = s["arguments"]["gen_args_0"]["arg_0"]
            ours = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6, "temperature": 0,
                                                   "stop": ["\n"]}).json()["choices"][0]["text"]
            assert s["resps"][0][0] == ours


@pytest.mark.external
@pytest.mark.slow
def test_lm_eval_local_chat_completions_generate(server, tmp_path):
    pytest.importorskip("lm_eval")
    write_tasks(tmp_path)
    args = f"base_url={server.url}/v1/chat/completions,model={MODEL_NAME},max_retries=1,timeout=120"
    samples = run_lm_eval(tmp_path, "local-chat-completions", args, "diji_chat", ["--apply_chat_template"])
    chat = samples["diji_chat"]
    assert len(chat) == len(DOCS)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for s in chat:
            arg = s["arguments"]["gen_args_0"]["arg_0"]  # the samples file keeps the chat as a JSON string
            messages = json.loads(arg[0] if isinstance(arg, list) else arg)
            ours = c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "temperature": 0,
                                                        "stop": ["\n"]}).json()["choices"][0]["message"]["content"]
            assert s["resps"][0][0] == ours


# ---- the chat page in a real browser ------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


def wait_idle(server, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.server.engine.num_requests == 0 and server.server.engine.num_running == 0:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.external
def test_chat_page_streams_stops_and_rates(server, browser, audit_dir):
    # bypass_csp: the page forbids eval, which Playwright's wait_for_function polling itself uses.
    page = browser.new_page(bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions") else None)
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")

    # A short answer: streamed into the page, then rated.
    page.fill("#system", "You are terse.")
    page.fill("#max_tokens", "8")
    page.eval_on_selector("#temperature", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    page.fill("#input", "hi")
    page.press("#input", "Enter")
    page.wait_for_selector(".assistant .meta button")
    assert bodies[0]["stream"] is True and bodies[0]["temperature"] == 0
    assert bodies[0]["messages"][0] == {"role": "system", "content": "You are terse."}
    page.click(".assistant .meta button[data-rating='1']")
    page.wait_for_selector(".assistant .meta button.chosen")
    assert any(r.get("type") == "feedback" and r["rating"] == 1 for r in read_audit(audit_dir))

    # A long answer, stopped while it streams: the page says so and the server frees the request.
    # The tiny model writes 150 tokens faster than a click lands, so each decode step is slowed down.
    runner = server.server.engine.engine.runner
    fast_decode = runner.decode

    def slow_decode(seqs):
        time.sleep(0.2)
        return fast_decode(seqs)

    runner.decode = slow_decode
    page.fill("#max_tokens", "150")
    page.fill("#input", "tell me more")
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelectorAll('.assistant .answer').length == 2 && "
                           "document.querySelectorAll('.assistant .answer')[1].textContent.length > 0")
    page.click("#stop")
    page.wait_for_function("document.getElementById('stop').disabled")
    assert page.text_content(".assistant:nth-of-type(4) .finish") == "stopped"
    assert wait_idle(server)
    runner.decode = fast_decode
    assert len(bodies[1]["messages"]) == 4  # system, first question, first answer, second question

    # Reasoning inside <think> is shown collapsed, apart from the answer.
    page.evaluate("() => { const d = document.createElement('div'); d.id = 't'; document.body.appendChild(d);"
                  " renderReply(d, '<think>step one</think>The answer.'); }")
    assert page.eval_on_selector("#t details", "el => el.open") is False
    assert page.text_content("#t .think") == "step one" and page.text_content("#t .answer") == "The answer."
    assert not errors, errors
    page.close()
