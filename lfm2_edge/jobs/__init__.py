"""Batch jobs: many images (or an OpenAI Batch file) in, one answer per item out.

* :mod:`.inputs`: files, folders, globs, CSV / JSONL manifests, OpenAI Batch input;
* :mod:`.outputs`: JSONL, CSV, OpenAI Batch output and sidecar writers (whole lines,
  resumable);
* :mod:`.batch`: the runner (every engine slot busy, images decoded ahead) and
  :func:`~lfm2_edge.jobs.batch.batch`, the Python entry for apps;
* :mod:`.ray`: the same job as a Ray Data pipeline (``pip install lfm2-edge[ray]``).

``lfm2-edge batch`` (:mod:`lfm2_edge.cli.batch`) is the command line over them.
"""
