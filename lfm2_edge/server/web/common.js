// What the chat and camera pages share: the API key (asked once, kept for the session),
// calls to this server only (relative URLs), the SSE reader, the one-line error.
"use strict";

const API = (() => {
  const KEY = "lfm2-edge.api-key";
  let askPending = null;

  function key() {
    return sessionStorage.getItem(KEY) || "";
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (key()) h.Authorization = "Bearer " + key();
    return h;
  }

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code || "";
    }
  }

  // one readable line for an error answer (OpenAI's {"error": {"message": ...}} body)
  async function errorOf(resp) {
    let message = resp.status + " " + resp.statusText;
    let code = "";
    try {
      const body = await resp.json();
      if (body && body.error) {
        message = body.error.message || message;
        code = body.error.code || "";
      }
    } catch (_) {
      /* not JSON: the status line says it */
    }
    return new ApiError(resp.status, message, code);
  }

  function explain(err) {
    if (err.name === "AbortError") return "stopped";
    if (err.code === "context_length_exceeded")
      return err.message + " Start a new conversation, remove images, or lower max tokens in the settings.";
    if (err.status === 401) return "This server needs its API key (serve --api-key): enter it to continue.";
    if (err instanceof TypeError) return "The server at " + location.host + " does not answer (" + err.message + ").";
    return err.message;
  }

  // the key form: shown on a 401, resolves once a key was entered
  function askKey(reason) {
    if (askPending) return askPending;
    const dialog = document.getElementById("key-dialog");
    const input = document.getElementById("key-input");
    document.getElementById("key-reason").textContent = reason;
    dialog.hidden = false;
    input.value = "";
    input.focus();
    askPending = new Promise((resolve) => {
      document.getElementById("key-form").onsubmit = (ev) => {
        ev.preventDefault();
        sessionStorage.setItem(KEY, input.value.trim());
        dialog.hidden = true;
        askPending = null;
        resolve();
      };
    });
    return askPending;
  }

  // fetch with the key; a 401 asks for the key (again, if the one given was wrong) and retries
  async function call(path, init) {
    for (;;) {
      const resp = await fetch(path, Object.assign({}, init, { headers: headers(init && init.headers) }));
      if (resp.status !== 401) return resp;
      const err = await errorOf(resp);
      showError(explain(err));
      await askKey(key() ? "That key was refused; enter the key this server was started with." : explain(err));
      showError("");
    }
  }

  async function json(path) {
    const resp = await call(path);
    if (!resp.ok) throw await errorOf(resp);
    return resp.json();
  }

  // POST /v1/chat/completions streaming: onDelta(text) per piece; resolves to the final
  // {usage, timings, finish_reason}; rejects with an ApiError (or AbortError on signal)
  async function streamChat(body, onDelta, signal) {
    const resp = await call("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign({}, body, { stream: true, stream_options: { include_usage: true } })),
      signal,
    });
    if (!resp.ok) throw await errorOf(resp);
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    const end = { usage: null, timings: null, finish_reason: null, done: false };
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        if (!end.done) throw new ApiError(502, "The server ended the answer before its end; see its log.");
        return end;
      }
      buffer += decoder.decode(value, { stream: true });
      let at;
      while ((at = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, at);
        buffer = buffer.slice(at + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") end.done = true; // read on to the end: then the request is over
          if (end.done) continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError(400, chunk.error.message || String(chunk.error), chunk.error.code);
          if (chunk.usage) end.usage = chunk.usage;
          if (chunk.timings) end.timings = chunk.timings;
          for (const choice of chunk.choices || []) {
            if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
            if (choice.finish_reason) end.finish_reason = choice.finish_reason;
          }
        }
      }
    }
  }

  function showError(text) {
    const line = document.getElementById("error");
    line.textContent = text;
    line.hidden = !text;
  }

  // an image file (or camera frame) as a JPEG data: URI whose longer side is at most maxSide
  function imageData(source, maxSide, quality) {
    const w = source.videoWidth || source.naturalWidth || source.width;
    const h = source.videoHeight || source.naturalHeight || source.height;
    const scale = Math.min(1, maxSide / Math.max(w, h));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(w * scale));
    canvas.height = Math.max(1, Math.round(h * scale));
    canvas.getContext("2d").drawImage(source, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/jpeg", quality || 0.9);
  }

  function fileImage(file, maxSide) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(file);
      const img = new Image();
      img.onload = () => {
        URL.revokeObjectURL(url);
        resolve(imageData(img, maxSide));
      };
      img.onerror = () => {
        URL.revokeObjectURL(url);
        reject(new Error(file.name + " is not an image this browser can decode"));
      };
      img.src = url;
    });
  }

  return { call, json, streamChat, showError, explain, imageData, fileImage, ApiError };
})();
