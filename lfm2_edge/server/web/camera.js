// The live-camera page: a frame of the camera (or of a video file), a prompt, an
// interval. One request at a time: the next frame is taken only once the answer to the
// previous one is in (latest frame wins, never a queue), and shown over the video with
// its latency.
"use strict";

const $ = (id) => document.getElementById(id);
let config = { model: "", defaults: {} };
let loop = null; // {stop: AbortController} while running
let answers = 0;

async function openSource() {
  const video = $("video");
  if ($("source").value === "camera") {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia)
      throw new Error("This browser gives no camera to plain http pages other than localhost: open the page over https, or use a video file.");
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } }, audio: false });
    video.srcObject = stream;
  } else {
    const file = $("file").files[0];
    if (!file) throw new Error("Choose a video file first.");
    video.srcObject = null;
    video.src = URL.createObjectURL(file);
    video.loop = true;
  }
  await video.play();
  if (!video.videoWidth) await new Promise((r) => video.addEventListener("loadedmetadata", r, { once: true }));
}

function closeSource() {
  const video = $("video");
  if (video.srcObject) for (const t of video.srcObject.getTracks()) t.stop();
  video.srcObject = null;
  if (video.src) URL.revokeObjectURL(video.src);
  video.removeAttribute("src");
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });

async function run(stop) {
  while (!stop.signal.aborted) {
    const began = performance.now();
    const frame = API.imageData($("video"), parseInt($("frame-side").value, 10) || 512, 0.8); // the latest, now
    let text = "";
    try {
      const end = await API.streamChat(
        {
          model: config.model,
          messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: frame } }, { type: "text", text: $("prompt").value }] }],
          max_tokens: parseInt($("max-tokens").value, 10) || 48,
          temperature: config.defaults.temperature,
        },
        (piece) => {
          text += piece;
          $("answer").textContent = text;
        },
        stop.signal
      );
      answers++;
      const t = end.timings || {};
      $("answer").textContent = text || "(no answer)";
      $("latency").textContent = Math.round(performance.now() - began) + " ms" + (t.first_token_ms !== undefined ? " \u00b7 first token " + Math.round(t.first_token_ms) + " ms" : "");
      $("count").textContent = answers + " answers";
      document.body.dataset.answers = answers;
      API.showError("");
    } catch (err) {
      if (err.name === "AbortError") return;
      API.showError(API.explain(err));
      await sleep(2000, stop.signal); // an error waits a moment before the next frame
    }
    const wait = (parseInt($("interval").value, 10) || 0) - (performance.now() - began);
    if (wait > 0) await sleep(wait, stop.signal);
  }
}

async function toggle() {
  if (loop) {
    loop.abort();
    loop = null;
    closeSource();
    $("toggle").textContent = "Start";
    return;
  }
  API.showError("");
  try {
    await openSource();
  } catch (err) {
    API.showError(err.name === "NotAllowedError" ? "The camera was not allowed: allow it in the browser, or use a video file." : err.message);
    return;
  }
  loop = new AbortController();
  $("toggle").textContent = "Stop";
  run(loop);
}

document.addEventListener("DOMContentLoaded", async () => {
  $("controls").addEventListener("submit", (ev) => {
    ev.preventDefault();
    toggle();
  });
  $("source").addEventListener("change", () => ($("file-label").hidden = $("source").value !== "file"));
  try {
    config = await API.json("/web/config.json");
    $("model").textContent = config.model;
    if (!config.vision) API.showError("This model has no vision projector: the camera page needs one.");
    document.body.dataset.ready = "1";
  } catch (err) {
    API.showError(API.explain(err));
  }
});
