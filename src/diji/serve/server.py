"""The OpenAI-compatible HTTP server (FastAPI + uvicorn): a thin layer over `AsyncEngine`.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (SSE with `stream`),
POST /v1/feedback, GET /health, GET /metrics (Prometheus), GET / (the chat page), and the tokenizer
endpoints GET /tokenizer_info, POST /tokenize, POST /detokenize in vLLM's format, which
lm-evaluation-harness uses so that clients need no tokenizer files.

Every error is {"error": {"message", "type", "param", "code"}}: 400 bad JSON / parameters / prompt too
long / unsupported field, 401 missing or wrong key (compared in constant time), 404 unknown model, path
or response id, 408 body not received in time, 413 oversize body, 415 not JSON, 421 unknown Host, 429
rate limited, 503 queue full or engine stopped (both with Retry-After). A client that disconnects has
its request aborted and its cache slot freed; that is not an error (counted as 499, no traceback).

Hardening, all in one ASGI wrapper in front of the routes (`_Gate`): the Host header must name this
server (DNS-rebinding defence; loopback names by default when bound to loopback), the API key is checked
for every path but /health, POST bodies must be JSON, CORS answers only configured origins, and every
request is counted in /metrics and written to the audit log with the status the client really got.
"""

import asyncio
import base64
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from diji.data.chat import render, render_prompt
from diji.data.tokenizer import Tokenizer
from diji.errors import DijiError
from diji.safety.audit import AuditLog, key_id, new_salt
from diji.safety.policy import Decision, Moderator, Policy, RateLimit, RateLimiter
from diji.serve import protocol as P
from diji.serve.engine import AsyncEngine, Engine, EngineConfig, EngineDead, Event, GenParams
from diji.serve.json_constraint import token_texts

log = logging.getLogger(__name__)

# nginx's status for "client closed the request": never seen by the client, but counted in metrics.
CLIENT_CLOSED = 499
LOOPBACK = ("127.0.0.1", "localhost", "::1")
JSON_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/feedback", "/tokenize", "/detokenize"})
AUDIT_NAMES = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/feedback": "feedback",
               "/tokenize": "tokenize", "/detokenize": "detokenize", "/tokenizer_info": "tokenizer_info",
               "/v1/models": "models"}


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 exposes the server to the network (use an API key then)."""
    port: int = 8000
    """TCP port; 0 picks a free one."""
    api_key: str = ""
    """When set, every path except /health needs `Authorization: Bearer <api_key>` (or Basic auth with
    the key as password, which browsers prompt for on the chat page)."""
    api_keys: tuple[str, ...] = ()
    """More keys accepted like `api_key` (one per client: feedback and rate limits are per key)."""
    metrics_key: str = ""
    """A second key accepted on /metrics only, for a scraper that must not be able to generate."""
    model_name: str = ""
    """Name clients pass as `model`; empty means the checkpoint directory's name."""
    max_body_bytes: int = 4 << 20
    """Largest request body accepted; bigger ones get 413."""
    body_timeout_s: float = 10.0
    """A request body not fully received in this many seconds gets 408 (slow-body clients)."""
    request_timeout_s: float = 600.0
    """A generation still unfinished after this many seconds is ended with 504."""
    max_connections: int = 256
    """Concurrent connections and requests; beyond it uvicorn answers 503 at once."""
    max_seqs_per_request: int = 64
    """Most sequences one request may start (prompts × n)."""
    max_queue: int = 256
    """Most sequences waiting for a cache slot; a request that would exceed it gets 503 + Retry-After."""
    max_stop_chars: int = 256
    """Longest stop string accepted."""
    offload_bytes: int = 32 << 10
    """Bodies larger than this are parsed, tokenised and moderated on a worker thread, not the event loop."""
    default_max_tokens: int = 512
    """Chat `max_tokens` when the client gives none (further capped by the context left)."""
    docs: bool = False
    """Serve /docs and /openapi.json (behind the key when there is one)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host header values accepted (without port); empty: the loopback names when listening on loopback,
    else any (set it when exposing the server: a DNS-rebinding page sends its own host name)."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser; empty: none (same-origin only)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Batching limits of the engine."""

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("max_body_bytes", "default_max_tokens", "max_connections", "max_seqs_per_request",
                     "max_queue", "max_stop_chars", "offload_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("body_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive seconds, got {getattr(self, name)}")


def _fastapi():
    try:
        import fastapi
        import starlette  # noqa: F401
    except ImportError as e:
        raise DijiError("serving needs fastapi and uvicorn: pip install 'diji[serve]'") from e
    return fastapi


@dataclass
class _Choice:
    index: int
    prompt: list[int]
    guard: Any
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list | None = None
    finish_reason: str | None = None
    stop_token: tuple | None = None
    first_time: float = 0.0
    last_time: float = 0.0


class _Gone(Exception):
    """The client went away while we read its body: nobody to answer, nothing to log."""


def _encode_prompt(tok: Tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """A completion prompt is the caller's own raw text (no turn of anyone else's to forge), so special
    token strings in it are the special tokens, as in vLLM; chat messages never get this (render()).
    BOS comes first where the tokenizer adds one (Llama 3), unless the caller asks for no special tokens."""
    ids = tok.encode(text, allow_special=True)
    bos = tok.bos_id
    if add_special_tokens and tok.add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def _render(messages: list[dict], tok: Tokenizer, add_generation_prompt: bool,
            tools: list[dict] | None = None) -> list[int]:
    """The checkpoint's chat template; a template that refuses the conversation is the client's 400."""
    try:
        kwargs = {"tools": tools} if tools else None
        if add_generation_prompt:  # the usual case: no loss mask to compute
            return render_prompt(messages, tok, template_kwargs=kwargs)
        return render(messages, tok, template_kwargs=kwargs)[0]
    except ValueError as e:
        raise P.ApiError(400, str(e)[:500], param="messages", code="invalid_value") from None


class Server:
    """Everything a request handler needs, passed explicitly (no globals)."""

    # (This module has no `from __future__ import annotations`: FastAPI resolves a handler's parameter
    # annotations at runtime, and `fastapi.Request` is imported lazily inside build_app.)

    MAX_REMEMBERED = 100_000

    def __init__(self, model, tokenizer: Tokenizer, cfg: ServeConfig, policy: Policy | None = None,
                 model_name: str = "diji") -> None:
        from diji.observe.prometheus import ServeMetrics

        self.cfg, self.tok = cfg, tokenizer
        self.policy = policy or Policy()
        self.model_name = cfg.model_name or model_name
        self.created = int(time.time())
        self.moderator = Moderator(self.policy)
        self.limiter = RateLimiter(self.policy.rate_limit)
        fb = self.policy.rate_limit.feedback_per_minute
        self.feedback_limiter = RateLimiter(RateLimit(requests_per_minute=fb, burst_requests=int(fb)))
        a = self.policy.audit
        self.audit = AuditLog(a.dir or None, a.log_text, a.max_file_bytes, a.keep_files)
        self.salt = new_salt()  # per run: key ids in the audit log cannot be linked across runs
        self.metrics = ServeMetrics()
        self.vocab_size = model.config.vocab_size
        self.chat_template = tokenizer.chat_template or ""
        self.template_has_tools = "tools" in self.chat_template
        self._token_str_cache: dict[int, str] = {}
        self._responses: OrderedDict[str, str] = OrderedDict()  # response id → the caller who got it
        self._responses_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="diji-cpu")
        vocab = self.vocab_size
        engine = Engine(model, tokenizer.decode, cfg.engine,
                        json_vocab=lambda: token_texts(tokenizer.decode, vocab, tokenizer.is_special))
        self.max_model_len = engine.max_model_len
        self.engine = AsyncEngine(engine, on_step=self._on_step)

    # ---- helpers ----------------------------------------------------------------------------------
    def _on_step(self, kind: str, batch: int, seconds: float) -> None:
        self.metrics.step_seconds.labels(kind).observe(seconds)
        self.metrics.queue_depth.set(self.engine.num_waiting)
        self.metrics.running.set(self.engine.num_running)

    async def cpu(self, size: int, fn, *args):
        """Run `fn` on a worker thread when the input is large, so that the event loop keeps answering."""
        if size <= self.cfg.offload_bytes:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def token_str(self, tid: int) -> str:
        s = self._token_str_cache.get(tid)
        if s is None:
            s = self._token_str_cache[tid] = self.tok.decode([tid])
        return s

    def caller(self, headers: dict[str, str], client_host: str, path: str) -> str | None:
        """The caller's id for rate limits, audit and feedback (salted hash of the key, or without keys
        of the client address); None when a key is required and not given."""
        keys = [k for k in (self.cfg.api_key, *self.cfg.api_keys) if k]
        if not keys:
            return key_id("addr:" + client_host, self.salt)
        given = _credential(headers.get("authorization", ""))
        if given is not None:
            # hmac.compare_digest takes time independent of where the strings differ (no timing oracle);
            # every key is compared, so the time does not tell which one matched either.
            hits = [k for k in keys if hmac.compare_digest(given.encode(), k.encode())]
            if hits:
                return key_id(hits[0], self.salt)
        if (path == "/metrics" and self.cfg.metrics_key and given is not None
                and hmac.compare_digest(given.encode(), self.cfg.metrics_key.encode())):
            return key_id("metrics:" + self.cfg.metrics_key, self.salt)
        return None

    def host_allowed(self, host: str) -> bool:
        name = host.strip().lower()
        if name.startswith("["):  # [::1]:8000
            name = name[1 : name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        allowed = self.cfg.allowed_hosts or (LOOPBACK if self.cfg.host in LOOPBACK else ())
        return not allowed or name in allowed or "*" in allowed

    def remember(self, rid: str, who: str) -> None:
        with self._responses_lock:
            self._responses[rid] = who
            while len(self._responses) > self.MAX_REMEMBERED:
                self._responses.popitem(last=False)

    def owner(self, rid: str) -> str | None:
        with self._responses_lock:
            return self._responses.get(rid)

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and name != self.model_name:
            raise P.ApiError(404, f"model {str(name)[:100]!r} does not exist; this server serves {self.model_name!r}",
                             param="model", code="model_not_found")

    def rate_limit(self, who: str, tokens: int, info: dict) -> None:
        wait = self.limiter.acquire(who, tokens)
        if wait:
            self.metrics.rate_limited.inc()
            info["decisions"] = [{"stage": "input", "action": "rate_limit", "rule": "token_bucket"}]
            retry = "never (the request is larger than the bucket)" if wait == float("inf") else f"{wait:.1f} s"
            err = P.ApiError(429, f"rate limit exceeded; retry after {retry}", code="rate_limit_exceeded",
                             type_="rate_limit_error")
            err.retry_after = None if wait == float("inf") else wait
            raise err

    def check_length(self, prompt: list[int], max_tokens: int) -> None:
        limit = self.policy.input.max_prompt_tokens
        if limit and len(prompt) > limit:
            raise P.ApiError(400, f"prompt has {len(prompt)} tokens; this server's policy allows {limit}",
                             param="prompt", code="prompt_too_long")
        if len(prompt) + max_tokens > self.max_model_len:
            raise P.ApiError(400, f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the "
                             f"model's context of {self.max_model_len} tokens", param="max_tokens",
                             code="context_length_exceeded")

    def check_load(self, sequences: int, samp: P.Sampling, max_tokens: int) -> None:
        """Per-request and queue limits, checked before anything is submitted."""
        if sequences > self.cfg.max_seqs_per_request:
            raise P.ApiError(400, f"this request asks for {sequences} sequences (prompts × n); this server "
                             f"allows {self.cfg.max_seqs_per_request} per request", param="n",
                             code="too_many_sequences")
        if samp.json_mode and max_tokens < 2:
            raise P.ApiError(400, "response_format json_object needs max_tokens >= 2 (the reply is at least '{}')",
                             param="max_tokens")
        if not self.engine.alive:
            raise _unavailable()
        waiting = self.engine.num_waiting
        if waiting + sequences > self.cfg.max_queue:
            err = P.ApiError(503, f"the server is busy ({waiting} sequences waiting); retry later",
                             type_="server_error", code="server_overloaded")
            err.retry_after = 1 + waiting / max(1, self.cfg.engine.max_batch_size)
            self.metrics.overloaded.inc()
            raise err

    # ---- the shared generation path --------------------------------------------------------------
    async def run(self, rid: str, prompts: list[list[int]], params: GenParams, n: int, arrived: float):
        """Submit prompts and yield (choice, new_text) as text becomes final; choices finish in place."""
        q: asyncio.Queue = asyncio.Queue()
        choices = [_Choice(pi * n + i, p, self.moderator.guard()) for pi, p in enumerate(prompts) for i in range(n)]
        sub_ids = [f"{rid}/{pi}" for pi in range(len(prompts))]
        slot_of = {sid: k for k, sid in enumerate(sub_ids)}
        submitted = []
        open_ = len(choices)
        first = True
        deadline = time.monotonic() + self.cfg.request_timeout_s
        try:
            for sid, p in zip(sub_ids, prompts, strict=True):
                try:
                    self.engine.submit(sid, p, params, n, q)
                except EngineDead:
                    raise _unavailable() from None
                submitted.append(sid)
                self.metrics.prompt_tokens.inc(len(p) * n)
            while open_:
                try:
                    # Every wait is bounded: a stopped engine or a lost event must not hang a client.
                    item = await asyncio.wait_for(q.get(), timeout=1.0)
                except TimeoutError:
                    if not self.engine.alive:
                        raise _unavailable() from None
                    if time.monotonic() > deadline:
                        raise P.ApiError(504, f"generation did not finish within {self.cfg.request_timeout_s:g} s",
                                         type_="server_error", code="timeout") from None
                    continue
                if isinstance(item, EngineDead):
                    raise _unavailable()
                if isinstance(item, ValueError):  # the engine's own check of a request that does not fit
                    raise P.ApiError(400, str(item))
                if isinstance(item, BaseException):  # logged by the engine thread
                    raise P.ApiError(500, f"the engine failed on this request ({type(item).__name__}); "
                                     "see the server log", type_="server_error", code="engine_error")
                ev: Event = item
                if ev.error is not None:  # this request's own sequence failed; others are unaffected
                    self.metrics.sequence_errors.inc()
                    raise P.ApiError(500, f"generation failed for choice {ev.index}; see the server log",
                                     type_="server_error", code="engine_error")
                c = choices[slot_of[ev.request_id] * n + ev.index]
                if c.finish_reason is not None:
                    continue
                now = time.perf_counter()
                if ev.token_ids:
                    self.metrics.generation_tokens.inc(len(ev.token_ids))
                    if first:
                        self.metrics.ttft.observe(now - arrived)
                        first = False
                    elif c.last_time:
                        self.metrics.itl.observe(now - c.last_time)
                    c.first_time = c.first_time or now
                    c.last_time = now
                c.tokens += ev.token_ids
                c.logprobs += ev.logprobs
                if ev.stop_token is not None:
                    c.stop_token = ev.stop_token
                if ev.prompt_logprobs is not None:
                    c.prompt_logprobs = ev.prompt_logprobs
                new = c.guard.feed(ev.text)
                if ev.finish_reason is not None:
                    new += c.guard.finish()
                if c.guard.blocked is not None:
                    # One blocked choice ends the whole request: the others stop with it.
                    self.metrics.blocked.labels("output").inc()
                    for sid in submitted:
                        self.engine.abort(sid)
                    ended = [x for x in choices if x.finish_reason is None]
                    for x in ended:
                        x.finish_reason = "content_filter"
                    open_ = 0
                    for x in ended:
                        yield x, ""
                    continue
                c.text += new
                if ev.finish_reason is not None:
                    c.finish_reason = ev.finish_reason
                    open_ -= 1
                if new or ev.finish_reason is not None or ev.prompt_logprobs is not None:
                    yield c, new
        finally:
            if open_:  # the client went away or we failed: free the engine's slots now
                for sid in submitted:
                    self.engine.abort(sid)

    def gen_params(self, s: P.Sampling, max_tokens: int, stop_ids: tuple[int, ...], logprobs: int | None,
                   prompt_logprobs: int | None) -> GenParams:
        return GenParams(max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                         stop=s.stop, stop_ids=stop_ids, seed=s.seed, logprobs=logprobs,
                         prompt_logprobs=prompt_logprobs, presence_penalty=s.presence_penalty,
                         frequency_penalty=s.frequency_penalty, logit_bias=s.logit_bias, json_mode=s.json_mode)

    def close(self) -> None:
        self.engine.close()
        self.audit.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _unavailable() -> P.ApiError:
    err = P.ApiError(503, "the inference engine has stopped; the server must be restarted (see its log)",
                     type_="server_error", code="engine_unavailable")
    err.retry_after = 30
    return err


def _credential(auth: str) -> str | None:
    """The key from `Bearer KEY` or from Basic auth's password (what a browser sends for the page)."""
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def _ttft(choices: list[_Choice], arrived: float) -> float | None:
    firsts = [c.first_time for c in choices if c.first_time]
    return round(min(firsts) - arrived, 4) if firsts else None


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _dumps(obj: Any) -> bytes:
    """JSON bytes; long lists of token ids are written in slices, because one C-level json.dumps of a
    million ints holds the GIL (and so the event loop) for half a second."""
    if not isinstance(obj, dict) or not any(isinstance(v, list) and len(v) > 16384 for v in obj.values()):
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    parts = []
    for k, v in obj.items():
        if isinstance(v, list) and len(v) > 16384 and all(type(x) is int for x in v[:16]):
            body = ",".join(json.dumps(v[i : i + 8192], separators=(",", ":"))[1:-1] for i in range(0, len(v), 8192))
            parts.append(json.dumps(k) + ":[" + body + "]")
        else:
            parts.append(json.dumps(k) + ":" + json.dumps(v, ensure_ascii=False, separators=(",", ":")))
    return ("{" + ",".join(parts) + "}").encode()


def _parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_int=P.parse_int_literal)
    except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError is a ValueError
        raise P.ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise P.ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:  # JSON may escape lone UTF-16 surrogates ("\ud800"), which no UTF-8 text (or log line) can hold
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise P.ApiError(400, "the request contains an unpaired surrogate (invalid Unicode)",
                         code="invalid_json") from None
    except (ValueError, RecursionError):
        raise P.ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
    return body


async def _read_json(request, server: Server) -> tuple[dict, int]:
    """The body as a JSON object and its size; 408/413/400 as the case may be."""
    from starlette.requests import ClientDisconnect

    limit = server.cfg.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and (len(length) > 15 or not length.isdigit() or int(length) > limit):
        raise P.ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise P.ApiError(413, f"request body over {limit} bytes", code="request_too_large")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout=server.cfg.body_timeout_s)
    except TimeoutError:
        raise P.ApiError(408, f"the request body did not arrive within {server.cfg.body_timeout_s:g} s",
                         code="request_timeout") from None
    except ClientDisconnect:
        raise _Gone() from None
    raw = b"".join(chunks)
    return await server.cpu(len(raw), _parse_json, raw), len(raw)


async def _wait_disconnect(request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def _collect(request, gen) -> list[_Choice] | None:
    """Run a generation to the end and return its choices by index; None if the client disconnected
    first (the generation is then closed, which aborts it in the engine)."""
    seen: dict[int, _Choice] = {}

    async def drain() -> None:
        async for c, _ in gen:
            seen[c.index] = c

    work = asyncio.ensure_future(drain())
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        # Cancel until it takes: on Python < 3.12 asyncio.wait_for (inside gen) can swallow a cancellation
        # that lands as its inner get() completes, and the generation would then run to its end.
        while not work.done():
            work.cancel()
            await asyncio.wait({work}, timeout=0.05)
        if work.cancelled() or work.exception() is not None:
            await gen.aclose()
    if work not in done:
        return None
    work.result()
    return [seen[i] for i in sorted(seen)]


class _Gate:
    """ASGI wrapper in front of the routes: Host check, API key, JSON content type, CORS, metrics and
    the audit record of every request (with the status actually sent; 499 when the client left)."""

    def __init__(self, app, server: Server, known: set[str]) -> None:
        self.app, self.S, self.known = app, server, known

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        S = self.S
        path = scope.get("path", "")
        endpoint = path if path in self.known else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        info: dict[str, Any] = {}
        scope["diji.audit"] = info
        state = {"code": 0, "done": False}

        async def send_wrapper(msg):
            if msg["type"] == "http.response.start":
                state["code"] = msg["status"]
                origin = headers.get("origin")
                if origin and origin in S.cfg.cors_origins:
                    msg = {**msg, "headers": [*msg.get("headers", []),
                                              (b"access-control-allow-origin", origin.encode("latin-1")),
                                              (b"vary", b"Origin")]}
            elif msg["type"] == "http.response.body" and not msg.get("more_body", False):
                state["done"] = True
            await send(msg)

        try:
            refusal = self.check(scope, path, headers, info)
            if refusal is not None:
                await self.answer(send_wrapper, *refusal)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception:
            # Starlette has already answered 500 (see _internal) and re-raises for the server's log;
            # logging it here instead keeps uvicorn from dropping the connection.
            log.exception("unhandled error in %s", path)
            if not state["code"]:
                await self.answer(send_wrapper, 500, P.ApiError(500, "internal server error", type_="server_error"))
        finally:
            code = state["code"] if state["done"] else CLIENT_CLOSED
            code = info.get("status", code)  # an error reported in-band in a stream that began as 200
            S.metrics.requests.labels(endpoint, str(code)).inc()
            name = AUDIT_NAMES.get(path) or ("models" if path.startswith("/v1/models/") else "other")
            if path not in ("/", "/health", "/metrics"):  # page loads, probes and scrapes are not requests
                fields = {k: v for k, v in info.items() if k not in ("status", "id", "who")}
                try:
                    S.audit.request(id=info.get("id") or S.engine.next_id("req"), key_id=info.get("who"),
                                    endpoint=name, status=code, **fields)
                except OSError as e:  # a full disk must not turn answered requests into errors
                    S.metrics.audit_failures.inc()
                    log.warning("audit record not written: %s", e)

    def check(self, scope, path: str, headers: dict[str, str], info: dict):
        """(status, error, extra headers) for a request refused before routing, else None."""
        S = self.S
        if not S.host_allowed(headers.get("host", "")):
            return 421, P.ApiError(421, "this Host is not served here; add it with --allowed-host",
                                   code="host_not_allowed"), {}
        method = scope.get("method", "GET")
        origin = headers.get("origin")
        if method == "OPTIONS" and origin and origin in S.cfg.cors_origins:
            return 204, None, {"access-control-allow-methods": "GET, POST, OPTIONS",  # + origin: send_wrapper
                               "access-control-allow-headers": "authorization, content-type",
                               "access-control-max-age": "600"}
        client = scope.get("client") or ("unknown", 0)
        who = S.caller(headers, str(client[0]), path)
        if path != "/health" and who is None:
            extra = {"www-authenticate": 'Basic realm="diji"' if path == "/" else "Bearer"}
            return 401, P.ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                   code="invalid_api_key"), extra
        info["who"] = who
        scope["diji.who"] = who
        if method == "POST" and path in JSON_ROUTES:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
                return 415, P.ApiError(415, "send the body as JSON with 'Content-Type: application/json'",
                                       code="unsupported_media_type"), {}
        return None

    @staticmethod
    async def answer(send, status: int, err: P.ApiError | None, extra: dict[str, str] | None = None) -> None:
        body = b"" if err is None else json.dumps(err.body()).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})


def build_app(server: Server):
    """The FastAPI application over a `Server`."""
    fastapi = _fastapi()
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

    S = server
    docs = S.cfg.docs
    app = fastapi.FastAPI(title="diji", version="1", docs_url="/docs" if docs else None, redoc_url=None,
                          openapi_url="/openapi.json" if docs else None)

    def error_response(e: P.ApiError) -> JSONResponse:
        headers = {}
        if getattr(e, "retry_after", None):
            headers["Retry-After"] = str(max(1, int(e.retry_after + 0.999)))
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(P.ApiError)
    async def _api_error(request, e: P.ApiError):
        return error_response(e)

    @app.exception_handler(_Gone)
    async def _gone(request, e):
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        code = "not_found" if e.status_code == 404 else None
        return error_response(P.ApiError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(Exception)
    async def _internal(request, e):  # a bug: answer in the same shape (logged by the gate)
        return JSONResponse(P.ApiError(500, "internal server error", type_="server_error").body(), status_code=500)

    known = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/feedback",
             "/tokenize", "/detokenize", "/tokenizer_info"}
    inner = app.build_middleware_stack
    # A pure ASGI wrapper: Starlette's BaseHTTPMiddleware would buffer streams and hide client
    # disconnects from the handlers.
    app.build_middleware_stack = lambda: _Gate(inner(), S, known)

    def who(request) -> str:
        return request.scope.get("diji.who") or key_id("unknown", S.salt)

    async def reply(obj: dict, size: int) -> Response:
        """Serialise a possibly large answer (a million token ids) off the event loop: FastAPI's own
        encoder walks every element in Python on the loop and stalled /health for seconds."""
        data = await S.cpu(size, _dumps, obj)
        return Response(data, media_type="application/json")

    # ---- plain endpoints ----------------------------------------------------------------------
    page = resources.files("diji.serve").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self' 'unsafe-inline'",
                                           "X-Frame-Options": "DENY"})

    @app.get("/health")
    async def health():
        """Liveness only: 503 once the engine thread has stopped."""
        if not S.engine.alive:
            return JSONResponse({"status": "engine_stopped"}, status_code=503, headers={"Retry-After": "30"})
        return {"status": "ok", "running": S.engine.num_running, "waiting": S.engine.num_waiting}

    @app.get("/metrics")
    async def metrics():
        S.metrics.queue_depth.set(S.engine.num_waiting)
        S.metrics.running.set(S.engine.num_running)
        S.metrics.engine_alive.set(1 if S.engine.alive else 0)
        data, ctype = S.metrics.render()
        return Response(data, media_type=ctype)

    def model_card() -> dict:
        return {"id": S.model_name, "object": "model", "created": S.created, "owned_by": "diji",
                "max_model_len": S.max_model_len}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != S.model_name:
            raise P.ApiError(404, f"model {name[:100]!r} does not exist", param="model", code="model_not_found")
        return model_card()

    # ---- tokenizer endpoints (vLLM's shapes, read by lm-eval's RemoteTokenizer) -----------------
    @app.get("/tokenizer_info")
    async def tokenizer_info():
        named = S.tok.special_tokens  # the tokenizer's own strings (Llama 3's, Qwen's…), not diji's defaults
        return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": named.get("bos_token"),
                "eos_token": named.get("eos_token"), "pad_token": named.get("pad_token", named.get("eos_token")),
                "chat_template": S.chat_template or None, "model_max_length": S.max_model_len,
                "vocab_size": S.tok.vocab_size, "add_bos_token": S.tok.add_bos}

    @app.post("/tokenize")
    async def tokenize(request: fastapi.Request):
        body, size = await _read_json(request, S)
        P.check_fields(body, P.TOKENIZE_FIELDS)
        S.check_model(body)
        add = P.parse_bool(body, "add_generation_prompt", True)
        # vLLM's meaning: add the tokenizer's own specials (BOS where it adds one) to a prompt; default true.
        add_special = P.parse_bool(body, "add_special_tokens", True)
        if "messages" in body:
            messages = P.parse_messages(body["messages"])
            ids = await S.cpu(size, _render, messages, S.tok, add)
        elif isinstance(body.get("prompt"), str):
            ids = await S.cpu(size, _encode_prompt, S.tok, body["prompt"], add_special)
        else:
            raise P.ApiError(400, "'prompt' must be a string (or pass 'messages')", param="prompt")
        out: dict[str, Any] = {"count": len(ids), "max_model_len": S.max_model_len, "tokens": ids}
        if P.parse_bool(body, "return_token_strs"):
            out["token_strs"] = await S.cpu(size, lambda: [S.token_str(i) for i in ids])
        return await reply(out, size)

    @app.post("/detokenize")
    async def detokenize(request: fastapi.Request):
        body, size = await _read_json(request, S)
        P.check_fields(body, P.DETOKENIZE_FIELDS)
        S.check_model(body)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(type(t) is int and 0 <= t < S.vocab_size for t in ids):
            raise P.ApiError(400, f"'tokens' must be a list of token ids in [0, {S.vocab_size})", param="tokens")
        return await reply({"prompt": await S.cpu(size, S.tok.decode, ids)}, size)

    # ---- feedback ----------------------------------------------------------------------------------
    @app.post("/v1/feedback")
    async def feedback(request: fastapi.Request):
        caller = who(request)
        body, _ = await _read_json(request, S)
        P.check_fields(body, P.FEEDBACK_FIELDS)
        rid, rating, comment = body.get("id"), body.get("rating"), body.get("comment", "")
        if not isinstance(rid, str) or not 0 < len(rid) <= 128:
            raise P.ApiError(400, "'id' must be the response id (a string)", param="id")
        rating = {"up": 1, "down": -1}.get(rating, rating) if isinstance(rating, str) else rating
        if isinstance(rating, bool) or rating not in (1, -1):
            raise P.ApiError(400, "'rating' must be 1 / -1 (or 'up' / 'down')", param="rating")
        if comment is None:
            comment = ""
        if not isinstance(comment, str):
            raise P.ApiError(400, "'comment' must be a string", param="comment")
        wait = S.feedback_limiter.acquire(caller, 0)
        if wait:
            err = P.ApiError(429, "too much feedback; retry later", code="rate_limit_exceeded",
                             type_="rate_limit_error")
            err.retry_after = wait
            raise err
        # Only the caller who received a response may rate it: otherwise anyone could up-vote any
        # conversation into the flywheel's SFT export.
        owner = S.owner(rid)
        if owner is None or not hmac.compare_digest(owner, caller):
            raise P.ApiError(404, "no response with this id was made for your key (or it is too old)",
                             param="id", code="response_not_found")
        S.audit.feedback(rid, rating, comment[:2000], caller)
        return {"id": rid, "stored": S.audit.enabled}

    def start(request, prefix: str) -> tuple[str, str, dict]:
        """A fresh response id, the caller, and the audit record to fill."""
        rid = S.engine.next_id(prefix)
        info = request.scope.get("diji.audit", {})
        info["id"] = rid
        return rid, who(request), info

    def end_user(body: dict, info: dict) -> None:
        """OpenAI's `user` (the caller's end-user id, for abuse tracing): audited, salted-hashed."""
        if isinstance(body.get("user"), str):
            info["end_user"] = key_id("user:" + body["user"], S.salt)

    # ---- completions ------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(request: fastapi.Request):
        arrived = time.perf_counter()
        rid, caller, info = start(request, "cmpl")
        body, size = await _read_json(request, S)
        P.check_fields(body, P.COMPLETION_FIELDS)
        S.check_model(body)
        samp = P.parse_sampling(body, ("max_tokens",), S.vocab_size, S.cfg.max_stop_chars)
        P.check_completion_extras(body, samp.n)
        end_user(body, info)
        echo = P.parse_bool(body, "echo")
        logprobs = P.parse_logprobs_completions(body)
        if "prompt" not in body:
            raise P.ApiError(400, "'prompt' is required", param="prompt", code="missing")
        max_tokens = 16 if samp.max_tokens is None else samp.max_tokens
        n_prompts = len(body["prompt"]) if isinstance(body["prompt"], list) and body["prompt"] and not all(
            type(t) is int for t in body["prompt"]) else 1
        S.check_load(n_prompts * samp.n, samp, max_tokens)

        def prepare():
            prompts = P.parse_prompts(body["prompt"], lambda t: _encode_prompt(S.tok, t), S.vocab_size)
            for p in prompts:
                S.check_length(p, max_tokens)
            texts = [S.tok.decode(p) for p in prompts]
            return prompts, texts, S.moderator.check_input(texts)

        prompts, texts, decision = await S.cpu(size, prepare)
        S.rate_limit(caller, sum(len(p) + max_tokens * samp.n for p in prompts), info)
        S.remember(rid, caller)
        base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": S.model_name}
        n_prompt = sum(len(p) for p in prompts) * samp.n
        info.update(prompt_tokens=n_prompt, completion_tokens=0, prompt=texts)
        if decision.action == "block":
            S.metrics.blocked.labels("input").inc()
            info.update(finish_reasons=["content_filter"], decisions=[vars(decision)])
            choices = [{"index": i, "text": "", "logprobs": None, "finish_reason": "content_filter"}
                       for i in range(len(prompts) * samp.n)]
            return {**base, "choices": choices, "usage": P.usage(n_prompt, 0)}
        params = S.gen_params(samp, max_tokens, (S.tok.eos_id,), logprobs,
                              logprobs if (echo and logprobs is not None) else None)
        gen = S.run(rid, prompts, params, samp.n, arrived)

        def finish_audit(chs):
            done = sum(len(c.tokens) for c in chs)
            S.limiter.refund(caller, max_tokens * len(prompts) * samp.n - done)
            S.metrics.latency.observe(time.perf_counter() - arrived)
            info.update(completion_tokens=done, latency_s=round(time.perf_counter() - arrived, 4),
                        ttft_s=_ttft(chs, arrived), finish_reasons=[c.finish_reason for c in chs],
                        decisions=[vars(d) for c in chs for d in c.guard.decisions()], output=[c.text for c in chs])

        def choice_logprobs(c, start: int = 0, with_prompt: bool = echo) -> dict | None:
            """Legacy logprobs of generated tokens from `start` on, after the prompt's when echoing."""
            if logprobs is None:
                return None
            entries = list(zip(c.tokens[start:], c.logprobs[start:], strict=False))
            if c.stop_token is not None and c.finish_reason is not None and c.stop_token[1] is not None:
                # Like vLLM/OpenAI: the stop token's log-prob is reported though its text is not.
                entries.append(c.stop_token)
            if with_prompt:
                entries = list(zip(c.prompt, c.prompt_logprobs or [None] * len(c.prompt), strict=False)) + entries
            return P.completion_logprobs(entries, S.token_str)

        if samp.stream:
            async def stream():
                chs: dict[int, Any] = {}
                sent_lp: dict[int, int] = {}
                try:
                    async for c, new in gen:
                        fresh = c.index not in chs  # the prompt (echo) goes out once, before the first text
                        lp = choice_logprobs(c, sent_lp.get(c.index, 0), with_prompt=echo and fresh)
                        sent_lp[c.index] = len(c.logprobs)
                        if echo and fresh:
                            new = S.tok.decode(c.prompt) + new
                        chs[c.index] = c
                        yield _sse({**base, "choices": [{"index": c.index, "text": new, "logprobs": lp,
                                                         "finish_reason": c.finish_reason}]})
                    if samp.include_usage:
                        yield _sse({**base, "choices": [],
                                    "usage": P.usage(n_prompt, sum(len(c.tokens) for c in chs.values()))})
                    yield b"data: [DONE]\n\n"
                except P.ApiError as e:  # headers are gone: report in-band, as OpenAI streams do
                    info["status"] = e.status
                    yield _sse(e.body())
                    yield b"data: [DONE]\n\n"
                finally:
                    finish_audit(list(chs.values()))

            return StreamingResponse(stream(), media_type="text/event-stream")

        holder = await _collect(request, gen)
        if holder is None:
            return Response(status_code=CLIENT_CLOSED)
        finish_audit(holder)
        out = []
        for c in holder:
            text = (S.tok.decode(c.prompt) if echo else "") + c.text
            out.append({"index": c.index, "text": text, "logprobs": choice_logprobs(c),
                        "finish_reason": c.finish_reason})
        return await reply({**base, "choices": out, "usage": P.usage(n_prompt, sum(len(c.tokens) for c in holder))},
                           size + sum(len(c.text) + 64 * len(c.logprobs) for c in holder))

    # ---- chat completions ---------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request):
        arrived = time.perf_counter()
        rid, caller, info = start(request, "chatcmpl")
        body, size = await _read_json(request, S)
        P.check_fields(body, P.CHAT_FIELDS)
        S.check_model(body)
        tools = P.parse_tools(body, S.template_has_tools)
        if "messages" not in body:
            raise P.ApiError(400, "'messages' is required", param="messages", code="missing")
        messages = P.parse_messages(body["messages"], tools=S.template_has_tools)
        samp = P.parse_sampling(body, ("max_completion_tokens", "max_tokens"), S.vocab_size, S.cfg.max_stop_chars)
        if tools and samp.stream:
            raise P.ApiError(400, "'stream' together with 'tools' is not supported; ask without stream",
                             param="stream", code="unsupported_parameter")
        if tools and samp.json_mode:
            raise P.ApiError(400, "'response_format' json_object cannot be combined with 'tools'",
                             param="response_format", code="unsupported_parameter")
        end_user(body, info)
        logprobs = P.parse_logprobs_chat(body)
        ids = await S.cpu(size, _render, messages, S.tok, True, tools)
        room = S.max_model_len - len(ids)
        max_tokens = samp.max_tokens if samp.max_tokens is not None else max(0, min(S.cfg.default_max_tokens, room))
        S.check_length(ids, max_tokens)
        S.check_load(samp.n, samp, max_tokens)
        decision: Decision = await S.cpu(size, S.moderator.check_input, [m["content"] for m in messages])
        S.rate_limit(caller, len(ids) + max_tokens * samp.n, info)
        S.remember(rid, caller)
        base = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": S.model_name}
        chunk = {**base, "object": "chat.completion.chunk"}
        n_prompt = len(ids) * samp.n
        info.update(prompt_tokens=n_prompt, completion_tokens=0, messages=messages)

        def audit(chs_text, finish, completion_tokens, decisions, ttft=None):
            S.metrics.latency.observe(time.perf_counter() - arrived)
            info.update(completion_tokens=completion_tokens, latency_s=round(time.perf_counter() - arrived, 4),
                        ttft_s=ttft, finish_reasons=finish, decisions=decisions, output=chs_text)

        if decision.action == "block":
            S.metrics.blocked.labels("input").inc()
            audit([S.policy.refusal] * samp.n, ["content_filter"] * samp.n, 0, [vars(decision)])
            refusal = S.policy.refusal
            if samp.stream:
                async def refuse():
                    for i in range(samp.n):
                        yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                          "logprobs": None, "finish_reason": None}]})
                        yield _sse({**chunk, "choices": [{"index": i, "delta": {"content": refusal},
                                                          "logprobs": None, "finish_reason": None}]})
                        yield _sse({**chunk, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                                          "finish_reason": "content_filter"}]})
                    if samp.include_usage:
                        yield _sse({**chunk, "choices": [], "usage": P.usage(n_prompt, 0)})
                    yield b"data: [DONE]\n\n"

                return StreamingResponse(refuse(), media_type="text/event-stream")
            return {**base, "choices": [{"index": i, "message": {"role": "assistant", "content": refusal},
                                         "logprobs": None, "finish_reason": "content_filter"} for i in range(samp.n)],
                    "usage": P.usage(n_prompt, 0)}

        params = S.gen_params(samp, max_tokens, S.tok.stop_ids, logprobs, None)
        gen = S.run(rid, [ids], params, samp.n, arrived)

        def finish(chs):
            done = sum(len(c.tokens) for c in chs)
            S.limiter.refund(caller, max_tokens * samp.n - done)
            audit([c.text for c in chs], [c.finish_reason for c in chs], done,
                  [vars(d) for c in chs for d in c.guard.decisions()], _ttft(chs, arrived))

        if samp.stream:
            async def stream():
                chs: dict[int, Any] = {}
                sent_lp: dict[int, int] = {}
                try:
                    for i in range(samp.n):
                        yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                          "logprobs": None, "finish_reason": None}]})
                    async for c, new in gen:
                        chs[c.index] = c
                        lp = None
                        if logprobs is not None:
                            k = sent_lp.get(c.index, 0)
                            lp = P.chat_logprobs(c.logprobs[k:], S.token_str)
                            sent_lp[c.index] = len(c.logprobs)
                        if new or lp and lp["content"]:
                            yield _sse({**chunk, "choices": [{"index": c.index, "delta": {"content": new},
                                                              "logprobs": lp, "finish_reason": None}]})
                        if c.finish_reason is not None:
                            yield _sse({**chunk, "choices": [{"index": c.index, "delta": {}, "logprobs": None,
                                                              "finish_reason": c.finish_reason}]})
                    if samp.include_usage:
                        done = sum(len(c.tokens) for c in chs.values())
                        yield _sse({**chunk, "choices": [], "usage": P.usage(n_prompt, done)})
                    yield b"data: [DONE]\n\n"
                except P.ApiError as e:  # headers are gone: report in-band, as OpenAI streams do
                    info["status"] = e.status
                    yield _sse(e.body())
                    yield b"data: [DONE]\n\n"
                finally:
                    finish(list(chs.values()))

            return StreamingResponse(stream(), media_type="text/event-stream")

        holder = await _collect(request, gen)
        if holder is None:
            return Response(status_code=CLIENT_CLOSED)
        finish(holder)
        names = {t["function"]["name"] for t in tools or ()}
        out = []
        for c in holder:
            message: dict[str, Any] = {"role": "assistant", "content": c.text}
            reason = c.finish_reason
            if tools and reason != "content_filter":
                content, calls = P.parse_tool_calls(c.text, names, lambda: S.engine.next_id("call"))
                if calls:
                    message = {"role": "assistant", "content": content, "tool_calls": calls}
                    reason = "tool_calls"
            out.append({"index": c.index, "message": message, "finish_reason": reason,
                        "logprobs": P.chat_logprobs(c.logprobs, S.token_str) if logprobs is not None else None})
        return await reply({**base, "choices": out, "usage": P.usage(n_prompt, sum(len(c.tokens) for c in holder))},
                           size + sum(len(c.text) + 64 * len(c.logprobs) for c in holder))

    return app


# ---- running ----------------------------------------------------------------------------------------
def load_server(checkpoint: str | Path, cfg: ServeConfig, policy: Policy | None = None,
                device: str = "auto", dtype: str | None = None) -> Server:
    """Load a verified checkpoint and its tokenizer into a ready `Server` (weights in `dtype` if given)."""
    import torch

    from diji.compute.device import select_device
    from diji.train.checkpoint import load_checkpoint

    dev = select_device(device).device
    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        raise DijiError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    loaded = load_checkpoint(checkpoint, device=dev, dtype=getattr(torch, dtype) if dtype else None)
    tok = Tokenizer.from_file(loaded.tokenizer_file)
    return Server(loaded.model, tok, cfg, policy, model_name=Path(checkpoint).resolve().name)


def _uvicorn():
    try:
        import uvicorn
    except ImportError as e:
        raise DijiError("serving needs uvicorn: pip install 'diji[serve]'") from e
    return uvicorn


def serve_forever(server: Server) -> None:
    uvicorn = _uvicorn()
    app = build_app(server)
    try:
        uvicorn.run(app, host=server.cfg.host, port=server.cfg.port, log_level="info",
                    timeout_graceful_shutdown=5, limit_concurrency=server.cfg.max_connections)
    finally:
        server.close()


class ServerThread:
    """Run a `Server` on a background thread (tests, benchmarks, notebooks); `url` once started."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0) -> None:
        uvicorn = _uvicorn()
        self.server = server
        config = uvicorn.Config(build_app(server), host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=2, limit_concurrency=server.cfg.max_connections)
        self._uv = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uv.run, name="diji-http", daemon=True)
        self.url = ""

    def start(self) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uv.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise DijiError("the HTTP server did not start")
            time.sleep(0.02)
        sock = self._uv.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout=10)
        self.server.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
