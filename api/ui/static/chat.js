// The appliance's chat page: lists the text models, streams chat completions, shows each answer's speed.
//
// It talks to the server's OpenAI API like any client: GET /v1/models, POST /v1/chat/completions
// with stream: true, read as server-sent events through fetch and a ReadableStream. Every API
// call carries `Authorization: Bearer <key>` once a key is known; a call answered 401 asks for
// the key, keeps it in localStorage and is sent again. Stop aborts the fetch: the connection
// closes, and the server cancels the generation and frees its slot.
//
// Model output is only ever inserted as text (text nodes, textContent), never as HTML.
"use strict";

const STORAGE = { key: "appliance.apiKey", settings: "appliance.chatSettings", model: "appliance.model" };

const $ = (id) => document.getElementById(id);
const view = {
  model: $("model"),
  newChat: $("new-chat"),
  settingsToggle: $("settings-toggle"),
  settings: $("settings"),
  systemPrompt: $("system-prompt"),
  temperature: $("temperature"),
  maxTokens: $("max-tokens"),
  extraFields: $("extra-fields"),
  apiKey: $("api-key"),
  forgetKey: $("forget-key"),
  transcript: $("transcript"),
  empty: $("empty"),
  error: $("error"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  keyDialog: $("key-dialog"),
  keyReason: $("key-reason"),
  keyInput: $("key-input"),
};

// The conversation so far: finished turns as the API wants them; the system prompt is added per request.
let turns = [];
// The AbortController of the completion streaming now, or null.
let running = null;

// -- storage (localStorage may be unavailable: private windows, file policies) -------------------

function load(name, fallback) {
  try {
    const value = localStorage.getItem(name);
    return value === null ? fallback : value;
  } catch {
    return fallback;
  }
}

function save(name, value) {
  try {
    if (value === null || value === "") localStorage.removeItem(name);
    else localStorage.setItem(name, value);
  } catch {
    // Not kept across reloads; this page still works.
  }
}

// -- errors ---------------------------------------------------------------------------------------

class ServerError extends Error {
  constructor(message, status = null, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

// An OpenAI error object ({"message", "type", "param", "code"}), or Ollama's string, as a ServerError.
function fromErrorObject(error, status) {
  if (typeof error === "string") return new ServerError(error, status);
  return new ServerError(String(error.message ?? "the server reported an error"), status, error.code ?? null, error.param ?? null);
}

async function readError(response) {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // The body could not be read; the status says enough.
  }
  try {
    const body = JSON.parse(text);
    if (body && body.error) return fromErrorObject(body.error, response.status);
  } catch {
    // Not JSON (a proxy's page, perhaps): quoted below.
  }
  const detail = text ? `: ${text.slice(0, 300)}` : "";
  return new ServerError(`${response.status} ${response.statusText}${detail}`, response.status);
}

function describe(error) {
  if (!(error instanceof ServerError)) return error instanceof Error ? error.message : String(error);
  const parts = [error.message];
  if (error.param) parts.push(`(field: ${error.param})`);
  if (error.code) parts.push(`[${error.code}]`);
  if (error.status) parts.push(`— HTTP ${error.status}`);
  return parts.join(" ");
}

function showError(message) {
  view.error.textContent = message;
  view.error.hidden = false;
}

function clearError() {
  view.error.hidden = true;
  view.error.textContent = "";
}

// -- the API key ----------------------------------------------------------------------------------

function storeKey(key) {
  save(STORAGE.key, key);
  view.apiKey.value = key ?? "";
}

// Shows the key dialog; resolves with the key entered, or null when the user cancels.
function askForKey(reason) {
  view.keyReason.textContent = reason;
  view.keyInput.value = "";
  view.keyDialog.returnValue = "";
  view.keyDialog.showModal();
  view.keyInput.focus();
  return new Promise((resolve) => {
    view.keyDialog.addEventListener(
      "close",
      () => resolve(view.keyDialog.returnValue === "ok" ? view.keyInput.value.trim() || null : null),
      { once: true },
    );
  });
}

// fetch() with the key; a 401 asks for a key, keeps it, and sends the request again.
// `onSend` runs right before each attempt (the timings start there, not before a dialog).
async function apiFetch(path, init = {}, onSend = () => {}) {
  for (;;) {
    const key = load(STORAGE.key, "");
    const headers = new Headers(init.headers ?? {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    onSend();
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401) return response;
    const refusal = await readError(response);
    const reason = key ? `The key was not accepted: ${refusal.message}` : "This server needs an API key.";
    const entered = await askForKey(reason);
    if (!entered) throw new ServerError("an API key is needed: enter it under Settings, or reload the page", 401);
    storeKey(entered);
  }
}

// -- settings -------------------------------------------------------------------------------------

const SETTINGS = ["systemPrompt", "temperature", "maxTokens", "extraFields"];

function restoreSettings() {
  let saved = {};
  try {
    saved = JSON.parse(load(STORAGE.settings, "{}")) ?? {};
  } catch {
    saved = {};
  }
  for (const name of SETTINGS) if (typeof saved[name] === "string") view[name].value = saved[name];
  view.apiKey.value = load(STORAGE.key, "");
}

function saveSettings() {
  save(STORAGE.settings, JSON.stringify(Object.fromEntries(SETTINGS.map((name) => [name, view[name].value]))));
}

// The request's sampling fields from the settings; throws with a message when the extra fields are not a JSON object.
function samplingFields() {
  const fields = {};
  const temperature = Number.parseFloat(view.temperature.value);
  if (Number.isFinite(temperature)) fields.temperature = temperature;
  const maxTokens = Number.parseInt(view.maxTokens.value, 10);
  if (Number.isInteger(maxTokens) && maxTokens > 0) fields.max_tokens = maxTokens;
  const extra = view.extraFields.value.trim();
  if (extra) {
    let parsed;
    try {
      parsed = JSON.parse(extra);
    } catch (error) {
      throw new Error(`Settings → extra request fields is not valid JSON: ${error.message}`);
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error("Settings → extra request fields must be a JSON object, like {\"top_k\": 40}");
    }
    Object.assign(fields, parsed);
  }
  return fields;
}

// -- models ---------------------------------------------------------------------------------------

async function loadModels() {
  view.model.disabled = true;
  try {
    const response = await apiFetch("/v1/models");
    if (!response.ok) throw await readError(response);
    const body = await response.json();
    const models = (body.data ?? []).filter((model) => model.task === "text-generation");
    if (!models.length) {
      view.model.replaceChildren(new Option("no text model", ""));
      showError("This server has no text-generation model loaded (see `appliance serve --engines`).");
      return;
    }
    view.model.replaceChildren(...models.map((model) => new Option(model.id, model.id)));
    const saved = load(STORAGE.model, "");
    if (models.some((model) => model.id === saved)) view.model.value = saved;
    view.model.disabled = false;
    clearError();
  } catch (error) {
    view.model.replaceChildren(new Option("no models", ""));
    showError(`Could not list the models: ${describe(error)}`);
  }
}

// -- the transcript -------------------------------------------------------------------------------

function addMessage(role, text) {
  view.empty.hidden = true;
  const message = document.createElement("article");
  message.className = `message ${role}`;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role;
  const content = document.createElement("div");
  content.className = "content";
  const textNode = document.createTextNode(text);
  content.append(textNode);
  const stats = document.createElement("div");
  stats.className = "stats";
  message.append(who, content, stats);
  view.transcript.append(message);
  scrollDown(true);
  return { message, textNode, stats };
}

function scrollDown(force = false) {
  const t = view.transcript;
  if (force || t.scrollHeight - t.scrollTop - t.clientHeight < 80) t.scrollTop = t.scrollHeight;
}

function setRunning(controller) {
  running = controller;
  view.send.disabled = controller !== null;
  view.stop.disabled = controller === null;
}

// One answer's numbers: shown as text, and kept as data-* attributes (tests and scripts read those).
function showStats(answer, numbers, note) {
  const { message, stats } = answer;
  const parts = [];
  if (numbers.completionTokens !== undefined) parts.push(`${numbers.completionTokens} tokens`);
  else parts.push(`${numbers.chunks} chunks`);
  if (numbers.tokensPerSecond !== undefined) parts.push(`${numbers.tokensPerSecond.toFixed(1)} tok/s`);
  if (numbers.firstTokenMs !== undefined) parts.push(`first token ${Math.round(numbers.firstTokenMs)} ms`);
  parts.push(`total ${(numbers.totalMs / 1000).toFixed(2)} s`);
  if (numbers.promptTokens !== undefined) {
    const cached = numbers.cachedTokens ? `, ${numbers.cachedTokens} cached` : "";
    parts.push(`prompt ${numbers.promptTokens} tokens${cached}`);
  }
  if (note) parts.push(note);
  stats.textContent = parts.join(" · ");
  for (const [name, value] of Object.entries(numbers)) {
    if (value !== undefined) message.dataset[name] = String(Math.round(value * 10) / 10);
  }
}

// -- server-sent events ---------------------------------------------------------------------------

// The `data` of each event of an SSE response, as it arrives (comments such as keep-alives skipped).
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        }
        // Other fields (event:, id:, retry:) and comments (": keep-alive") carry nothing for us.
      }
    }
    if (data.length) yield data.join("\n");
  } finally {
    reader.cancel().catch(() => {});
  }
}

// -- one exchange ---------------------------------------------------------------------------------

async function sendMessage(text) {
  const model = view.model.value;
  if (!model) {
    showError("Pick a model first.");
    return;
  }
  let fields;
  try {
    fields = samplingFields();
  } catch (error) {
    showError(error.message);
    return;
  }
  // Checked and accepted: the message moves from the input box to the transcript.
  clearError();
  view.prompt.value = "";
  save(STORAGE.model, model);
  addMessage("user", text);
  // This exchange's conversation: "New chat" starts another, which this one must not touch.
  const conversation = turns;
  conversation.push({ role: "user", content: text });
  const messages = [];
  const system = view.systemPrompt.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...conversation);
  const body = { ...fields, model, messages, stream: true, stream_options: { include_usage: true } };

  const answer = addMessage("assistant", "");
  answer.message.dataset.state = "waiting";
  const controller = new AbortController();
  setRunning(controller);
  let started = performance.now();
  let firstAt, lastAt, usage, finishReason;
  let chunks = 0;
  let finished = false;
  let reply = "";
  const numbers = () => {
    const end = performance.now();
    const result = { chunks, totalMs: end - started };
    if (firstAt !== undefined) result.firstTokenMs = firstAt - started;
    const generated = usage ? usage.completion_tokens : chunks;
    // Decode speed: the tokens after the first, over the time from the first to the last.
    if (generated > 1 && lastAt > firstAt) result.tokensPerSecond = (generated - 1) / ((lastAt - firstAt) / 1000);
    if (usage) {
      result.completionTokens = usage.completion_tokens;
      result.promptTokens = usage.prompt_tokens;
      result.cachedTokens = usage.prompt_tokens_details?.cached_tokens;
    }
    return result;
  };

  try {
    const init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: controller.signal };
    const response = await apiFetch("/v1/chat/completions", init, () => (started = performance.now()));
    if (!response.ok) throw await readError(response);
    answer.message.dataset.state = "streaming";
    for await (const data of sseData(response)) {
      if (data === "[DONE]") {
        finished = true;
        break;
      }
      const chunk = JSON.parse(data);
      // An error after the stream began: one `data: {"error": ...}` event, then [DONE].
      if (chunk.error) throw fromErrorObject(chunk.error, response.status);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      const delta = choice.delta?.content;
      if (delta) {
        const now = performance.now();
        if (firstAt === undefined) firstAt = now;
        lastAt = now;
        chunks += 1;
        reply += delta;
        answer.textNode.appendData(delta);
        answer.message.dataset.chunks = String(chunks);
        scrollDown();
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    if (!finished) throw new ServerError("the stream ended before the answer was complete (the connection was closed)");
    answer.message.dataset.state = "done";
    showStats(answer, numbers(), finishReason === "length" ? "stopped at max tokens" : null);
    conversation.push({ role: "assistant", content: reply });
  } catch (error) {
    if (controller.signal.aborted) {
      // Stopped: the partial answer stays in the conversation, as the model wrote it.
      answer.message.dataset.state = "stopped";
      showStats(answer, numbers(), "stopped");
      if (reply) conversation.push({ role: "assistant", content: reply });
    } else {
      answer.message.dataset.state = "failed";
      answer.stats.textContent = `failed: ${describe(error)}`;
      showError(describe(error));
      if (reply) {
        conversation.push({ role: "assistant", content: reply });
      } else {
        // Nothing came back: take the message out of the conversation and give it back to edit or resend.
        conversation.pop();
        if (!view.prompt.value) view.prompt.value = text;
      }
    }
  } finally {
    setRunning(null);
  }
}

// -- wiring ---------------------------------------------------------------------------------------

view.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = view.prompt.value.trim();
  if (!text || running) return;
  sendMessage(text);
});

view.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    view.composer.requestSubmit();
  }
});

view.stop.addEventListener("click", () => running?.abort());

view.newChat.addEventListener("click", () => {
  running?.abort();
  turns = [];
  view.transcript.replaceChildren(view.empty);
  view.empty.hidden = false;
  clearError();
  view.prompt.focus();
});

view.settingsToggle.addEventListener("click", () => {
  view.settings.hidden = !view.settings.hidden;
  view.settingsToggle.setAttribute("aria-expanded", String(!view.settings.hidden));
});

for (const name of SETTINGS) view[name].addEventListener("change", saveSettings);

view.apiKey.addEventListener("change", () => {
  storeKey(view.apiKey.value.trim() || null);
  loadModels();
});

view.forgetKey.addEventListener("click", () => storeKey(null));

view.model.addEventListener("change", () => save(STORAGE.model, view.model.value));

restoreSettings();
loadModels();
