"""``GET /metrics`` (Prometheus text format, ``serve --metrics``) and ``GET /slots``
(llama-server's per-slot view, which load balancers such as Paddler poll).

Metric names are llama-server's where the meaning is the same:

* ``llamacpp:prompt_tokens_total`` prompt tokens evaluated (positions taken from a saved
  state are not: they are ``lfm2_edge_prompt_tokens_cached_total``), with
  ``llamacpp:prompt_seconds_total``; ``llamacpp:tokens_predicted_total`` tokens generated,
  with ``llamacpp:tokens_predicted_seconds_total``;
* ``llamacpp:prompt_tokens_seconds`` / ``llamacpp:predicted_tokens_seconds``: tokens/s over
  the answers finished since the previous scrape (llama-server's buckets, reset by a scrape);
* ``llamacpp:requests_processing`` (slots answering) and ``llamacpp:requests_deferred``
  (requests waiting for a slot); ``llamacpp:kv_cache_tokens`` and
  ``llamacpp:kv_cache_usage_ratio``: positions held by the answers running, of the context.

lfm2-edge's own: ``lfm2_edge_requests_total{outcome}`` (served, cancelled, failed),
``lfm2_edge_requests_rejected_total`` (a full queue: the 429s, Ollama's 503s),
``lfm2_edge_image_encodes_total`` (vision-encoder runs), ``lfm2_edge_image_tokens_total``,
``lfm2_edge_embedding_cache_hits_total`` / ``_misses_total``, ``lfm2_edge_state_cache_bytes``,
``lfm2_edge_embedding_cache_bytes``, ``lfm2_edge_slots_total`` and the histogram
``lfm2_edge_time_to_first_token_seconds`` (from arrival at the engine, waiting included).

``prometheus_client`` is an optional extra (``pip install 'lfm2-edge[metrics]'``): most
users never scrape, and ``serve --metrics`` says what to install when it is absent.
Both routes need the API key when the server has one (like ``/v1``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from lfm2_edge.chat.results import ChatResult
from lfm2_edge.server.admission import Admission
from lfm2_edge.server.config import Serving

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # the optional extra is not installed: /metrics is not served
    prometheus_client = None  # type: ignore[assignment]

__all__ = ["METRICS_MISSING", "Metrics", "available", "router", "slots"]

METRICS_MISSING = "--metrics needs prometheus_client: pip install 'lfm2-edge[metrics]'"
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def available() -> bool:
    return prometheus_client is not None


class Metrics:
    """Counts what the admission in front of the engines refuses and answers (as its
    observer), and reads the engines' and caches' figures at each scrape."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.prompt_seconds = 0.0
        self.cached_tokens = 0
        self.predicted = 0
        self.predicted_seconds = 0.0
        self.image_tokens = 0
        self.rejected = 0
        self.outcomes = {"served": 0, "cancelled": 0, "failed": 0}
        self._bucket = [0, 0.0, 0, 0.0]  # prompt tokens, s; predicted tokens, s: since the last scrape
        self.registry = prometheus_client.CollectorRegistry()
        self.ttft = prometheus_client.Histogram(
            "lfm2_edge_time_to_first_token_seconds",
            "Time from a request reaching the engine to its first token (waiting for a slot included)",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)
        admission.observers.append(self.observe)

    def observe(self, outcome: str, result: ChatResult | None) -> None:
        """The admission's observer: a request refused, or ended with its outcome."""
        with self._lock:
            if outcome == "rejected":
                self.rejected += 1
                return
            self.outcomes[outcome] += 1
        if result is not None:
            self.record(result)

    def record(self, result: ChatResult) -> None:
        u, t = result.usage, result.timings
        evaluated = u.prompt_tokens - u.cached_tokens
        prompt_s = t.prompt_ms / 1000
        predict_s = (max(0.0, t.first_token_ms - t.queue_ms - t.prompt_ms) + t.decode_ms) / 1000
        with self._lock:
            self.prompt_tokens += evaluated
            self.prompt_seconds += prompt_s
            self.cached_tokens += u.cached_tokens
            self.predicted += u.completion_tokens
            self.predicted_seconds += predict_s
            self.image_tokens += u.image_tokens
            b = self._bucket
            b[0] += evaluated
            b[1] += prompt_s
            b[2] += u.completion_tokens
            b[3] += predict_s
        if u.completion_tokens:
            self.ttft.observe(t.first_token_ms / 1000)

    def collect(self) -> Iterator[Any]:
        """The families a scrape reads (prometheus_client's collector protocol)."""
        engines = [m.engine for m in self.admission.models]
        with self._lock:
            bucket, self._bucket = self._bucket, [0, 0.0, 0, 0.0]
            counters = [
                ("llamacpp:prompt_tokens", "Number of prompt tokens processed.", self.prompt_tokens),
                ("llamacpp:prompt_seconds", "Prompt process time", self.prompt_seconds),
                ("llamacpp:tokens_predicted", "Number of generation tokens processed.", self.predicted),
                ("llamacpp:tokens_predicted_seconds", "Predict process time", self.predicted_seconds),
                ("lfm2_edge_prompt_tokens_cached", "Prompt positions taken from a saved state", self.cached_tokens),
                ("lfm2_edge_image_tokens", "Prompt positions that were image tokens", self.image_tokens),
                ("lfm2_edge_requests_rejected", "Requests refused because the queue was full", self.rejected),
            ]
            outcomes = dict(self.outcomes)
        projectors = [e.rt.projector for e in engines if e.rt.projector is not None]
        counters += [
            ("lfm2_edge_image_encodes", "Vision-encoder runs (image tiles not from the cache)",
             sum(p.encodes for p in projectors)),
            ("lfm2_edge_embedding_cache_hits", "Image embeddings taken from the cache",
             sum(p.embeddings.hits for p in projectors)),
            ("lfm2_edge_embedding_cache_misses", "Image embeddings not in the cache",
             sum(p.embeddings.misses for p in projectors)),
            ("lfm2_edge_decode_steps", "Batched decode steps", sum(e.steps for e in engines)),
        ]  # fmt: skip
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        requests = CounterMetricFamily("lfm2_edge_requests", "Requests that reached the engine", labels=["outcome"])
        for outcome, n in outcomes.items():
            requests.add_metric([outcome], n)
        yield requests
        n_ctx = sum(e.rt.n_ctx for e in engines)
        kv = sum(job.pos for e in engines for job in list(getattr(e, "_active", ())))
        gauges = [
            ("llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s",
             bucket[0] / bucket[1] if bucket[1] > 0 else 0.0),
            ("llamacpp:predicted_tokens_seconds", "Average generation throughput in tokens/s",
             bucket[2] / bucket[3] if bucket[3] > 0 else 0.0),
            ("llamacpp:requests_processing", "Number of requests processing", sum(e.busy for e in engines)),
            ("llamacpp:requests_deferred", "Number of requests deferred", sum(e.waiting for e in engines)),
            ("llamacpp:kv_cache_tokens", "KV-cache tokens.", kv),
            ("llamacpp:kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
             kv / n_ctx if n_ctx else 0.0),
            ("lfm2_edge_slots_total", "Sequences decoded together, in all replicas", sum(e.n_slots for e in engines)),
            ("lfm2_edge_state_cache_bytes", "Saved conversation states held",
             sum(e.states.nbytes for e in engines)),
            ("lfm2_edge_embedding_cache_bytes", "Image embeddings held", sum(p.embeddings.nbytes for p in projectors)),
        ]  # fmt: skip
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)


def slots(admission: Admission) -> list[dict[str, Any]]:
    """llama-server's ``/slots``: one entry per sequence of every replica, ``id``
    counting across them; ``is_processing`` while a request holds it."""
    out: list[dict[str, Any]] = []
    for replica, model in enumerate(admission.models):
        engine = model.engine
        free = set(getattr(engine, "_free", ()))
        jobs = {job.seq: job for job in list(getattr(engine, "_active", ()))}
        for seq in range(engine.n_slots):
            job = jobs.get(seq)
            transcript = getattr(job, "out", None)
            out.append(
                {
                    "id": len(out),
                    "id_task": -1,
                    "n_ctx": engine.rt.n_ctx_seq,
                    "speculative": False,
                    "is_processing": seq not in free,
                    "replica": replica,
                    "seq": seq,
                    "state": job.phase if job is not None else ("idle" if seq in free else "starting"),
                    "n_prompt_tokens": job.n_prompt if job is not None else 0,
                    "n_cached_tokens": job.cached_tokens if job is not None else 0,
                    "n_decoded": transcript.n_out if transcript is not None else 0,
                    "n_past": job.pos if job is not None else 0,
                }
            )
    return out


def router(serving: Serving) -> APIRouter:
    """``/slots`` always; ``/metrics`` with ``config.metrics``."""
    api = APIRouter()
    admission = serving.admission

    @api.get("/slots")
    async def get_slots() -> list[dict[str, Any]]:
        return slots(admission)

    if serving.config.metrics:
        if prometheus_client is None:
            raise RuntimeError(METRICS_MISSING)
        metrics = Metrics(admission)

        @api.get("/metrics")
        async def get_metrics() -> Response:
            return Response(
                prometheus_client.generate_latest(metrics.registry), media_type=prometheus_client.CONTENT_TYPE_LATEST
            )

    return api
