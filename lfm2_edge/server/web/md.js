// Markdown for untrusted text (model output, stored conversations).
// Nothing here parses HTML: the text is cut into blocks and spans and every piece of it
// becomes a DOM text node (textContent), so "<img onerror=...>" stays those characters.
// Whitelist: paragraphs, line breaks, # headings, - / 1. lists, > quotes, ``` code
// blocks (with a copy button), `code`, **bold**, *italic*, and [text](http(s) URL)
// links (rel=noopener noreferrer, opened in a new tab); any other link is plain text.
"use strict";

const MD = (() => {
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function safeHref(url) {
    // only absolute http(s) URLs; a URL that does not parse, or any other scheme, is no link
    try {
      const u = new URL(url);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (_) {
      return null;
    }
  }

  // inline spans of one line of text, appended to parent as text nodes and whitelisted elements
  function inline(parent, text) {
    const re = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([^*]+?)\*\*|__([^_]+?)__|\*([^*\s][^*]*?)\*|\[([^\]\n]*)\]\(([^)\s]*)\)/g;
    let last = 0;
    let m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      if (m[1]) parent.appendChild(el("code", null, m[2]));
      else if (m[3] !== undefined || m[4] !== undefined) inline(parent.appendChild(el("strong")), m[3] ?? m[4]);
      else if (m[5] !== undefined) inline(parent.appendChild(el("em")), m[5]);
      else {
        const href = safeHref(m[7]);
        if (href) {
          const a = el("a");
          a.href = href;
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          a.title = href;
          inline(a, m[6] || href);
          parent.appendChild(a);
        } else {
          parent.appendChild(document.createTextNode(m[0])); // shown as written, inert
        }
      }
      last = re.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function lines(parent, textLines) {
    textLines.forEach((line, i) => {
      if (i) parent.appendChild(el("br"));
      inline(parent, line);
    });
  }

  function codeBlock(lang, code) {
    const wrap = el("div", "code");
    const bar = el("div", "code-bar");
    bar.appendChild(el("span", "code-lang", lang || "code"));
    const copy = el("button", "copy", "copy");
    copy.type = "button";
    copy.addEventListener("click", () => copyText(code, copy));
    bar.appendChild(copy);
    wrap.appendChild(bar);
    const pre = el("pre");
    pre.appendChild(el("code", null, code));
    wrap.appendChild(pre);
    return wrap;
  }

  function copyText(text, button) {
    const done = () => {
      button.textContent = "copied";
      setTimeout(() => (button.textContent = "copy"), 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text) && done());
    } else if (fallbackCopy(text)) done();
  }

  function fallbackCopy(text) {
    // plain http on a LAN has no clipboard API: a hidden textarea and execCommand
    const t = el("textarea");
    t.value = text;
    t.setAttribute("readonly", "");
    t.style.position = "fixed";
    t.style.opacity = "0";
    document.body.appendChild(t);
    t.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (_) {
      ok = false;
    }
    t.remove();
    return ok;
  }

  // the blocks of text, into a fragment
  function render(text) {
    const out = document.createDocumentFragment();
    const src = String(text).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < src.length) {
      const line = src[i];
      const fence = /^\s*(```+|~~~+)\s*([\w+-]*)\s*$/.exec(line);
      if (fence) {
        const body = [];
        i++;
        while (i < src.length && !src[i].trim().startsWith(fence[1])) body.push(src[i++]);
        i++; // the closing fence (or the end: a code block still streaming in)
        out.appendChild(codeBlock(fence[2], body.join("\n")));
        continue;
      }
      if (!line.trim()) {
        i++;
        continue;
      }
      const h = /^(#{1,6})\s+(.*)$/.exec(line);
      if (h) {
        inline(out.appendChild(el("h" + Math.min(h[1].length + 2, 6))), h[2]);
        i++;
        continue;
      }
      if (/^\s*>/.test(line)) {
        const body = [];
        while (i < src.length && /^\s*>/.test(src[i])) body.push(src[i++].replace(/^\s*>\s?/, ""));
        out.appendChild(el("blockquote")).appendChild(render(body.join("\n")));
        continue;
      }
      const item = /^\s*([-*+]|\d{1,9}[.)])\s+/;
      if (item.test(line)) {
        const ordered = /\d/.test(item.exec(line)[1]);
        const list = out.appendChild(el(ordered ? "ol" : "ul"));
        if (ordered) list.start = parseInt(item.exec(line)[1], 10);
        while (i < src.length && item.test(src[i])) {
          const body = [src[i++].replace(item, "")];
          while (i < src.length && /^\s{2,}\S/.test(src[i]) && !item.test(src[i])) body.push(src[i++].trim());
          lines(list.appendChild(el("li")), body);
        }
        continue;
      }
      const para = [];
      while (
        i < src.length &&
        src[i].trim() &&
        !/^\s*(```|~~~|#{1,6}\s|>)/.test(src[i]) &&
        !item.test(src[i])
      )
        para.push(src[i++]);
      lines(out.appendChild(el("p")), para);
    }
    return out;
  }

  return { render, safeHref, copyText };
})();
