"""Prometheus metrics for the server, on a registry of its own (no process-global state).

Names follow the Prometheus conventions (base units, `_total` counters, `_seconds` histograms).
`prometheus_client` is an optional dependency (the `serve` extra) and is imported on construction.
"""

from __future__ import annotations

from diji.errors import DijiError

# Latency buckets in seconds: token latencies on a CPU run from ~1 ms to seconds.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self) -> None:
        try:
            import prometheus_client as pc
        except ImportError as e:
            raise DijiError("serving needs prometheus-client: pip install 'diji[serve]'") from e
        self._pc = pc
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter("diji_requests", "HTTP requests by endpoint and status code",
                                   ["endpoint", "status"], registry=r)
        self.prompt_tokens = pc.Counter("diji_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = pc.Counter("diji_generation_tokens", "Tokens generated", registry=r)
        self.ttft = pc.Histogram("diji_time_to_first_token_seconds", "Request arrival to first generated token",
                                 buckets=_TTFT_BUCKETS, registry=r)
        self.itl = pc.Histogram("diji_inter_token_latency_seconds", "Time between consecutive tokens of a sequence",
                                buckets=_ITL_BUCKETS, registry=r)
        self.latency = pc.Histogram("diji_request_latency_seconds", "Request arrival to last token",
                                    buckets=_TTFT_BUCKETS, registry=r)
        self.queue_depth = pc.Gauge("diji_queue_depth", "Sequences waiting for a cache slot", registry=r)
        self.running = pc.Gauge("diji_running_batch_size", "Sequences in the decode batch", registry=r)
        self.step_seconds = pc.Histogram("diji_engine_step_seconds", "Duration of one engine step",
                                         ["kind"], buckets=_ITL_BUCKETS, registry=r)
        self.blocked = pc.Counter("diji_policy_blocks", "Requests or outputs blocked by the safety policy",
                                  ["stage"], registry=r)
        self.rate_limited = pc.Counter("diji_rate_limited", "Requests refused with 429", registry=r)
        self.overloaded = pc.Counter("diji_overloaded", "Requests refused with 503 because the queue was full",
                                     registry=r)
        self.sequence_errors = pc.Counter("diji_sequence_errors", "Sequences that failed in the engine "
                                          "(their request got an error; the batch went on)", registry=r)
        self.audit_failures = pc.Counter("diji_audit_failures", "Audit records that could not be written",
                                         registry=r)
        self.engine_alive = pc.Gauge("diji_engine_alive", "1 while the engine thread runs, 0 once it stopped",
                                     registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
