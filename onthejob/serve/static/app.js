// The onthejob web UI: chat in a session, see tool calls, give feedback, browse sessions
// and model versions. Plain JS against the server's own API; no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  sessionId: null, // the session shown (and chatted in)
  messages: [], // its history in OpenAI's message shape, sent with each request
  pendingCall: null, // the tool call the next message answers, if the last reply made one
  thumb: null, // 1, -1 or null: the thumb selected for the next feedback
  busy: false,
};

function tenant() {
  return $("tenant").value.trim() || "default";
}

async function api(method, path, body, headers) {
  const response = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "X-Tenant": tenant(), ...(headers || {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error((data.error && data.error.message) || `HTTP ${response.status}`);
  }
  return data;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $("chat-error");
  box.textContent = message || "";
  box.hidden = !message;
}

// -- the transcript ------------------------------------------------------------------

function bubble(role, text, extraClass) {
  const node = el("div", `msg ${extraClass || role}`);
  node.appendChild(el("span", "role", role));
  node.appendChild(el("span", "text", text));
  $("transcript").appendChild(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

function callText(call) {
  let args = call.function.arguments;
  try {
    const value = JSON.parse(args);
    const keys = Object.keys(value);
    if (keys.length === 1 && typeof value[keys[0]] === "string") args = value[keys[0]];
  } catch (e) {
    /* shown as sent */
  }
  return `${call.function.name}: ${args}`;
}

function renderMessage(message) {
  if (message.role === "assistant" && message.tool_calls && message.tool_calls.length) {
    if (message.content && !message.stored) bubble("assistant", message.content);
    for (const call of message.tool_calls) bubble("tool call", callText(call), "toolcall");
  } else if (message.role === "tool") {
    bubble("tool result", message.content, "tool").title = `answers ${message.tool_call_id}`;
  } else {
    bubble(message.role, message.content || "");
  }
}

function renderTranscript() {
  $("transcript").replaceChildren();
  state.messages.forEach(renderMessage);
  updateComposer();
}

function updateComposer() {
  $("composer-label").textContent = state.pendingCall
    ? `result of tool call ${callText(state.pendingCall)}`
    : "message";
  $("send").disabled = state.busy;
  $("session-id").textContent = state.sessionId
    ? `session ${state.sessionId}`
    : "no session yet: type a message or press New session";
  $("end-session").hidden = !state.sessionId;
}

// -- sessions ------------------------------------------------------------------------

async function newSession() {
  const author = $("author").value.trim();
  const session = await api("POST", "/v1/sessions", {
    tenant: tenant(),
    user: author || null,
    meta: { client: "web-ui" },
  });
  openSession(session.id, []);
  $("feedback-list").replaceChildren();
  await refreshSessions();
  return session.id;
}

function openSession(id, messages) {
  state.sessionId = id;
  state.messages = messages;
  const last = messages[messages.length - 1];
  state.pendingCall =
    last && last.role === "assistant" && last.tool_calls ? last.tool_calls[0] : null;
  state.thumb = null;
  setThumb(null);
  $("feedback-status").textContent = "";
  showError("");
  renderTranscript();
  for (const item of $("sessions").children) {
    item.classList.toggle("current", item.dataset.id === id);
  }
}

// A stored turn, shown with its tool calls and sent back as stored: its content is what
// the model read (a call as its "name: arguments" line), so the session continues without
// declaring the tools it was started with.
function turnMessage(turn) {
  const message = { role: turn.role, content: turn.content, stored: true };
  if (turn.tool_call_id) message.tool_call_id = turn.tool_call_id;
  if (turn.tool_calls.length) {
    message.tool_calls = turn.tool_calls.map((c) => ({
      id: c.id,
      type: "function",
      function: { name: c.name, arguments: c.arguments },
    }));
  }
  return message;
}

function wireMessage(message) {
  if (!message.stored) return message;
  const wire = { role: message.role, content: message.content };
  if (message.tool_call_id) wire.tool_call_id = message.tool_call_id;
  return wire;
}

async function viewSession(id) {
  try {
    const session = await api("GET", `/v1/sessions/${encodeURIComponent(id)}`);
    openSession(id, session.turns.map(turnMessage));
    renderFeedback(session.feedback);
    if (session.ended) $("session-id").textContent = `session ${id} (ended)`;
  } catch (e) {
    showError(e.message);
  }
}

async function refreshSessions() {
  const filter = $("session-filter").value;
  const query = new URLSearchParams({ tenant: tenant() });
  if (filter) query.set("feedback", filter);
  try {
    const list = await api("GET", `/v1/sessions?${query}`);
    const items = list.data.map((s) => {
      const item = el("li");
      item.dataset.id = s.id;
      const when = new Date(s.started * 1000).toLocaleString();
      item.textContent = `${when}${s.user ? " · " + s.user : ""}${s.ended ? " · ended" : ""}`;
      item.title = s.id;
      item.classList.toggle("current", s.id === state.sessionId);
      item.addEventListener("click", () => viewSession(s.id));
      return item;
    });
    $("sessions").replaceChildren(...items);
  } catch (e) {
    showError(e.message);
  }
}

async function refreshVersions() {
  try {
    const list = await api("GET", `/v1/versions?tenant=${encodeURIComponent(tenant())}`);
    const items = list.data.map((v) => {
      const item = el("li", v.status === "promoted" ? "promoted" : "");
      item.textContent = `${v.id} · ${v.status} · ${v.method}`;
      item.title = `base ${v.base}${v.adapter ? "\nadapter " + v.adapter : ""}\nevals ${JSON.stringify(v.evals)}`;
      return item;
    });
    if (!items.length) items.push(el("li", "muted", "no versions for this tenant"));
    $("versions").replaceChildren(...items);
  } catch (e) {
    $("versions").replaceChildren(el("li", "error", e.message));
  }
}

// -- chat ----------------------------------------------------------------------------

function declaredTools() {
  return $("tools")
    .value.split("\n")
    .map((line) => line.trim())
    .filter((line) => line.includes(":"))
    .map((line) => {
      const name = line.slice(0, line.indexOf(":")).trim();
      return {
        type: "function",
        function: {
          name,
          description: line.slice(line.indexOf(":") + 1).trim(),
          parameters: { type: "object", properties: { input: { type: "string" } } },
        },
      };
    });
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) onEvent(line.slice(6));
      }
    }
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value;
  if (state.busy || !text.trim()) return;
  state.busy = true;
  showError("");
  updateComposer();
  try {
    if (!state.sessionId) await newSession();
    const message = state.pendingCall
      ? { role: "tool", content: text, tool_call_id: state.pendingCall.id }
      : { role: "user", content: text };
    const history = [...state.messages, message];
    renderMessage(message);
    $("message").value = "";
    const body = {
      model: "default",
      messages: history.map(wireMessage),
      stream: true,
      max_tokens: Number($("max-tokens").value) || 64,
      temperature: Number($("temperature").value),
    };
    const tools = declaredTools();
    if (tools.length) body.tools = tools;
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        "X-Tenant": tenant(),
        "X-Session-Id": state.sessionId,
      },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || `HTTP ${response.status}`);
    }
    const reply = bubble("assistant", "");
    const replyText = reply.querySelector(".text");
    let content = "";
    let toolCalls = null;
    let finished = false;
    let failure = null;
    await readEvents(response, (data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        failure = chunk.error.message;
        return;
      }
      for (const choice of chunk.choices || []) {
        if (choice.delta.content) {
          content += choice.delta.content;
          replyText.textContent = content;
        }
        if (choice.delta.tool_calls) toolCalls = choice.delta.tool_calls.map(({ index, ...c }) => c);
        if (choice.finish_reason) finished = true;
      }
    });
    reply.remove();
    if (failure || !finished) {
      throw new Error(failure || "the reply was cut off; nothing was stored, try again");
    }
    const answer = toolCalls
      ? { role: "assistant", content: null, tool_calls: toolCalls }
      : { role: "assistant", content };
    state.messages = [...history, answer];
    state.pendingCall = toolCalls ? toolCalls[0] : null;
    renderMessage(answer);
  } catch (e) {
    showError(e.message);
    renderTranscript();
  } finally {
    state.busy = false;
    updateComposer();
    refreshSessions();
  }
}

// -- feedback ------------------------------------------------------------------------

function setThumb(value) {
  state.thumb = value;
  $("thumb-up").setAttribute("aria-pressed", String(value === 1));
  $("thumb-down").setAttribute("aria-pressed", String(value === -1));
}

function renderFeedback(list) {
  $("feedback-list").replaceChildren(
    ...list.map((f) => {
      const thumb = f.thumb === 1 ? "up" : f.thumb === -1 ? "down" : "";
      const item = el("li");
      item.textContent = `${f.author}${thumb ? " · " + thumb : ""}${f.evaluation ? "\n" + f.evaluation : ""}`;
      return item;
    }),
  );
}

async function sendFeedback() {
  const status = $("feedback-status");
  if (!state.sessionId) {
    status.textContent = "start or open a session first";
    return;
  }
  const evaluation = $("evaluation").value.trim();
  if (state.thumb === null && !evaluation) {
    status.textContent = "choose a thumb or write an evaluation";
    return;
  }
  try {
    await api("POST", `/v1/sessions/${encodeURIComponent(state.sessionId)}/feedback`, {
      thumb: state.thumb === null ? null : state.thumb === 1 ? "up" : "down",
      evaluation: evaluation || null,
      author: $("author").value.trim() || null,
    });
    $("evaluation").value = "";
    setThumb(null);
    const session = await api("GET", `/v1/sessions/${encodeURIComponent(state.sessionId)}`);
    renderFeedback(session.feedback);
    status.textContent = "feedback saved";
    refreshSessions();
  } catch (e) {
    status.textContent = e.message;
  }
}

async function endSession() {
  if (!state.sessionId) return;
  try {
    await api("POST", `/v1/sessions/${encodeURIComponent(state.sessionId)}/end`);
    $("session-id").textContent = `session ${state.sessionId} (ended)`;
    refreshSessions();
  } catch (e) {
    showError(e.message);
  }
}

async function health() {
  try {
    const data = await api("GET", "/health");
    $("health").textContent = data.status === "ok" ? "server ok" : data.status;
  } catch (e) {
    $("health").textContent = "server unreachable";
  }
}

// -- wiring --------------------------------------------------------------------------

$("composer").addEventListener("submit", send);
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) send(event);
});
$("new-session").addEventListener("click", () => newSession().catch((e) => showError(e.message)));
$("end-session").addEventListener("click", endSession);
$("thumb-up").addEventListener("click", () => setThumb(state.thumb === 1 ? null : 1));
$("thumb-down").addEventListener("click", () => setThumb(state.thumb === -1 ? null : -1));
$("send-feedback").addEventListener("click", sendFeedback);
$("session-filter").addEventListener("change", refreshSessions);
$("tenant").addEventListener("change", () => {
  openSession(null, []);
  refreshSessions();
  refreshVersions();
});

health();
refreshSessions();
refreshVersions();
updateComposer();
