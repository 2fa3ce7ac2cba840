// cria web chat: streams /v1/chat/completions over fetch and renders a small, safe markdown subset.
// Model text only ever reaches the page through escapeHtml() first, so it cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const messagesEl = $("messages"), input = $("input"), sendBtn = $("send"), stopBtn = $("stop");
const systemEl = $("system"), tempEl = $("temperature"), keyEl = $("apikey");

// Settings persist in localStorage (the API key included: it stays in this browser).
for (const [el, name] of [[systemEl, "cria.system"], [tempEl, "cria.temperature"], [keyEl, "cria.apikey"]]) {
  const v = localStorage.getItem(name);
  if (v !== null) el.value = v;
  el.addEventListener("change", () => localStorage.setItem(name, el.value));
}

let history = []; // {role, content} of finished turns
let controller = null; // AbortController of the request in flight

function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

// Inline markdown on already escaped text: `code`, **bold**, *italic* / _italic_.
function inline(s) {
  const parts = s.split(/(`[^`\n]+`)/g);
  return parts.map((p, i) => {
    if (i % 2 === 1) return "<code>" + p.slice(1, -1) + "</code>";
    return p.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*\w])\*([^*\n]+)\*(?!\w)/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_([^_\n]+)_(?!\w)/g, "$1<em>$2</em>")
      .replace(/\n/g, "<br>");
  }).join("");
}

// Fenced code blocks (``` ... ```, an unclosed fence runs to the end while streaming), then inline.
function renderMarkdown(text) {
  const esc = escapeHtml(text);
  const out = [];
  const fence = /```([\w+-]*)\n?([\s\S]*?)(```|$)/g;
  let last = 0, m;
  while ((m = fence.exec(esc)) !== null) {
    out.push(inline(esc.slice(last, m.index)));
    out.push("<pre><code>" + m[2] + "</code></pre>");
    last = fence.lastIndex;
    if (esc[last] === "\n") last++; // the block already ends the line
    if (m[0].length === 0) break;
  }
  out.push(inline(esc.slice(last)));
  return out.join("");
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.className = "body";
  div.append(label, body);
  messagesEl.append(div);
  setText(body, text);
  return body;
}

function setText(body, text) {
  body.innerHTML = renderMarkdown(text); // safe: renderMarkdown escapes first
  messagesEl.scrollTop = messagesEl.scrollHeight;
}

function busy(on) {
  sendBtn.disabled = on;
  stopBtn.disabled = !on;
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const body = addMessage("assistant", "");
  const messages = [];
  if (systemEl.value.trim()) messages.push({ role: "system", content: systemEl.value });
  messages.push(...history);
  const req = { messages, stream: true };
  const t = parseFloat(tempEl.value);
  if (!Number.isNaN(t)) req.temperature = t;
  const headers = { "Content-Type": "application/json" };
  if (keyEl.value.trim()) headers["Authorization"] = "Bearer " + keyEl.value.trim();

  controller = new AbortController();
  busy(true);
  let answer = "";
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers, body: JSON.stringify(req), signal: controller.signal,
    });
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try { msg = (await resp.json()).error.message || msg; } catch (_) {}
      throw new Error(msg);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      // SSE events end with a blank line; each `data:` line carries one JSON chunk.
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message || "server error");
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && typeof delta.content === "string") {
            answer += delta.content;
            setText(body, answer);
          }
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      addMessage("error", "Error: " + e.message);
    }
  } finally {
    // A stopped answer stays in the conversation as far as it got.
    if (answer) history.push({ role: "assistant", content: answer });
    else { body.parentElement.remove(); history.pop(); } // nothing came: the turn is dropped
    controller = null;
    busy(false);
    input.focus();
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = "";
  send(text);
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
stopBtn.addEventListener("click", () => { if (controller) controller.abort(); });
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  messagesEl.replaceChildren();
});
