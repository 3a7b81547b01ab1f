// The chat page: conversations kept in localStorage, images by drop / paste / picker /
// camera, answers streamed from this server's /v1/chat/completions, with Stop.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "lfm2-edge.conversations";
const CURRENT = "lfm2-edge.current";
const SETTINGS = "lfm2-edge.settings";
const IMAGE_SIDE = 1024; // the page's default image budget: tiles of 512 px, at most 2x2 of them

let config = { model: "", vision: true, max_images: 1, defaults: {} };
let conversations = [];
let current = null; // the open conversation
let attached = []; // data: URIs waiting for the next message
let running = null; // the AbortController of the answer streaming in

// -- storage ----------------------------------------------------------------------------

function load() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE) || "[]");
    conversations = Array.isArray(list) ? list.filter((c) => c && Array.isArray(c.messages)) : [];
  } catch (_) {
    conversations = [];
  }
  const id = localStorage.getItem(CURRENT);
  current = conversations.find((c) => c.id === id) || null;
}

function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(conversations));
    localStorage.setItem(CURRENT, current ? current.id : "");
  } catch (err) {
    API.showError("The browser's storage is full: delete old conversations to keep new ones (" + err.name + ").");
  }
}

function settings() {
  const d = config.defaults;
  let s = {};
  try {
    s = JSON.parse(localStorage.getItem(SETTINGS) || "{}") || {};
  } catch (_) {
    s = {};
  }
  return {
    system_prompt: typeof s.system_prompt === "string" ? s.system_prompt : d.system_prompt || "",
    temperature: Number.isFinite(s.temperature) ? s.temperature : d.temperature,
    max_tokens: Number.isFinite(s.max_tokens) ? s.max_tokens : d.max_tokens,
    image_side: Number.isFinite(s.image_side) ? s.image_side : IMAGE_SIDE,
  };
}

// -- the conversation list --------------------------------------------------------------

function newConversation() {
  current = null;
  attached = [];
  save();
  draw();
  $("input").focus();
}

function drawList() {
  const ul = $("convs");
  ul.textContent = "";
  for (const c of [...conversations].sort((a, b) => b.updated - a.updated)) {
    const li = document.createElement("li");
    if (current && c.id === current.id) li.className = "current";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conv";
    open.textContent = c.title || "(untitled)";
    open.addEventListener("click", () => {
      if (running) return;
      current = c;
      save();
      draw();
      document.body.classList.remove("side-open");
    });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "del";
    del.title = "Delete this conversation";
    del.textContent = "\u00d7";
    del.addEventListener("click", () => {
      if (running && current === c) return;
      conversations = conversations.filter((x) => x !== c);
      if (current === c) current = null;
      save();
      draw();
    });
    li.append(open, del);
    ul.appendChild(li);
  }
}

// -- messages ---------------------------------------------------------------------------

function figuresText(f) {
  if (!f) return "";
  const parts = [];
  if (f.decode_tok_s !== undefined) parts.push(f.decode_tok_s.toFixed(1) + " tok/s");
  if (f.first_token_ms !== undefined) parts.push("first token " + Math.round(f.first_token_ms) + " ms");
  if (f.prompt_tokens !== undefined) parts.push(f.prompt_tokens + " prompt tokens (" + f.cached_tokens + " cached)");
  if (f.image_encodes !== undefined) parts.push(f.image_encodes + " image encodes");
  if (f.completion_tokens !== undefined) parts.push(f.completion_tokens + " tokens out");
  return parts.join(" \u00b7 ");
}

// a message's images: data: URIs only (stored data is data, never a URL to fetch)
const images = (m) => (m.images || []).filter((src) => /^data:image\/(png|jpeg|webp|gif);base64,/.test(src));

function messageNode(m) {
  const div = document.createElement("div");
  div.className = "msg " + m.role;
  for (const src of images(m)) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = "image";
    img.src = src;
    div.appendChild(img);
  }
  const body = document.createElement("div");
  body.className = "body";
  if (m.role === "assistant") body.appendChild(MD.render(m.text));
  else body.textContent = m.text;
  div.appendChild(body);
  if (m.role === "assistant") {
    const foot = document.createElement("div");
    foot.className = "figures";
    foot.textContent = [m.stopped ? "stopped" : "", figuresText(m.figures)].filter(Boolean).join(" \u00b7 ");
    if (m.figures) {
      foot.dataset.cached = m.figures.cached_tokens;
      foot.dataset.encodes = m.figures.image_encodes;
    }
    div.appendChild(foot);
  }
  return div;
}

function drawMessages() {
  const box = $("messages");
  box.textContent = "";
  const messages = current ? current.messages : [];
  if (!messages.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.id = "empty";
    p.textContent = "Ask something. Drop, paste or pick an image to ask about it.";
    box.appendChild(p);
  }
  for (const m of messages) box.appendChild(messageNode(m));
  box.scrollTop = box.scrollHeight;
}

function drawAttached() {
  const box = $("attached");
  box.textContent = "";
  attached.forEach((src, i) => {
    const span = document.createElement("span");
    span.className = "chip";
    const img = document.createElement("img");
    img.src = src;
    img.alt = "attached image " + (i + 1);
    const x = document.createElement("button");
    x.type = "button";
    x.textContent = "\u00d7";
    x.title = "Remove";
    x.addEventListener("click", () => {
      attached.splice(i, 1);
      drawAttached();
    });
    span.append(img, x);
    box.appendChild(span);
  });
}

function draw() {
  drawList();
  drawMessages();
  drawAttached();
}

// -- images -----------------------------------------------------------------------------

async function addFiles(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/"));
  if (!images.length) return;
  if (!config.vision) {
    API.showError("This model has no vision projector: it answers text only.");
    return;
  }
  for (const f of images) {
    if (attached.length >= config.max_images) {
      API.showError(
        "This server takes " + config.max_images + " image(s) per message (serve --limit-mm-per-prompt '{\"image\": N}')."
      );
      break;
    }
    try {
      attached.push(await API.fileImage(f, settings().image_side));
      API.showError("");
    } catch (err) {
      API.showError(err.message);
    }
  }
  drawAttached();
}

// -- asking -----------------------------------------------------------------------------

function apiMessages(messages) {
  const out = [];
  const system = settings().system_prompt.trim();
  if (system) out.push({ role: "system", content: system });
  for (const m of messages) {
    if (m.role === "user") {
      const content = images(m).map((url) => ({ type: "image_url", image_url: { url } }));
      content.push({ type: "text", text: m.text });
      out.push({ role: "user", content });
    } else if (m.text) {
      out.push({ role: "assistant", content: m.text });
    }
  }
  return out;
}

async function ask(text) {
  if (running) return;
  if (!text.trim() && !attached.length) return;
  if (!current) {
    current = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "", updated: 0, messages: [] };
    conversations.push(current);
  }
  const conv = current;
  conv.title = conv.title || (text.trim() || "image").slice(0, 48);
  conv.updated = Date.now();
  conv.messages.push({ role: "user", text, images: attached });
  attached = [];
  const answer = { role: "assistant", text: "", figures: null };
  const s = settings();
  const body = { model: config.model, messages: apiMessages(conv.messages), temperature: s.temperature };
  if (s.max_tokens) body.max_tokens = s.max_tokens;
  conv.messages.push(answer);
  save();
  draw();
  $("input").value = "";
  API.showError("");

  const node = $("messages").lastElementChild;
  const out = node.querySelector(".body");
  const foot = node.querySelector(".figures");
  foot.textContent = "\u2026";
  running = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstAt = null;
  let pending = false;
  const paint = () => {
    pending = false;
    out.textContent = "";
    out.appendChild(MD.render(answer.text));
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  try {
    const end = await API.streamChat(
      body,
      (piece) => {
        if (firstAt === null) firstAt = performance.now();
        answer.text += piece;
        if (!pending) {
          pending = true;
          requestAnimationFrame(paint);
        }
      },
      running.signal
    );
    const u = end.usage || {};
    const t = end.timings || {};
    answer.figures = {
      prompt_tokens: u.prompt_tokens,
      completion_tokens: u.completion_tokens,
      cached_tokens: (u.prompt_tokens_details || {}).cached_tokens || 0,
      image_encodes: t.image_encodes,
      decode_tok_s: t.decode_tok_s,
      first_token_ms: t.first_token_ms !== undefined ? t.first_token_ms : firstAt && firstAt - started,
      finish_reason: end.finish_reason,
    };
    if (end.finish_reason === "length") answer.figures.note = "cut at max tokens";
  } catch (err) {
    if (err.name === "AbortError") answer.stopped = true;
    else {
      API.showError(API.explain(err));
      // a failed turn is not kept: the question goes back into the box, the images with it
      conv.messages.splice(conv.messages.length - 2, 2);
      const asked = conv.messages.length === 0;
      $("input").value = text;
      attached = body.messages.at(-1).content.filter((p) => p.type === "image_url").map((p) => p.image_url.url);
      if (asked) conversations = conversations.filter((c) => c !== conv);
      if (asked) current = null;
    }
  } finally {
    running = null;
    setBusy(false);
    save();
    draw();
  }
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

// -- settings ---------------------------------------------------------------------------

function drawSettings() {
  const s = settings();
  const d = config.defaults;
  $("s-system").value = s.system_prompt;
  $("s-temperature").value = s.temperature;
  $("s-max-tokens").value = s.max_tokens || "";
  $("s-image-side").value = s.image_side;
  const shown = {
    system_prompt: d.system_prompt ? "card: \u201c" + d.system_prompt + "\u201d" : "card: none",
    temperature: "card: " + d.temperature,
    max_tokens: "server: " + (d.max_tokens || "none"),
    image_side: "page: " + IMAGE_SIDE,
  };
  for (const small of document.querySelectorAll(".default")) small.textContent = "(" + shown[small.dataset.for] + ")";
  const notes = [];
  if (d.image_min_tokens) notes.push("The server encodes each image tile into " + d.image_min_tokens + "\u2013" + d.image_max_tokens + " tokens.");
  if (config.context_size) notes.push("Context: " + config.context_size + " tokens per conversation.");
  notes.push("Up to " + config.max_images + " image(s) per message.");
  $("s-note").textContent = notes.join(" ");
}

function readSettings() {
  const num = (id) => {
    const v = parseFloat($(id).value);
    return Number.isFinite(v) ? v : undefined;
  };
  const s = {
    system_prompt: $("s-system").value,
    temperature: num("s-temperature"),
    max_tokens: num("s-max-tokens") ? Math.round(num("s-max-tokens")) : undefined,
    image_side: num("s-image-side") ? Math.round(num("s-image-side")) : undefined,
  };
  localStorage.setItem(SETTINGS, JSON.stringify(s));
}

// -- start ------------------------------------------------------------------------------

function wire() {
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    ask($("input").value);
  });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      ask($("input").value);
    }
  });
  $("stop").addEventListener("click", () => running && running.abort());
  $("new").addEventListener("click", newConversation);
  $("menu").addEventListener("click", () => document.body.classList.toggle("side-open"));
  for (const id of ["pick", "shoot"])
    $(id).addEventListener("change", (ev) => {
      addFiles(ev.target.files);
      ev.target.value = "";
    });
  document.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    document.body.classList.add("dropping");
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dropping"));
  document.addEventListener("drop", (ev) => {
    ev.preventDefault();
    document.body.classList.remove("dropping");
    if (ev.dataTransfer) addFiles(ev.dataTransfer.files);
  });
  document.addEventListener("paste", (ev) => {
    if (ev.clipboardData && ev.clipboardData.files.length) {
      ev.preventDefault();
      addFiles(ev.clipboardData.files);
    }
  });
  $("settings-open").addEventListener("click", () => {
    drawSettings();
    $("settings").hidden = !$("settings").hidden;
  });
  $("s-close").addEventListener("click", () => {
    readSettings();
    $("settings").hidden = true;
  });
  $("s-reset").addEventListener("click", () => {
    localStorage.removeItem(SETTINGS);
    drawSettings();
  });
  for (const id of ["s-system", "s-temperature", "s-max-tokens", "s-image-side"]) $(id).addEventListener("change", readSettings);
}

async function start() {
  wire();
  load();
  draw();
  try {
    config = await API.json("/web/config.json");
    $("model").textContent = config.model;
    document.title = config.model + " \u00b7 lfm2-edge";
    for (const id of ["pick-label", "shoot-label"]) $(id).hidden = !config.vision || !config.max_images;
    document.body.dataset.ready = "1";
  } catch (err) {
    API.showError(API.explain(err));
  }
}

document.addEventListener("DOMContentLoaded", start);
