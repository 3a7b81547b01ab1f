"""The Ray path of ``lfm2-edge batch`` (``pip install 'lfm2-edge[ray]'``): on a local Ray
started here, the same records as the local runner (greedy), resumed the same way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lfm2_edge import VisionModel
from lfm2_edge.jobs import ray as jobs_ray
from lfm2_edge.jobs.batch import BatchOptions, LocalBackend, Runner
from lfm2_edge.jobs.inputs import collect
from lfm2_edge.jobs.outputs import make_writer
from tests.helpers import noise_image

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'lfm2-edge[ray]'")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _same(record: dict[str, Any]) -> tuple[Any, ...]:
    return record["key"], record.get("answer"), record.get("finish_reason"), record["error"]


def test_the_ray_path_gives_the_local_records_and_resumes(
    tiny: dict[str, Path], tmp_path: Path, local_ray: None
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        noise_image(48 + 8 * i, 40, seed=i).save(folder / f"p{i}.png")
    (folder / "bad.jpg").write_text("not an image")
    job = collect([str(folder)])
    opts = BatchOptions(prompt="What?", options={"max_tokens": 4, "temperature": 0})
    kwargs = {"mmproj_path": str(tiny["mmproj"]), "n_ctx": 2 * 2048, "n_seq_max": 2, "n_threads": 1}
    with VisionModel(tiny["F16"], **kwargs) as vm:
        local = {r["id"]: _same(r) for r in Runner(LocalBackend(vm), opts).run(job.items)}
    out = tmp_path / "ray.jsonl"
    writer = make_writer(out, kind="images", schema=None, sidecar=None)
    try:
        summary = jobs_ray.run(str(tiny["F16"]), kwargs, job, writer, opts, actors=2)
    finally:
        writer.close()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"]: _same(r) for r in records} == local
    assert (summary.answered, summary.failed) == (5, 1)
    writer = make_writer(out, kind="images", schema=None, sidecar=None)
    try:
        again = jobs_ray.run(str(tiny["F16"]), kwargs, job, writer, opts, actors=2)
    finally:
        writer.close()
    assert again.skipped == 6 and len(out.read_text().splitlines()) == 6
