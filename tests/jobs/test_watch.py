"""``watch``: real sources only. Video files this test writes (FFmpeg's libx264, through
PyAV) with known scene changes, an MJPEG server and a snapshot server on 127.0.0.1 that
drop and come back, a folder the test fills, JPEG/PNG files on the CLI's stdin, and a
``video_url`` through the openai client. Cameras cannot be attached here: what can be
(a missing device, option errors) is tested."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image

from lfm2_edge.errors import ImageError
from lfm2_edge.jobs.frames import split_images
from lfm2_edge.jobs.sources import open_source
from lfm2_edge.jobs.watch import awatch, watch
from lfm2_edge.server.config import ServerConfig
from tests.helpers import png_bytes, png_claiming, run_cli, start_server

RED, BLUE, WHITE, GREEN, BLACK, YELLOW = (
    (200, 30, 30),
    (30, 40, 200),
    (240, 240, 240),
    (30, 160, 40),
    (10, 10, 10),
    (220, 210, 40),
)
FAST = {"max_tokens": 3, "temperature": 0.0}


def write_video(path: Path, scenes: list[tuple[tuple[int, int, int], float]], *, fps: int = 30, noise: int = 6) -> Path:
    """An H.264 mp4 of solid-colour scenes (each ``(rgb, seconds)``) with per-frame sensor noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    w, h = 160, 120
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for color, seconds in scenes:
            base = np.full((h, w, 3), color, dtype=np.int16)
            for _ in range(round(seconds * fps)):
                pixels = base + (rng.integers(-noise, noise + 1, (h, w, 1)) if noise else 0)
                frame = av.VideoFrame.from_ndarray(np.clip(pixels, 0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def answers(events: list[Any]) -> list[Any]:
    return [e for e in events if e.event == "answer"]


# -- video files -----------------------------------------------------------------------


def test_a_20s_video_with_5_scene_changes_is_answered_once_per_scene(vm: Any, tmp_path: Path) -> None:
    scenes = [(RED, 4.0), (BLUE, 3.0), (WHITE, 3.0), (GREEN, 4.0), (BLACK, 3.0), (YELLOW, 3.0)]
    video = write_video(tmp_path / "scenes.mp4", scenes)
    encodes = vm.image_encodes
    events = list(watch(vm, str(video), "What colour is it?", realtime=False, **FAST))
    got = answers(events)
    starts = [sum(s for _, s in scenes[:i]) for i in range(len(scenes))]
    assert [round(e.pts, 3) for e in got] == starts  # the first frame of each scene, none other
    assert [e.frame for e in got] == [round(t * 30) for t in starts]
    end = events[-1]
    assert end.event == "end" and end.frames == 600 and end.answers == 6
    # every frame is answered or counted: each answer's skipped are the frames since the last one
    assert [e.skipped for e in got] == [0] + [round((b - a) * 30) - 1 for a, b in itertools.pairwise(starts)]
    assert sum(e.skipped for e in got) + len(got) + end.skipped == 600
    assert all(e.change >= 0.05 for e in got) and all(e.latency_s > 0 for e in got)
    per_image = vm.image_encodes - encodes
    assert per_image == 6 * (per_image // 6) and per_image > 0  # the same tiles for each answered frame
    assert [e.event for e in events if e.event != "answer"] == ["end"]


def test_a_static_60s_video_costs_one_encoder_run(vm: Any, tmp_path: Path) -> None:
    video = write_video(tmp_path / "static.mp4", [(GREEN, 60.0)], fps=30, noise=8)
    encodes = vm.image_encodes
    events = list(watch(vm, str(video), "Anything new?", realtime=False, **FAST))
    assert len(answers(events)) == 1
    assert events[-1].frames == 1800 and events[-1].skipped == 1799
    assert vm.image_encodes - encodes <= 2


def test_realtime_video_the_latest_frame_wins(vm: Any, tmp_path: Path) -> None:
    video = write_video(tmp_path / "rt.mp4", [(RED, 1.5), (BLUE, 1.5)])
    # each answer takes longer than a frame (120 tokens, no end token: ~80 ms here): frames arrive meanwhile
    slow = {"max_tokens": 120, "temperature": 0.0, "stop": []}
    slow["logit_bias"] = {t: -100.0 for t in range(vm._runtime.n_vocab) if vm._runtime.is_end(t)}
    events = list(watch(vm, str(video), "What?", min_change=0.0, **slow))
    got = answers(events)
    frames = [e.frame for e in got]
    assert frames == sorted(set(frames)) and len(got) >= 2
    # frames that arrived while the model answered were replaced, never queued: counted as skipped
    assert sum(e.skipped for e in got) + len(got) + events[-1].skipped == events[-1].frames == 90
    assert any(e.skipped > 0 for e in got)
    captured = [e.captured for e in got]
    assert captured == sorted(captured) and all(e.time >= e.captured for e in got)
    # realtime: frame N is released N/30 s after the first (a frame never waits for a stale one)
    assert all(abs((e.captured - got[0].captured) - (e.pts - got[0].pts)) < 0.5 for e in got)


def test_every_and_when_exec_fire_once_per_matching_scene(vm: Any, tiny: dict[str, Path], tmp_path: Path) -> None:
    video = write_video(tmp_path / "aba.mp4", [(RED, 1.0), (BLUE, 1.0), (RED, 1.0)], noise=0)
    learn = answers(list(watch(vm, str(video), "What?", realtime=False, min_change=0.0, every=0.5, **FAST)))
    assert [e.pts for e in learn] == [i * 0.5 for i in range(6)]  # --every on the video's clock
    red_text = learn[0].text
    pattern = re.escape(red_text)
    assert red_text and all(re.search(pattern, e.text) for e in learn if e.pts < 1 or e.pts >= 2)
    assert not any(re.search(pattern, e.text) for e in learn if 1 <= e.pts < 2), "the scenes must answer apart"
    fired = tmp_path / "fired.txt"
    script = f'cat >> {fired}; echo >> {fired}; echo "$LFM2_EDGE_EVENT" >> {tmp_path / "events.txt"}'
    done = run_cli(
        "watch", str(tiny["F16"]), str(video), "--mmproj", str(tiny["mmproj"]), "-p", "What?",
        "--no-realtime", "--min-change", "0", "--every", "0.5", "--max-tokens", "3", "--temperature", "0",
        "--when", pattern, "--exec", f"sh -c '{script}'", "--cooldown", "0.9",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    got = [e for e in events if e["event"] == "answer"]
    assert [e["text"] for e in got] == [e.text for e in learn]
    assert [e["pts"] for e in got if e.get("fired")] == [0.0, 2.0]  # once per red scene, within the cooldown
    assert sum(1 for e in got if e["matched"]) == 4
    assert fired.read_text(encoding="utf-8") == f"{red_text}\n{red_text}\n"
    sent = [json.loads(line) for line in (tmp_path / "events.txt").read_text().splitlines()]
    assert [e["pts"] for e in sent] == [0.0, 2.0] and sent[0]["text"] == red_text


def test_when_a_schema_field_is_true(vm: Any, tmp_path: Path) -> None:
    video = write_video(tmp_path / "two.mp4", [(RED, 0.5), (WHITE, 0.5)], noise=0)
    schema = {"type": "object", "properties": {"alert": {"type": "boolean"}}, "required": ["alert"]}
    got = answers(
        list(watch(vm, str(video), "Alert?", realtime=False, schema=schema, when="alert", max_tokens=24, temperature=0))
    )
    assert len(got) == 2
    for e in got:
        assert isinstance(e.data, dict) and isinstance(e.data["alert"], bool), e.text
        assert e.matched is e.data["alert"]


def test_awatch_gives_the_same_events(vm: Any, tmp_path: Path) -> None:
    video = write_video(tmp_path / "a.mp4", [(RED, 0.5), (BLUE, 0.5)], noise=0)
    sync = [(e.event, e.frame, e.text) for e in watch(vm, str(video), "What?", realtime=False, **FAST)]

    async def collect() -> list[Any]:
        return [(e.event, e.frame, e.text) async for e in awatch(vm, str(video), "What?", realtime=False, **FAST)]

    assert asyncio.run(collect()) == sync


def test_webhook_posts_each_firing_and_refuses_private_hosts_unless_allowed(vm: Any, tmp_path: Path) -> None:
    from lfm2_edge.jobs.watch import Actions

    posted: list[Any] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    video = write_video(tmp_path / "rb.mp4", [(RED, 0.5), (BLUE, 0.5)], noise=0)
    try:
        actions = Actions(webhook=url, cooldown=0, allow_private=True)
        events = list(watch(vm, str(video), "What?", realtime=False, when=".|^$", actions=actions, **FAST))
        actions.close()
        got = answers(events)
        assert [e.fired for e in got] == [["webhook"], ["webhook"]]
        assert [(p["event"], p["frame"], p["text"]) for p in posted] == [("answer", e.frame, e.text) for e in got]
        refused = Actions(webhook=url, cooldown=0)
        events = list(watch(vm, str(video), "What?", realtime=False, when=".|^$", actions=refused, **FAST))
        refused.close()
        events += list(watch(vm, str(video), "What?", realtime=False, when="x^", actions=refused, **FAST))
        errors = [e.message for e in events if e.event == "error"]
        assert errors and all("private, loopback" in m for m in errors) and len(posted) == 2
    finally:
        server.shutdown()
        server.server_close()


# -- network streams -------------------------------------------------------------------


class Camera:
    """An IP camera on 127.0.0.1: /stream (MJPEG) and /snap (one JPEG a GET).

    The stream's first connection sends red frames, a garbage part and a part claiming
    16000 x 16000 pixels, then drops; for ``down_s`` it answers 503; then blue frames
    without Content-Length, until the client goes."""

    def __init__(self, down_s: float = 3.0) -> None:
        self.down_s, self.connections, self.snaps = down_s, 0, 0
        self.down_until = 0.0
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/snap":
                    camera.snaps += 1
                    body = jpeg(RED if camera.snaps <= 3 else BLUE)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if time.monotonic() < camera.down_until:
                    self.send_error(503)
                    return
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    if camera.connections == 1:
                        for part in [jpeg(RED)] * 5 + [b"this is no jpeg", png_claiming(16000, 16000)]:
                            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                            self.wfile.write(b"Content-Length: %d\r\n\r\n" % len(part) + part + b"\r\n")
                            self.wfile.flush()
                            time.sleep(0.1)
                        camera.down_until = time.monotonic() + camera.down_s
                        return
                    while True:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg(BLUE) + b"\r\n")
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def camera() -> Any:
    cam = Camera()
    yield cam
    cam.close()


def _until(events: Any, done: Any, seconds: float = 90) -> list[Any]:
    seen: list[Any] = []
    deadline = time.monotonic() + seconds
    for event in events:
        seen.append(event)
        if done(seen) or time.monotonic() > deadline:
            break
    events.close()
    return seen


def test_an_mjpeg_stream_that_drops_reconnects_and_bad_frames_are_one_error_each(vm: Any, camera: Camera) -> None:
    def back(seen: list[Any]) -> bool:
        kinds = [e.event for e in seen]
        return "reconnecting" in kinds and kinds[kinds.index("reconnecting") :].count("answer") >= 1

    seen = _until(watch(vm, f"{camera.url}/stream", "What?", allow_private=True, **FAST), back)
    errors = [e.message for e in seen if e.event == "error"]
    assert len(errors) == 2, errors
    assert "is not a JPEG" in errors[0] and "too many pixels" in errors[1]
    kinds = [e.event for e in seen]
    first_drop = kinds.index("reconnecting")
    assert "answer" in kinds[:first_drop]  # red before the drop
    assert kinds.count("reconnecting") >= 2  # the 503s while it was down
    assert camera.connections == 2 and "connected" in kinds[first_drop:]
    assert seen[-1].event == "answer" and seen[-1].change > 0.05  # blue, after it came back


def test_a_snapshot_url_is_polled(vm: Any, camera: Camera) -> None:
    seen = _until(
        watch(vm, f"{camera.url}/snap", "What?", allow_private=True, poll=0.2, **FAST),
        lambda s: len(answers(s)) >= 2,
    )
    got = answers(seen)
    assert len(got) == 2 and camera.snaps >= 4
    assert got[1].skipped >= 1  # the red snapshots after the first were too alike to answer


def test_network_sources_follow_the_remote_image_rules() -> None:
    with pytest.raises(ImageError, match="private, loopback"):
        open_source("http://127.0.0.1:9/stream")
    with pytest.raises(ImageError, match="private, loopback"):
        open_source("rtsp://127.0.0.1:8554/cam")
    src = open_source("rtsp://user:pw@127.0.0.1:8554/cam", allow_private=True)
    assert src.target == "rtsp://user:pw@127.0.0.1:8554/cam" and src.name == "rtsp://127.0.0.1:8554/cam"  # type: ignore[attr-defined]


# -- folders and stdin -----------------------------------------------------------------


def test_a_folder_that_fills(vm: Any, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "old.jpg").write_bytes(jpeg(GREEN))  # there before the watch: left alone
    stop = threading.Event()

    def fill() -> None:
        for name, data in [
            ("a.jpg", jpeg(RED)),
            ("bad.jpg", b"not an image"),
            ("b.png", png_bytes(Image.new("RGB", (96, 64), BLUE))),
        ]:
            time.sleep(1.0)
            (inbox / f".{name}.part").write_bytes(data)
            os.replace(inbox / f".{name}.part", inbox / name)  # as a camera's uploader writes

    writer = threading.Thread(target=fill)
    writer.start()
    seen = _until(watch(vm, str(inbox), "What?", stop=stop, **FAST), lambda s: len(answers(s)) >= 2)
    writer.join()
    assert [e.file for e in answers(seen)] == ["a.jpg", "b.png"]
    errors = [e.message for e in seen if e.event == "error"]
    assert len(errors) == 1 and "bad.jpg" in errors[0]


def test_stdin_stream_garbage_and_a_huge_frame_are_one_error_each(tiny: dict[str, Path]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfm2_edge.cli", "watch", str(tiny["F16"]), "-", "--mmproj", str(tiny["mmproj"]),
         "-p", "What?", "--max-tokens", "3", "--temperature", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:

        def event() -> dict[str, Any]:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, proc.stderr.read() if proc.stderr else ""
            return dict(json.loads(line))

        proc.stdin.write(jpeg(RED))
        proc.stdin.flush()
        assert event()["event"] == "answer"
        proc.stdin.write(jpeg(RED) + b"\x00garbage bytes\xff\x00" + png_bytes(Image.new("RGB", (96, 64), BLUE)))
        proc.stdin.flush()
        got = [event(), event()]
        assert got[0]["event"] == "error" and "no JPEG or PNG" in got[0]["message"]
        assert got[1]["event"] == "answer" and got[1]["skipped"] == 1  # the second red frame
        proc.stdin.write(png_claiming(16000, 16000))
        proc.stdin.close()
        rest = [json.loads(line) for line in proc.stdout.read().splitlines()]
        assert [e["event"] for e in rest] == ["error", "end"] and "too many pixels" in rest[0]["message"]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_stops_cleanly(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfm2_edge.cli", "watch", str(tiny["F16"]), "-", "--mmproj", str(tiny["mmproj"]),
         "-p", "What?", "--max-tokens", "3", "--out", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(jpeg(RED))
    proc.stdin.flush()
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event"] for e in events] == ["answer", "end"]


def test_split_images_cuts_a_stream() -> None:
    red, blue = jpeg(RED), png_bytes(Image.new("RGB", (8, 8), BLUE))
    data = io.BytesIO(b"junk" + red + blue + red[:100])
    items = list(split_images(lambda n: data.read(7)))  # tiny reads: images across many chunks
    assert items[1:3] == [red, blue]
    assert [type(i).__name__ for i in items] == ["Notice", "bytes", "bytes", "Notice"]


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        ("/dev/video99", [], "no camera at /dev/video99"),
        ("7", [], "no camera at /dev/video7"),
        ("nope.mp4", [], "no such file, folder or camera"),
        ("ftp://example.com/x", [], "ftp:// sources are not supported"),
        ("http://127.0.0.1:9/x", [], "private, loopback"),
        ("IMAGE", [], "is one image"),
        ("-", ["--exec", "true"], "--exec and --webhook fire on --when"),
        ("-", ["--when", "(["], "not a regular expression"),
    ],
)
def test_bad_sources_and_options_are_one_line(
    tiny: dict[str, Path], tmp_path: Path, source: str, extra: list[str], message: str
) -> None:
    if source == "IMAGE":
        source = str(tmp_path / "one.jpg")
        Path(source).write_bytes(jpeg(RED))
    done = run_cli("watch", str(tiny["F16"]), source, "--mmproj", str(tiny["mmproj"]), "-p", "x", *extra, stdin="")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# -- video_url in serve ----------------------------------------------------------------


def test_video_url_through_the_openai_client(tiny: dict[str, Path], tmp_path: Path) -> None:
    from openai import BadRequestError, OpenAI

    from lfm2_edge import VisionModel

    video = write_video(tmp_path / "clip.mp4", [(RED, 1.0), (BLUE, 1.0)], fps=10, noise=0)
    uri = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
    still = "data:image/png;base64," + base64.b64encode(png_bytes(Image.new("RGB", (160, 120), RED))).decode()

    def ask(client: OpenAI, *parts: dict[str, Any]) -> Any:
        content = [*parts, {"type": "text", "text": "What happens?"}]
        return client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": content}],
            max_tokens=3,
            temperature=0,  # type: ignore[misc, list-item]
        )

    video_part = {"type": "video_url", "video_url": {"url": uri}}
    image_part = {"type": "image_url", "image_url": {"url": still}}
    for max_images in (4, 1):
        model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=4096)  # the server closes it when it stops
        served = start_server([model], ServerConfig(model_names=["m"], max_images=max_images))
        try:
            client = OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0)
            one_image = ask(client, image_part).usage.prompt_tokens
            answer = ask(client, video_part)
            assert answer.choices[0].message.content is not None
            frames = 2 if max_images == 4 else 1  # 2 s at 1 fps, or the one image place
            per_image = one_image - ask(client).usage.prompt_tokens
            assert answer.usage.prompt_tokens == one_image + (frames - 1) * per_image
            if max_images == 1:
                with pytest.raises(BadRequestError, match="video"):
                    ask(client, image_part, video_part)
            with pytest.raises(BadRequestError, match="could not be decoded"):
                ask(client, {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAAAAAA"}})
        finally:
            served.stop()
