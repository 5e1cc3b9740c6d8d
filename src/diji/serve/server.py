"""The OpenAI-compatible HTTP server (FastAPI + uvicorn): a thin layer over `AsyncEngine`.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (SSE with `stream`),
POST /v1/feedback, GET /health, GET /metrics (Prometheus), GET / (the chat page), and the tokenizer
endpoints GET /tokenizer_info, POST /tokenize, POST /detokenize in vLLM's format, which
lm-evaluation-harness uses so that clients need no tokenizer files.

Every error is {"error": {"message", "type", "param", "code"}}: 400 bad JSON / parameters / prompt too
long, 401 missing or wrong key (compared in constant time), 404 unknown model or path, 413 oversize
body, 429 rate limited. A client that disconnects has its request aborted and its cache slot freed.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from diji.data.chat import CHAT_TEMPLATE, render
from diji.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from diji.errors import DijiError
from diji.safety.audit import AuditLog, key_id
from diji.safety.policy import Decision, Moderator, Policy, RateLimiter
from diji.serve import protocol as P
from diji.serve.engine import AsyncEngine, Engine, EngineConfig, Event, GenParams

log = logging.getLogger(__name__)

# nginx's status for "client closed the request": never seen by the client, but counted in metrics.
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 exposes the server to the network (use an API key then)."""
    port: int = 8000
    """TCP port; 0 picks a free one."""
    api_key: str = ""
    """When set, every /v1 and tokenizer call needs `Authorization: Bearer <api_key>`."""
    model_name: str = ""
    """Name clients pass as `model`; empty means the checkpoint directory's name."""
    max_body_bytes: int = 4 << 20
    """Largest request body accepted; bigger ones get 413."""
    default_max_tokens: int = 512
    """Chat `max_tokens` when the client gives none (further capped by the context left)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Batching limits of the engine."""

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if self.default_max_tokens <= 0:
            raise ValueError(f"default_max_tokens must be positive, got {self.default_max_tokens}")


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


class Server:
    """Everything a request handler needs, passed explicitly (no globals)."""

    # (This module has no `from __future__ import annotations`: FastAPI resolves a handler's parameter
    # annotations at runtime, and `fastapi.Request` is imported lazily inside build_app.)

    def __init__(self, model, tokenizer: Tokenizer, cfg: ServeConfig, policy: Policy | None = None,
                 model_name: str = "diji") -> None:
        from diji.observe.prometheus import ServeMetrics

        self.cfg, self.tok = cfg, tokenizer
        self.policy = policy or Policy()
        self.model_name = cfg.model_name or model_name
        self.created = int(time.time())
        self.moderator = Moderator(self.policy)
        self.limiter = RateLimiter(self.policy.rate_limit)
        self.audit = AuditLog(self.policy.audit.dir or None, self.policy.audit.log_text)
        self.metrics = ServeMetrics()
        self.vocab_size = model.config.vocab_size
        self._token_str_cache: dict[int, str] = {}
        engine = Engine(model, tokenizer.decode, cfg.engine)
        self.max_model_len = engine.max_model_len
        self.engine = AsyncEngine(engine, on_step=self._on_step)

    # ---- helpers ----------------------------------------------------------------------------------
    def _on_step(self, kind: str, batch: int, seconds: float) -> None:
        self.metrics.step_seconds.labels(kind).observe(seconds)
        self.metrics.queue_depth.set(self.engine.num_waiting)
        self.metrics.running.set(self.engine.num_running)

    def token_str(self, tid: int) -> str:
        s = self._token_str_cache.get(tid)
        if s is None:
            s = self._token_str_cache[tid] = self.tok.decode([tid])
        return s

    def authorize(self, request) -> str:
        """Check the bearer key (constant-time); returns the caller's id for rate limits and audit:
        the hashed key, or without keys the hashed client address."""
        if not self.cfg.api_key:
            return key_id("addr:" + (request.client.host if request.client else "unknown"))
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        # hmac.compare_digest takes time independent of where the strings differ (no timing oracle).
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.cfg.api_key.encode()):
            raise P.ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                             code="invalid_api_key")
        return key_id(self.cfg.api_key)

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and name != self.model_name:
            raise P.ApiError(404, f"model {str(name)[:100]!r} does not exist; this server serves {self.model_name!r}",
                             param="model", code="model_not_found")

    def rate_limit(self, who: str, tokens: int, rid: str, endpoint: str) -> None:
        wait = self.limiter.acquire(who, tokens)
        if wait:
            self.metrics.rate_limited.inc()
            self.audit.request(id=rid, key_id=who, endpoint=endpoint, status=429, prompt_tokens=0,
                               completion_tokens=0, decisions=[{"stage": "input", "action": "rate_limit",
                                                                "rule": "token_bucket"}])
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

    # ---- the shared generation path --------------------------------------------------------------
    async def run(self, rid: str, prompts: list[list[int]], params: GenParams, n: int, arrived: float):
        """Submit prompts and yield (choice, new_text) as text becomes final; choices finish in place."""
        q: asyncio.Queue = asyncio.Queue()
        choices = [_Choice(pi * n + i, p, self.moderator.guard()) for pi, p in enumerate(prompts) for i in range(n)]
        sub_ids = [f"{rid}/{pi}" for pi in range(len(prompts))]
        for sid, p in zip(sub_ids, prompts, strict=True):
            self.engine.submit(sid, p, params, n, q)
            self.metrics.prompt_tokens.inc(len(p) * n)
        open_ = len(choices)
        first = True
        try:
            while open_:
                item = await q.get()
                if isinstance(item, ValueError):  # the engine's own check of a request that does not fit
                    raise P.ApiError(400, str(item))
                if isinstance(item, BaseException):  # logged by the engine thread
                    raise P.ApiError(500, f"the engine failed on this request ({type(item).__name__}); "
                                     "see the server log", type_="server_error", code="engine_error")
                ev: Event = item
                c = choices[sub_ids.index(ev.request_id) * n + ev.index]
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
                    for sid in sub_ids:
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
                for sid in sub_ids:
                    self.engine.abort(sid)

    def gen_params(self, s: P.Sampling, max_tokens: int, stop_ids: tuple[int, ...], logprobs: int | None,
                   prompt_logprobs: int | None) -> GenParams:
        return GenParams(max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                         stop=s.stop, stop_ids=stop_ids, seed=s.seed, logprobs=logprobs,
                         prompt_logprobs=prompt_logprobs)


def _ttft(choices: list[_Choice], arrived: float) -> float | None:
    firsts = [c.first_time for c in choices if c.first_time]
    return round(min(firsts) - arrived, 4) if firsts else None


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def _read_json(request, limit: int) -> dict:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise P.ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise P.ApiError(413, f"request body over {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise P.ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise P.ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:  # JSON may escape lone UTF-16 surrogates ("\ud800"), which no UTF-8 text (or log line) can hold
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise P.ApiError(400, "the request contains an unpaired surrogate (invalid Unicode)",
                         code="invalid_json") from None
    return body


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
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            await gen.aclose()
    if work not in done:
        return None
    work.result()
    return [seen[i] for i in sorted(seen)]


def build_app(server: Server):
    """The FastAPI application over a `Server`."""
    fastapi = _fastapi()
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

    app = fastapi.FastAPI(title="diji", version="1", docs_url=None, redoc_url=None)
    S = server

    def error_response(e: P.ApiError) -> JSONResponse:
        headers = {}
        if getattr(e, "retry_after", None):
            headers["Retry-After"] = str(max(1, int(e.retry_after + 0.999)))
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(P.ApiError)
    async def _api_error(request, e: P.ApiError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        code = "not_found" if e.status_code == 404 else None
        return error_response(P.ApiError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(Exception)
    async def _internal(request, e):  # a bug: answer in the same shape (logged by the wrapper below)
        return JSONResponse(P.ApiError(500, "internal server error", type_="server_error").body(), status_code=500)

    # Requests by endpoint and status, counted by a pure ASGI wrapper: Starlette's BaseHTTPMiddleware
    # would buffer streams and hide client disconnects from the handlers.
    known = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/feedback",
             "/tokenize", "/detokenize", "/tokenizer_info"}
    inner = app.build_middleware_stack

    def build_stack():
        wrapped = inner()

        async def counting(scope, receive, send):
            if scope["type"] != "http":
                return await wrapped(scope, receive, send)
            path = scope.get("path", "")
            endpoint = path if path in known else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
            status = {"code": 0}

            async def send_wrapper(msg):
                if msg["type"] == "http.response.start":
                    status["code"] = msg["status"]
                await send(msg)

            try:
                await wrapped(scope, receive, send_wrapper)
            except Exception:
                # Starlette has already answered 500 (see _internal) and re-raises for the server's log;
                # logging it here instead keeps uvicorn from dropping the connection.
                log.exception("unhandled error in %s", path)
                if not status["code"]:
                    status["code"] = 500
                    body = json.dumps(P.ApiError(500, "internal server error", type_="server_error").body())
                    await send({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json")]})
                    await send({"type": "http.response.body", "body": body.encode()})
            finally:
                S.metrics.requests.labels(endpoint, str(status["code"] or CLIENT_CLOSED)).inc()

        return counting

    app.build_middleware_stack = build_stack

    # ---- plain endpoints ----------------------------------------------------------------------
    page = resources.files("diji.serve").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self' 'unsafe-inline'"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": S.model_name, "running": S.engine.num_running,
                "waiting": S.engine.num_waiting}

    @app.get("/metrics")
    async def metrics():
        S.metrics.queue_depth.set(S.engine.num_waiting)
        S.metrics.running.set(S.engine.num_running)
        data, ctype = S.metrics.render()
        return Response(data, media_type=ctype)

    def model_card() -> dict:
        return {"id": S.model_name, "object": "model", "created": S.created, "owned_by": "diji",
                "max_model_len": S.max_model_len}

    @app.get("/v1/models")
    async def models(request: fastapi.Request):
        S.authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: fastapi.Request):
        S.authorize(request)
        if name != S.model_name:
            raise P.ApiError(404, f"model {name[:100]!r} does not exist", param="model", code="model_not_found")
        return model_card()

    # ---- tokenizer endpoints (vLLM's shapes, read by lm-eval's RemoteTokenizer) -----------------
    @app.get("/tokenizer_info")
    async def tokenizer_info(request: fastapi.Request):
        S.authorize(request)
        return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL_TOKENS[S.tok.bos_id],
                "eos_token": SPECIAL_TOKENS[S.tok.eos_id], "pad_token": SPECIAL_TOKENS[S.tok.pad_id],
                "chat_template": CHAT_TEMPLATE, "model_max_length": S.max_model_len,
                "vocab_size": S.tok.vocab_size, "add_bos_token": False}

    @app.post("/tokenize")
    async def tokenize(request: fastapi.Request):
        S.authorize(request)
        body = await _read_json(request, S.cfg.max_body_bytes)
        if "messages" in body:
            messages = P.parse_messages(body["messages"])
            add = body.get("add_generation_prompt", True)
            ids = render(messages, S.tok, add_generation_prompt=bool(add))[0]
        elif isinstance(body.get("prompt"), str):
            ids = S.tok.encode(body["prompt"])
        else:
            raise P.ApiError(400, "'prompt' must be a string (or pass 'messages')", param="prompt")
        out: dict[str, Any] = {"count": len(ids), "max_model_len": S.max_model_len, "tokens": ids}
        if body.get("return_token_strs") is True:
            out["token_strs"] = [S.token_str(i) for i in ids]
        return out

    @app.post("/detokenize")
    async def detokenize(request: fastapi.Request):
        S.authorize(request)
        body = await _read_json(request, S.cfg.max_body_bytes)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < S.vocab_size for t in ids):
            raise P.ApiError(400, f"'tokens' must be a list of token ids in [0, {S.vocab_size})", param="tokens")
        return {"prompt": S.tok.decode(ids)}

    # ---- feedback ----------------------------------------------------------------------------------
    @app.post("/v1/feedback")
    async def feedback(request: fastapi.Request):
        who = S.authorize(request)
        body = await _read_json(request, S.cfg.max_body_bytes)
        rid, rating, comment = body.get("id"), body.get("rating"), body.get("comment", "")
        if not isinstance(rid, str) or not 0 < len(rid) <= 128:
            raise P.ApiError(400, "'id' must be the response id (a string)", param="id")
        rating = {"up": 1, "down": -1}.get(rating, rating) if isinstance(rating, str) else rating
        if isinstance(rating, bool) or rating not in (1, -1):
            raise P.ApiError(400, "'rating' must be 1 / -1 (or 'up' / 'down')", param="rating")
        if not isinstance(comment, str):
            raise P.ApiError(400, "'comment' must be a string", param="comment")
        S.audit.feedback(rid, rating, comment[:2000], who)
        return {"id": rid, "stored": S.audit.enabled}

    # ---- completions ------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(request: fastapi.Request):
        arrived = time.perf_counter()
        who = S.authorize(request)
        body = await _read_json(request, S.cfg.max_body_bytes)
        S.check_model(body)
        samp = P.parse_sampling(body, ("max_tokens",))
        echo = P.parse_bool(body, "echo")
        logprobs = P.parse_logprobs_completions(body)
        if "prompt" not in body:
            raise P.ApiError(400, "'prompt' is required", param="prompt", code="missing")
        prompts = P.parse_prompts(body["prompt"], S.tok.encode, S.vocab_size)
        max_tokens = 16 if samp.max_tokens is None else samp.max_tokens
        for p in prompts:
            S.check_length(p, max_tokens)
        rid = S.engine.next_id("cmpl")
        decision = S.moderator.check_input([S.tok.decode(p) for p in prompts])
        S.rate_limit(who, sum(len(p) + max_tokens * samp.n for p in prompts), rid, "completions")
        base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": S.model_name}
        n_prompt = sum(len(p) for p in prompts) * samp.n
        if decision.action == "block":
            S.metrics.blocked.labels("input").inc()
            S.audit.request(id=rid, key_id=who, endpoint="completions", status=200, prompt_tokens=n_prompt,
                            completion_tokens=0, finish_reasons=["content_filter"], decisions=[vars(decision)],
                            prompt=[S.tok.decode(p) for p in prompts])
            choices = [{"index": i, "text": "", "logprobs": None, "finish_reason": "content_filter"}
                       for i in range(len(prompts) * samp.n)]
            return {**base, "choices": choices, "usage": P.usage(n_prompt, 0)}
        params = S.gen_params(samp, max_tokens, (S.tok.eos_id,), logprobs,
                              logprobs if (echo and logprobs is not None) else None)
        gen = S.run(rid, prompts, params, samp.n, arrived)

        def finish_audit(chs, status=200):
            done = sum(len(c.tokens) for c in chs)
            S.limiter.refund(who, max_tokens * len(chs) - done)
            S.metrics.latency.observe(time.perf_counter() - arrived)
            S.audit.request(id=rid, key_id=who, endpoint="completions", status=status, prompt_tokens=n_prompt,
                            completion_tokens=done, latency_s=round(time.perf_counter() - arrived, 4),
                            ttft_s=_ttft(chs, arrived), finish_reasons=[c.finish_reason for c in chs],
                            decisions=[vars(d) for c in chs for d in c.guard.decisions()],
                            prompt=[S.tok.decode(p) for p in prompts], output=[c.text for c in chs])

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
        return {**base, "choices": out, "usage": P.usage(n_prompt, sum(len(c.tokens) for c in holder))}

    # ---- chat completions ---------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request):
        arrived = time.perf_counter()
        who = S.authorize(request)
        body = await _read_json(request, S.cfg.max_body_bytes)
        S.check_model(body)
        if "messages" not in body:
            raise P.ApiError(400, "'messages' is required", param="messages", code="missing")
        messages = P.parse_messages(body["messages"])
        samp = P.parse_sampling(body, ("max_completion_tokens", "max_tokens"))
        logprobs = P.parse_logprobs_chat(body)
        ids = render(messages, S.tok, add_generation_prompt=True)[0]
        room = S.max_model_len - len(ids)
        max_tokens = samp.max_tokens if samp.max_tokens is not None else max(0, min(S.cfg.default_max_tokens, room))
        S.check_length(ids, max_tokens)
        rid = S.engine.next_id("chatcmpl")
        decision: Decision = S.moderator.check_input([m["content"] for m in messages])
        S.rate_limit(who, len(ids) + max_tokens * samp.n, rid, "chat")
        base = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": S.model_name}
        chunk = {**base, "object": "chat.completion.chunk"}
        n_prompt = len(ids) * samp.n

        def audit(chs_text, finish, completion_tokens, decisions, ttft=None, status=200):
            S.metrics.latency.observe(time.perf_counter() - arrived)
            S.audit.request(id=rid, key_id=who, endpoint="chat", status=status, prompt_tokens=n_prompt,
                            completion_tokens=completion_tokens,
                            latency_s=round(time.perf_counter() - arrived, 4), ttft_s=ttft, finish_reasons=finish,
                            decisions=decisions, messages=messages, output=chs_text)

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

        params = S.gen_params(samp, max_tokens, (S.tok.eos_id, S.tok.im_end_id), logprobs, None)
        gen = S.run(rid, [ids], params, samp.n, arrived)

        def finish(chs):
            done = sum(len(c.tokens) for c in chs)
            S.limiter.refund(who, max_tokens * len(chs) - done)
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
                    yield _sse(e.body())
                    yield b"data: [DONE]\n\n"
                finally:
                    finish(list(chs.values()))

            return StreamingResponse(stream(), media_type="text/event-stream")

        holder = await _collect(request, gen)
        if holder is None:
            return Response(status_code=CLIENT_CLOSED)
        finish(holder)
        out = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                "logprobs": P.chat_logprobs(c.logprobs, S.token_str) if logprobs is not None else None,
                "finish_reason": c.finish_reason} for c in holder]
        return {**base, "choices": out, "usage": P.usage(n_prompt, sum(len(c.tokens) for c in holder))}

    return app


# ---- running ----------------------------------------------------------------------------------------
def load_server(checkpoint: str | Path, cfg: ServeConfig, policy: Policy | None = None,
                device: str = "auto") -> Server:
    """Load a verified checkpoint and its tokenizer into a ready `Server`."""
    from diji.compute.device import select_device
    from diji.train.checkpoint import load_checkpoint

    dev = select_device(device).device
    loaded = load_checkpoint(checkpoint, device=dev)
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
                    timeout_graceful_shutdown=5)
    finally:
        server.engine.close()
        server.audit.close()


class ServerThread:
    """Run a `Server` on a background thread (tests, benchmarks, notebooks); `url` once started."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0) -> None:
        uvicorn = _uvicorn()
        self.server = server
        config = uvicorn.Config(build_app(server), host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=2)
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
        self.server.engine.close()
        self.server.audit.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
