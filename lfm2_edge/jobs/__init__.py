"""Jobs that drive a model for a long time.

Batch jobs: many images (or an OpenAI Batch file) in, one answer per item out.

* :mod:`.inputs`: files, folders, globs, CSV / JSONL manifests, OpenAI Batch input;
* :mod:`.outputs`: JSONL, CSV, OpenAI Batch output and sidecar writers (whole lines,
  resumable);
* :mod:`.batch`: the runner (every engine slot busy, images decoded ahead) and
  :func:`~lfm2_edge.jobs.batch.batch`, the Python entry for apps;
* :mod:`.ray`: the same job as a Ray Data pipeline (``pip install lfm2-edge[ray]``).

``lfm2-edge batch`` (:mod:`lfm2_edge.cli.batch`) is the command line over them.

Watch jobs: a camera, a video or a stream in, answers out as events.

* :mod:`.sources`: cameras, video files, RTSP / MJPEG / snapshot URLs, folders, stdin;
* :mod:`.frames` and :mod:`.feed`: frames decoded when looked at, the change measure,
  the one slot the latest frame waits in;
* :mod:`.watch`: :func:`~lfm2_edge.jobs.watch.watch` / ``awatch`` for apps, the gates,
  the events and the actions (``--exec``, ``--webhook``).

``lfm2-edge watch`` (:mod:`lfm2_edge.cli.watch`) is the command line over them.
"""
