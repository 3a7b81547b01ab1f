"""The same batch job on a Ray cluster: a Ray Data pipeline whose map stage is an actor
pool, one lfm2-edge model (with its slots) per actor.

``pip install 'lfm2-edge[ray]'``, then ``lfm2-edge batch MODEL INPUT... --out FILE
--ray`` (a local Ray) or ``--ray --ray-address HEAD:6379`` (a cluster: ``ray start
--head`` on one node, ``ray start --address HEAD:6379`` on the others; docs/deploy.md).
From Python: :func:`run`.

The driver collects the items, skips those the output already holds (the same resume
keys as a local run), and sends the rest through ``map_batches``: each actor loads the
model once and answers its batch with the local runner (every slot busy); the records
come back to the driver, which writes them with the same writers as a local run, as
they arrive. Image paths must be readable on every node (a shared file system, or the
same copy at the same path), and so must the model files.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from typing import Any

import lfm2_edge
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.jobs.batch import BatchOptions, LocalBackend, Runner, Summary, item_key
from lfm2_edge.jobs.inputs import Inputs, Item
from lfm2_edge.jobs.outputs import Writer

__all__ = ["RayMissing", "run"]


class RayMissing(Lfm2EdgeError):
    """Ray is not installed."""


def _opts_dict(opts: BatchOptions) -> dict[str, Any]:
    return {f.name: getattr(opts, f.name) for f in fields(opts)}


class Answerer:
    """A Ray actor: one model, answering batches of items with the local runner."""

    def __init__(self, model_path: str, model_kwargs: dict[str, Any], opts: dict[str, Any], kind: str) -> None:
        self.model = lfm2_edge.VisionModel(model_path, **model_kwargs)
        self.opts = BatchOptions(**opts)
        self.kind = kind

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        items = [Item(**json.loads(str(text))) for text in batch["item"]]
        runner = Runner(LocalBackend(self.model), self.opts, kind=self.kind)
        return {"record": [json.dumps(r, ensure_ascii=False) for r in runner.run(items)]}


def run(
    model_path: str,
    model_kwargs: dict[str, Any],
    job: Inputs,
    writer: Writer | None,
    opts: BatchOptions,
    *,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0,
    on_record: Any = None,
) -> Summary:
    """Answer ``job``'s items on Ray and write their records with ``writer``.

    ``model_kwargs`` are :class:`~lfm2_edge.VisionModel`'s (``mmproj_path``,
    ``n_seq_max``, ``n_ctx``, ``n_threads``...). ``actors`` defaults to the cluster's
    CPUs over ``cpus_per_actor`` (the model's ``n_threads``, else 1), or its GPUs over
    ``gpus_per_actor``. ``address``: the cluster (``None``: a Ray already initialised,
    else a local one).
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayMissing("--ray needs Ray: pip install 'lfm2-edge[ray]'") from None
    t0 = time.perf_counter()
    summary = Summary(total=len(job.items))
    done = writer.done() if writer is not None and not opts.retry_errors else {}
    todo = [item for item in job.items if done.get(item.id) != item_key(item, opts)]
    summary.skipped = len(job.items) - len(todo)
    if not todo:
        summary.seconds = time.perf_counter() - t0
        return summary
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    cpus = cpus_per_actor or float(model_kwargs.get("n_threads") or 1)
    if actors is None:
        resources = ray.cluster_resources()
        if gpus_per_actor:
            actors = max(1, int(resources.get("GPU", 0) // gpus_per_actor))
        else:
            actors = max(1, int(resources.get("CPU", 1) // cpus))
    slots = int(model_kwargs.get("n_seq_max") or 1)
    ds = ray.data.from_items([{"item": json.dumps(asdict(item), ensure_ascii=False)} for item in todo])
    ds = ds.map_batches(
        Answerer,
        fn_constructor_kwargs={
            "model_path": model_path,
            "model_kwargs": model_kwargs,
            "opts": _opts_dict(opts),
            "kind": job.kind,
        },
        batch_size=max(1, 2 * slots),
        concurrency=min(actors, len(todo)),
        num_cpus=cpus,
        num_gpus=gpus_per_actor or None,
    )
    try:
        for row in ds.iter_rows():
            record = json.loads(row["record"])
            if writer is not None:
                writer.write(record)
            if record.get("error") is None:
                summary.answered += 1
            else:
                summary.failed += 1
            summary.image_encodes += int((record.get("usage") or {}).get("image_encodes", 0))
            if on_record is not None:
                on_record(record)
            if opts.fail_fast and record.get("error") is not None:
                summary.stopped = "fail-fast"
                break
    except KeyboardInterrupt:
        summary.stopped = "interrupted"
    summary.interrupted = max(0, summary.total - summary.answered - summary.failed - summary.skipped)
    summary.seconds = time.perf_counter() - t0
    return summary
