"""Distillation by rejection sampling: a teacher answers the user's problems, a verifier keeps the right
replies, and the kept replies — with their `<think>` trace — become SFT data (DeepSeek-AI 2025,
DeepSeek-R1 §2.3.3: "for each prompt, we sample multiple responses and retain only the correct ones";
its distilled small models are plain SFT on such data).

    diji data distill --teacher URL|CKPT --prompts FILE --samples K --verifier math --out sft.jsonl

- **Teacher**: any OpenAI-compatible chat endpoint (a `diji serve`, vLLM, …; `POST /v1/chat/completions`
  with `n = K`) or a local checkpoint directory. A reply's `reasoning_content` (what vLLM's reasoning
  parsers return separately) is put back in front of the answer as `<think>…</think>`.
- **Prompts** are a `math:FILE` task (`diji.eval.generative.MathFileTask`): GSM8K/MATH-style JSONL with
  the reference answers the verifier checks against, so distillation, GRPO and evaluation agree on
  what "correct" means. `--verifier` is `math` or a plug-in `module:function`.
- **Output** is `{"messages": [...]}` JSONL that `diji train sft` reads unchanged, plus a `distill` key
  (prompt id, sample index, reward) that SFT ignores.

Crash safety (the run resumes after SIGKILL with no prompt lost or duplicated): one writer appends each
prompt's kept records in a single write and fsyncs, then appends the prompt to the ledger
`OUT.done.jsonl` (also prompts with nothing kept) and fsyncs. On restart the done set is every prompt in
the ledger or in the output; a torn last line, or a last prompt whose records are not all there (each
record says how many it belongs with), is cut off first. Prompts are identified by a hash of their
content, not their line, so the same file or an extended one resumes correctly.

Requests run concurrently (`--concurrency` threads) and are retried with exponential backoff on
connection errors, timeouts, 408/429 and 5xx; a prompt that still fails is left out of the ledger (a
rerun retries it) and the command exits non-zero after saying how many. Under torchrun only rank 0
works (the others check the inputs and exit), so the result is the single-process one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from diji.errors import DijiError

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying: the server was busy or failed, not the request."""
PROMPT_STATUS = frozenset({400, 413, 422})
"""Statuses that condemn one prompt (too long, …), not the run: the prompt is recorded with its error."""


@dataclass(frozen=True)
class DistillConfig:
    teacher: str
    """An OpenAI-compatible base URL (http[s]://host[:port][/v1]) or a local checkpoint directory."""
    prompts: str
    """JSONL of problems with reference answers (question/answer, problem/solution, …)."""
    out: str
    """Output JSONL of verified conversations; appended to (and resumed) if it exists."""
    samples: int = 4
    """Replies sampled per prompt (K)."""
    verifier: str = "math"
    """`math` (final answer equals the reference) or a plug-in `module:function` / `file.py:function`."""
    keep: int = 0
    """Verified replies kept per prompt (distinct texts, in sample order); 0 = all of them."""
    require_think: bool = False
    """Keep only verified replies that carry a non-empty <think>…</think> trace."""
    max_tokens: int = 1024
    """Generation budget per reply."""
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    """Base of the per-prompt seed sent with each request (same prompt, same seed, on every run)."""
    model: str = ""
    """Model name sent to the endpoint; "" = the first one `GET /v1/models` lists."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (sent as a Bearer token when set)."""
    concurrency: int = 4
    """Requests in flight at once (an endpoint teacher; a local checkpoint runs one at a time)."""
    retries: int = 4
    """Retries per prompt after the first attempt (connection errors, timeouts, 408/429/5xx)."""
    timeout: float = 300.0
    """Seconds per request."""

    def __post_init__(self) -> None:
        for name in ("samples", "max_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise DijiError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.keep < 0 or self.retries < 0:
            raise DijiError("--keep and --retries must be >= 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise DijiError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.samples > 1 and self.temperature == 0:
            raise DijiError("--samples > 1 needs --temperature > 0 (greedy replies are all the same)")


class TeacherError(Exception):
    """A request that failed for good; `fatal` ones (authentication, unknown model) stop the run."""

    def __init__(self, message: str, fatal: bool = False, prompt_error: bool = False) -> None:
        super().__init__(message)
        self.fatal, self.prompt_error = fatal, prompt_error


class Teacher(Protocol):
    concurrency: int

    def sample(self, messages: list[dict[str, str]], k: int, seed: int) -> list[str]: ...


def join_reasoning(message: dict[str, Any]) -> str:
    """The reply text with its reasoning: `content`, preceded by `<think>reasoning</think>` when the
    endpoint returned the reasoning separately (`reasoning_content`, or `reasoning`)."""
    from diji.data.chat import THINK_CLOSE, THINK_OPEN

    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if isinstance(reasoning, str) and reasoning.strip() and THINK_OPEN not in content:
        return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{content.lstrip()}"
    return content


class EndpointTeacher:
    """An OpenAI-compatible chat endpoint, spoken to with httpx (the `distill` extra)."""

    def __init__(self, url: str, cfg: DistillConfig) -> None:
        try:
            import httpx
        except ImportError:
            raise DijiError("an endpoint teacher needs httpx: pip install 'diji[distill]'") from None
        self.httpx = httpx
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.cfg = cfg
        self.concurrency = cfg.concurrency
        key = os.environ.get(cfg.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=cfg.timeout,
                                   limits=httpx.Limits(max_connections=cfg.concurrency))
        self.model = cfg.model or self._first_model()

    def _first_model(self) -> str:
        body = self._request("GET", "/models", None)
        models = body.get("data") or []
        if not models or not isinstance(models[0], dict) or not models[0].get("id"):
            raise DijiError(f"{self.base}/models lists no model; pass --model NAME")
        return str(models[0]["id"])

    def _request(self, method: str, path: str, payload: dict | None) -> dict:
        """One call with retries; raises TeacherError when it keeps failing or is refused."""
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                # Exponential backoff with jitter, so concurrent workers do not retry in lockstep.
                time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random()))
            try:
                r = self.client.request(method, self.base + path, json=payload)
            except self.httpx.HTTPError as e:  # connection refused/reset, timeouts, protocol errors
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 200:
                try:
                    return r.json()
                except ValueError:
                    last = "the reply is not JSON"
                    continue
            detail = _error_message(r)
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code} {detail}"
                continue
            if r.status_code in PROMPT_STATUS:
                raise TeacherError(f"HTTP {r.status_code} {detail}", prompt_error=True)
            raise TeacherError(f"{method} {self.base}{path}: HTTP {r.status_code} {detail}", fatal=True)
        raise TeacherError(f"gave up after {self.cfg.retries + 1} attempts: {last}")

    def sample(self, messages: list[dict[str, str]], k: int, seed: int) -> list[str]:
        payload = {"model": self.model, "messages": messages, "n": k, "max_tokens": self.cfg.max_tokens,
                   "temperature": self.cfg.temperature, "top_p": self.cfg.top_p, "seed": seed}
        body = self._request("POST", "/chat/completions", payload)
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        return [join_reasoning(c.get("message") or {}) for c in choices]

    def close(self) -> None:
        self.client.close()


class CheckpointTeacher:
    """A local checkpoint sampled with the evaluation harness's generator (one prompt at a time)."""

    concurrency = 1

    def __init__(self, path: str, cfg: DistillConfig) -> None:
        from diji.eval.lm import LanguageModel

        self.lm = LanguageModel.from_checkpoint(path, device="auto")
        self.cfg = cfg

    def sample(self, messages: list[dict[str, str]], k: int, seed: int) -> list[str]:
        from diji.data.chat import render_prompt

        tok = self.lm.tokenizer
        ids = render_prompt(messages, tok)
        return self.lm.generate([ids], self.cfg.max_tokens, stop_ids=tok.stop_ids, temperature=self.cfg.temperature,
                                top_p=self.cfg.top_p, samples=k, seed=seed)[0]

    def close(self) -> None:
        return None


def make_teacher(cfg: DistillConfig) -> EndpointTeacher | CheckpointTeacher:
    if cfg.teacher.startswith(("http://", "https://")):
        return EndpointTeacher(cfg.teacher, cfg)
    if Path(cfg.teacher).is_dir():
        return CheckpointTeacher(cfg.teacher, cfg)
    raise DijiError(f"--teacher {cfg.teacher}: give an http(s):// URL of an OpenAI-compatible server or a "
                    "checkpoint directory")


def _error_message(r: Any) -> str:
    try:
        err = r.json().get("error", {})
        return str(err.get("message", err))[:200]
    except (ValueError, AttributeError):
        return r.text[:200]


def prompt_id(messages: tuple[dict[str, str], ...], answer: str) -> str:
    """A prompt's identity across runs: its content, not its line number."""
    text = json.dumps([list(messages), answer], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


# ---- the append-only output and the ledger --------------------------------------------------------
def _complete_lines(path: Path) -> Iterator[tuple[int, int, dict]]:
    """(start offset, end offset, object) of every complete JSON line, stopping at a torn one."""
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        end = data.find(b"\n", at)
        if end < 0:
            return
        try:
            obj = json.loads(data[at:end])
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        yield at, end + 1, obj
        at = end + 1


def recover(out: Path, ledger: Path) -> set[str]:
    """Cut a torn tail off both files and return the ids of the prompts already done."""
    done: set[str] = set()
    if out.exists():
        keep, group_start, group_id, group_seen, group_of = 0, 0, None, 0, 0
        for start, end, obj in _complete_lines(out):
            meta = obj.get("distill") or {}
            pid = meta.get("prompt")
            if pid != group_id:
                group_start, group_id, group_seen, group_of = start, pid, 0, int(meta.get("of", 1))
            group_seen += 1
            if pid is not None:
                done.add(pid)
            keep = end
        if group_id is not None and group_seen < group_of:  # the last prompt's records are not all there
            done.discard(group_id)
            keep = group_start
        _truncate(out, keep)
    if ledger.exists():
        keep = 0
        for _, end, obj in _complete_lines(ledger):
            if isinstance(obj.get("prompt"), str):
                done.add(obj["prompt"])
            keep = end
        _truncate(ledger, keep)
    return done


def _truncate(path: Path, size: int) -> None:
    if size != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())


def _append(fd: int, lines: list[dict]) -> None:
    """One write of whole lines, then fsync: after a kill the file holds all of them or a torn tail."""
    if not lines:
        return
    data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode("utf-8")
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


@dataclass
class DistillStats:
    prompts: int = 0
    """Usable prompts in the file (distinct)."""
    skipped_items: int = 0
    """Lines without a usable reference answer (not sampled)."""
    duplicates: int = 0
    """Lines repeating an earlier prompt (sampled once)."""
    done_before: int = 0
    """Prompts already done by an earlier run of the same output."""
    processed: int = 0
    replies: int = 0
    verified: int = 0
    kept: int = 0
    """Records written this run."""
    prompts_kept: int = 0
    """Prompts with at least one record written this run."""
    with_think: int = 0
    """Kept records that carry a <think> trace."""
    prompt_errors: int = 0
    failed: int = 0
    """Prompts that kept failing (not in the ledger: a rerun retries them)."""
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["errors"] = self.errors[:5]
        return d


def select(task: Any, example: Any, replies: list[str], cfg: DistillConfig) -> list[tuple[int, str, float]]:
    """(sample index, reply, reward) of the verified replies to keep: distinct, in sample order."""
    from diji.eval.verifiers import split_reasoning

    out, seen = [], set()
    for j, text in enumerate(replies):
        if not task.grade(example, text).correct or text in seen:
            continue
        if cfg.require_think and not split_reasoning(text)[0].strip():
            continue
        seen.add(text)
        out.append((j, text, float(task.reward(example, text))))
        if cfg.keep and len(out) >= cfg.keep:
            break
    return out


def env_rank() -> int:
    """This process's rank under torchrun (0 outside it)."""
    from diji.compute.distributed import env_world_size

    return int(os.environ.get("RANK", "0")) if env_world_size() > 1 else 0


def distill(cfg: DistillConfig, progress: bool = True, teacher: Teacher | None = None) -> DistillStats:
    """Run (or resume) a distillation; returns what happened. `teacher` overrides `cfg.teacher` (tests)."""
    from tqdm import tqdm

    from diji.eval.generative import MathFileTask

    t0 = time.perf_counter()
    task = MathFileTask(cfg.prompts, cfg.verifier)
    stats = DistillStats(skipped_items=task.skipped)
    todo_all: dict[str, Any] = {}
    for ex in task.examples("train", 0):
        pid = prompt_id(ex.messages, ex.answer)
        if pid in todo_all:
            stats.duplicates += 1
        todo_all.setdefault(pid, ex)
    stats.prompts = len(todo_all)
    if env_rank() != 0:
        # Under torchrun the ranks would append to one file; rank 0 does the whole run, as one process does.
        return stats
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ledger = out.with_name(out.name + ".done.jsonl")
    done = recover(out, ledger)
    stats.done_before = len(done & set(todo_all))
    todo = [(pid, ex) for pid, ex in todo_all.items() if pid not in done]
    if not todo:
        stats.seconds = time.perf_counter() - t0
        return stats
    teacher = teacher or make_teacher(cfg)
    out_fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    led_fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    bar = tqdm(total=len(todo), desc="distill", unit="prompt", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    def work(pid: str, ex: Any) -> list[str]:
        seed = (int(pid[:12], 16) + cfg.seed * 1_000_003) % 2**31  # small: local samplers multiply it
        return teacher.sample([dict(m) for m in ex.messages], cfg.samples, seed)

    def finish(pid: str, ex: Any, fut: Future) -> None:
        try:
            replies = fut.result()
        except TeacherError as e:
            if e.fatal:
                raise DijiError(f"teacher {cfg.teacher}: {e}") from None
            if not e.prompt_error:
                stats.failed += 1
                stats.errors.append(f"{ex.id}: {e}")
                return
            stats.prompt_errors += 1
            _append(led_fd, [{"prompt": pid, "line": ex.meta.get("line"), "kept": 0, "error": str(e)}])
            return
        chosen = select(task, ex, replies, cfg)
        records = [{"messages": [*[dict(m) for m in ex.messages], {"role": "assistant", "content": text}],
                    "distill": {"prompt": pid, "line": ex.meta.get("line"), "sample": j, "of": len(chosen),
                                "reward": reward}}
                   for j, text, reward in chosen]
        _append(out_fd, records)  # the records first: a kill before the ledger line still marks it done
        _append(led_fd, [{"prompt": pid, "line": ex.meta.get("line"), "sampled": len(replies),
                          "kept": len(records)}])
        stats.processed += 1
        stats.replies += len(replies)
        stats.verified += sum(task.grade(ex, t).correct for t in replies)
        stats.kept += len(records)
        stats.prompts_kept += bool(records)
        stats.with_think += sum("<think>" in r["messages"][-1]["content"] for r in records)

    try:
        with ThreadPoolExecutor(max_workers=teacher.concurrency) as pool:
            pending: dict[Future, tuple[str, Any]] = {}
            queue = iter(todo)
            window = 2 * teacher.concurrency  # bounded, so a huge prompts file is not all in flight
            try:
                while True:
                    while len(pending) < window:
                        nxt = next(queue, None)
                        if nxt is None:
                            break
                        pending[pool.submit(work, *nxt)] = nxt
                    if not pending:
                        break
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        pid, ex = pending.pop(fut)
                        finish(pid, ex, fut)  # only this thread writes
                        bar.update(1)
                        bar.set_postfix(kept=stats.kept, failed=stats.failed, refresh=False)
            finally:
                for fut in pending:
                    fut.cancel()
    finally:
        bar.close()
        os.close(out_fd)
        os.close(led_fd)
        close = getattr(teacher, "close", None)
        if close is not None:
            close()
    stats.seconds = time.perf_counter() - t0
    return stats
