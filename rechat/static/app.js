/* rechat web UI: a small hash-routed page built only from /_rechat/api/.
 *
 * Untrusted text (prompts, answers, model names, file names) only ever reaches the page through
 * textContent (the `h` helper). The one exception is HTML rendered and sanitised by the server
 * (mistune with raw HTML escaped, pygments), inserted with the `html` property. The page's
 * Content-Security-Policy forbids inline scripts, so nothing in a message can run.
 */
(() => {
  "use strict";

  const API = "/_rechat/api";
  const KINDS = ["replay", "record", "forward", "miss", "error"];
  const main = document.getElementById("main");

  // -- small helpers --------------------------------------------------------------------------

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v == null || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = v;
        else if (k === "html") el.innerHTML = v; // server-rendered, sanitised HTML only
        else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else if (k === "style") Object.assign(el.style, v);
        else if (k === "dataset") Object.assign(el.dataset, v);
        else el.setAttribute(k, v === true ? "" : v);
      }
    }
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") el.textContent = v;
      else el.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c) el.append(c);
    return el;
  }

  class ApiError extends Error {}

  async function api(path, params) {
    const qs = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== "")) : null;
    const url = API + path + (qs && [...qs].length ? "?" + qs : "");
    const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new ApiError((data && data.error && data.error.message) || `${r.status} ${r.statusText}`);
    return data;
  }

  const fmt = {
    int(n) { return n == null ? "–" : Math.round(n).toLocaleString("en"); },
    ms(n) {
      if (n == null) return "–";
      if (n < 10) return n.toFixed(2) + " ms";
      if (n < 1000) return Math.round(n) + " ms";
      return (n / 1000).toFixed(n < 10000 ? 2 : 1) + " s";
    },
    dur(ms) {
      if (!ms) return "0 s";
      const s = ms / 1000;
      if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
      const m = s / 60;
      if (m < 60) return `${Math.floor(m)} min ${Math.round(s % 60)} s`;
      const hr = m / 60;
      if (hr < 48) return `${Math.floor(hr)} h ${Math.round(m % 60)} min`;
      return `${(hr / 24).toFixed(1)} days`;
    },
    bytes(n) {
      if (n == null) return "–";
      if (n < 1024) return n + " B";
      if (n < 1 << 20) return (n / 1024).toFixed(1) + " kB";
      return (n / (1 << 20)).toFixed(1) + " MB";
    },
    tokens(n) {
      if (n == null) return "–";
      if (n < 10000) return String(n);
      if (n < 1e6) return (n / 1000).toFixed(1) + "k";
      return (n / 1e6).toFixed(2) + "M";
    },
    pct(x) { return x == null ? "–" : (x * 100).toFixed(x >= 0.995 || x === 0 ? 0 : 1) + "%"; },
    time(epoch) {
      const d = new Date(epoch * 1000);
      const now = new Date();
      const pad = (x) => String(x).padStart(2, "0");
      const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
      if (d.toDateString() === now.toDateString()) return hms;
      return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms.slice(0, 5)}`;
    },
    date(epoch) {
      if (!epoch) return "–";
      const d = new Date(epoch * 1000);
      const pad = (x) => String(x).padStart(2, "0");
      return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
    },
  };

  function badge(kind) { return h("span", { class: "badge " + kind, text: kind }); }

  function shortName(name) {
    // Recorded files start with their date and time; the table shows the rest.
    return name.replace(/\.md$/, "").replace(/(^|\/)\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_/, "$1");
  }

  function sessionHref(name, answer) {
    return "#/s/" + encodeURIComponent(name) + (answer != null ? "?answer=" + answer : "");
  }

  function debounce(fn, ms) {
    let t = 0;
    return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
  }

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const [path, query] = raw.split("?");
    return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), q: new URLSearchParams(query || "") };
  }

  function setQuery(params) {
    // Keep filters in the URL (back/forward and links work) without re-rendering the view.
    const { parts } = parseHash();
    const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== ""));
    const hash = "#/" + parts.map(encodeURIComponent).join("/") + ([...qs].length ? "?" + qs : "");
    if (hash !== location.hash) history.replaceState(null, "", hash);
  }

  // -- shared state: info, in-flight requests, live stream ------------------------------------

  const state = {
    info: null,
    clockOffset: 0, // server epoch ms - local epoch ms
    inflight: new Map(), // proxy request id -> item
    listeners: new Set(), // views interested in live events
    stats: null,
  };

  function serverNow() { return Date.now() + state.clockOffset; }

  function connect() {
    const conn = document.getElementById("conn");
    const es = new EventSource(API + "/events");
    es.addEventListener("open", () => { conn.className = "conn on"; conn.title = "live updates: connected"; });
    es.addEventListener("error", () => { conn.className = "conn off"; conn.title = "live updates: reconnecting"; });
    let connected = false;
    es.addEventListener("hello", (e) => {
      const d = JSON.parse(e.data);
      state.clockOffset = d.now * 1000 - Date.now();
      state.inflight = new Map(d.inflight.map((i) => [i.id, i]));
      emit("inflight");
      // A stream that was cut (a client too far behind is dropped) missed rows: catch up.
      if (connected) { emit("reconnected"); refreshSummary(); }
      connected = true;
    });
    es.addEventListener("start", (e) => {
      const d = JSON.parse(e.data);
      state.inflight.set(d.id, d);
      emit("inflight");
    });
    es.addEventListener("end", (e) => {
      const d = JSON.parse(e.data);
      state.inflight.delete(d.id);
      emit("inflight");
    });
    es.addEventListener("exchange", (e) => {
      const row = JSON.parse(e.data);
      emit("exchange", row);
      refreshSummary();
    });
  }

  function emit(type, data) {
    for (const fn of state.listeners) {
      try { fn(type, data); } catch (err) { console.error(err); }
    }
  }

  let summaryTimer = 0;
  function refreshSummary(now) {
    if (summaryTimer && !now) return;
    summaryTimer = setTimeout(async () => {
      summaryTimer = 0;
      try {
        const st = await api("/stats");
        state.stats = st;
        const t = st.totals;
        const el = document.getElementById("summary");
        el.replaceChildren(
          h("b", { text: fmt.int(t.requests) }), " requests · ",
          h("b", { text: fmt.pct(t.hit_rate) }), " hits · ",
          h("b", { text: fmt.dur(t.time_saved_ms) }), " saved · ",
          h("b", { text: fmt.tokens(t.tokens_saved) }), " tokens saved");
      } catch (e) { /* the log may be off */ }
    }, now ? 0 : 1500);
  }

  // -- router -----------------------------------------------------------------------------

  let current = null; // {name, cleanup, keys}

  function route() {
    if (current && current.cleanup) current.cleanup();
    state.listeners.clear();
    const { parts, q } = parseHash();
    const view = parts[0] || "live";
    const views = { live: liveView, sessions: sessionsView, s: sessionView, r: requestView, stats: statsView };
    const fn = views[view] || notFoundView;
    for (const a of document.querySelectorAll(".tabs a")) {
      const v = a.dataset.view;
      a.classList.toggle("active", v === view || (v === "sessions" && view === "s") || (v === "live" && view === "r"));
    }
    main.replaceChildren();
    current = fn(parts.slice(1), q) || {};
    current.name = view;
  }

  function notFoundView() {
    main.append(h("p", { class: "pad muted" }, "Nothing here. ", h("a", { href: "#/", text: "Back to the live feed" })));
  }

  function failed(container, err) {
    container.replaceChildren(h("div", { class: "banner" }, String(err.message || err)));
  }

  // -- list selection (j/k/Enter) -----------------------------------------------------------

  function selectable(tbody) {
    let index = -1;
    const rows = () => [...tbody.querySelectorAll("tr.row")];
    return {
      move(d) {
        const rs = rows();
        if (!rs.length) return;
        index = Math.max(0, Math.min(rs.length - 1, index + d));
        rs.forEach((r, i) => r.classList.toggle("selected", i === index));
        rs[index].scrollIntoView({ block: "nearest" });
      },
      open() {
        const r = rows()[index];
        if (r && r.dataset.href) location.hash = r.dataset.href;
      },
      shift() { if (index >= 0) index += 1; },
    };
  }

  // -- live feed --------------------------------------------------------------------------

  function liveView(_, q) {
    const filters = { q: q.get("q") || "", kind: q.get("kind") || "", model: q.get("model") || "", status: q.get("status") || "" };
    const search = h("input", { type: "search", placeholder: "Filter by text, model, path, session…   ( / )", value: filters.q, "aria-label": "search the request log" });
    const kind = h("select", { "aria-label": "kind" }, h("option", { value: "", text: "all kinds" }), KINDS.map((k) => h("option", { value: k, text: k })));
    kind.value = filters.kind;
    const model = h("select", { "aria-label": "model" }, h("option", { value: "", text: "all models" }));
    const status = h("select", { "aria-label": "status" }, [["", "any status"], ["2xx", "2xx"], ["4xx", "4xx"], ["5xx", "5xx"], ["error", "errors (≥ 400)"]]
      .map(([v, t]) => h("option", { value: v, text: t })));
    status.value = filters.status;
    const total = h("span", { class: "total" });
    const inflightBox = h("section", { class: "inflight", "aria-label": "requests in flight" });
    const tbody = h("tbody");
    const more = h("button", { class: "more", type: "button", text: "Load older requests", hidden: true });
    const table = h("table", { class: "grid log" },
      h("thead", null, h("tr", null,
        h("th", { text: "time" }), h("th", { text: "kind" }), h("th", { text: "request" }), h("th", { text: "model" }),
        h("th", { class: "num", text: "status" }), h("th", { class: "num", text: "duration" }), h("th", { class: "num", text: "first byte" }),
        h("th", { class: "num", text: "tokens" }), h("th", { text: "session" }), h("th", { text: "prompt → reply" }))),
      tbody);
    const body = h("div");
    main.append(
      h("div", { class: "filters" }, search, kind, model, status, total),
      inflightBox, body);
    body.append(table, more);
    const sel = selectable(tbody);
    let next = null;
    let shown = 0;
    let token = 0;

    (async () => {
      try {
        const st = state.stats || await api("/stats");
        for (const m of st.by_model) if (m.model) model.append(h("option", { value: m.model, text: m.model }));
        model.value = filters.model;
      } catch (e) { /* log off */ }
    })();

    function rowFor(r, isNew) {
      const served = r.served_model && r.served_model !== r.model ? r.served_model : null;
      const status = r.status == null ? "–" : String(r.status);
      const tokens = r.total_tokens != null ? fmt.tokens(r.total_tokens) : "–";
      const session = r.session_name
        ? h("a", { class: "session-link", href: sessionHref(r.session_name, r.exchange), title: r.session_name + (r.line ? ":" + r.line : ""),
            text: shortName(r.session_name) + (r.line ? ":" + r.line : ""), onclick: (e) => e.stopPropagation() })
        : "";
      const outcome = r.reply || (r.kind === "miss" ? (r.match === "nearest" ? `no match (nearest ${Math.round(r.score * 100)}% similar)` : "no match") : r.detail || "");
      const preview = h("td", { class: "preview", title: [r.prompt, outcome].filter(Boolean).join("\n→ ") },
        h("div", null, r.prompt || "", outcome ? h("span", { class: "arrow", text: "→" }) : "", outcome));
      const tr = h("tr", { class: "row" + (isNew ? " new" : ""), dataset: { href: "#/r/" + r.id, id: r.id },
        onclick: () => { location.hash = "#/r/" + r.id; } },
        h("td", { class: "nowrap mono", text: fmt.time(r.at), title: r.time }),
        h("td", null, badge(r.kind)),
        h("td", { class: "path" }, r.method + " " + r.path.replace(/^\/v1\//, "/") + (r.stream ? " ⇶" : "")),
        h("td", { class: "nowrap" }, r.model || "–", served ? h("span", { class: "served", text: " → " + served }) : ""),
        h("td", { class: "num" + (r.status >= 400 ? " status-err" : ""), text: status }),
        h("td", { class: "num", text: fmt.ms(r.ms) }),
        h("td", { class: "num", text: fmt.ms(r.ttfb_ms) }),
        h("td", { class: "num", text: tokens, title: r.total_tokens != null ? `${r.prompt_tokens} prompt + ${r.completion_tokens} completion` : "" }),
        h("td", { class: "nowrap" }, session),
        preview);
      return tr;
    }

    function params() {
      return { q: filters.q, kind: filters.kind, model: filters.model, status: filters.status };
    }

    async function load(append) {
      const my = ++token;
      try {
        const data = await api("/logs", { ...params(), cursor: append ? next : null, limit: 100 });
        if (my !== token) return;
        if (!append) { tbody.replaceChildren(); shown = 0; }
        for (const r of data.items) tbody.append(rowFor(r, false));
        shown += data.items.length;
        next = data.next;
        more.hidden = next == null;
        if (!shown) tbody.append(h("tr", null, h("td", { colspan: 10, class: "empty", text: filters.q || filters.kind || filters.model || filters.status ? "No request matches these filters." : "No requests yet. Point a client at " + location.origin + "/v1 and they appear here as they happen." })));
        total.textContent = shown + (next != null ? "+" : "") + " shown";
      } catch (e) {
        if (my === token) failed(body, e);
      }
    }

    function matches(r) {
      if (filters.kind && r.kind !== filters.kind) return false;
      if (filters.model && r.model !== filters.model && r.served_model !== filters.model) return false;
      if (filters.status) {
        const s = filters.status;
        if (s === "error" && !(r.status >= 400)) return false;
        if (/^[1-5]xx$/.test(s) && Math.floor((r.status || 0) / 100) !== Number(s[0])) return false;
      }
      if (filters.q) {
        const hay = [r.path, r.model, r.served_model, r.session, r.client, r.detail, r.prompt, r.reply, r.kind].join("\n").toLowerCase();
        if (!filters.q.toLowerCase().split(/\s+/).filter(Boolean).every((w) => hay.includes(w))) return false;
      }
      return true;
    }

    function renderInflight() {
      const items = [...state.inflight.values()].sort((a, b) => a.started_at - b.started_at);
      inflightBox.replaceChildren(h("h2", null, "In flight ", h("span", { class: "count", text: "(" + items.length + ")" })));
      if (!items.length) {
        inflightBox.append(h("div", { class: "none", text: "Nothing in flight." }));
        return;
      }
      const tb = h("tbody");
      for (const i of items) {
        tb.append(h("tr", { dataset: { started: i.started_at } },
          h("td", null, h("span", { class: "spinner", "aria-hidden": "true" })),
          h("td", { class: "mono", text: "#" + i.id }),
          h("td", { class: "path", text: i.method + " " + i.path }),
          h("td", { text: i.model || "–" }),
          h("td", { class: "muted", text: i.stream ? "stream" : "" }),
          h("td", { class: "muted", text: i.client || "" }),
          h("td", { class: "num elapsed", text: fmt.ms(serverNow() - i.started_at * 1000) })));
      }
      inflightBox.append(h("table", { class: "grid inflight-table" }, tb));
    }

    const ticker = setInterval(() => {
      for (const td of inflightBox.querySelectorAll("tr[data-started]")) {
        td.querySelector(".elapsed").textContent = fmt.ms(serverNow() - Number(td.dataset.started) * 1000);
      }
    }, 100);

    // Live events are applied once per animation frame: under heavy load hundreds arrive
    // between two frames, and the page stays responsive.
    let pending = [];
    let inflightDirty = false;
    let frame = 0;
    const KEEP = 500; // rows kept in the table; older ones stay a "Load older" away
    function flush() {
      frame = 0;
      if (inflightDirty) { inflightDirty = false; renderInflight(); }
      if (!pending.length) return;
      const rows = pending.filter((r) => !tbody.querySelector(`tr[data-id="${r.id}"]`));
      pending = [];
      if (!rows.length) return;
      const empty = tbody.querySelector("td.empty");
      if (empty) empty.parentElement.remove();
      const frag = document.createDocumentFragment();
      for (const r of rows.reverse()) frag.append(rowFor(r, true)); // newest first
      tbody.prepend(frag);
      for (let i = 0; i < rows.length; i++) sel.shift();
      shown += rows.length;
      const all = tbody.querySelectorAll("tr.row");
      if (all.length > KEEP) {
        for (const tr of [...all].slice(KEEP)) tr.remove();
        shown = KEEP;
        next = Number(all[KEEP - 1].dataset.id);
        more.hidden = false;
      }
      total.textContent = shown + (next != null ? "+" : "") + " shown";
      for (const r of rows) {
        if (r.model && ![...model.options].some((o) => o.value === r.model)) model.append(h("option", { value: r.model, text: r.model }));
      }
    }
    function later() { if (!frame) frame = requestAnimationFrame(flush); }
    state.listeners.add((type, data) => {
      if (type === "inflight") { inflightDirty = true; later(); }
      if (type === "exchange" && matches(data)) { pending.push(data); later(); }
      if (type === "reconnected") load(false);
    });

    const reload = () => { setQuery(params()); load(false); };
    search.addEventListener("input", debounce(() => { filters.q = search.value.trim(); reload(); }, 200));
    kind.addEventListener("change", () => { filters.kind = kind.value; reload(); });
    model.addEventListener("change", () => { filters.model = model.value; reload(); });
    status.addEventListener("change", () => { filters.status = status.value; reload(); });
    more.addEventListener("click", () => load(true));

    renderInflight();
    load(false);
    return { cleanup: () => { clearInterval(ticker); if (frame) cancelAnimationFrame(frame); }, search, sel };
  }

  // -- sessions ---------------------------------------------------------------------------

  function sessionsView(_, q) {
    const filters = { q: q.get("q") || "", model: q.get("model") || "", kind: q.get("kind") || "", since: q.get("since") || "", until: q.get("until") || "" };
    const search = h("input", { type: "search", placeholder: "Search every session file…   ( / )", value: filters.q, "aria-label": "search sessions" });
    const model = h("select", { "aria-label": "model" }, h("option", { value: "", text: "all models" }));
    const kind = h("select", { "aria-label": "kind" }, [["", "all kinds"], ["chat", "chat"], ["generic", "other endpoints"], ["stream", "streamed"], ["tools", "with tools"], ["broken", "broken"]]
      .map(([v, t]) => h("option", { value: v, text: t })));
    kind.value = filters.kind;
    const since = h("input", { type: "date", value: filters.since, "aria-label": "from date" });
    const until = h("input", { type: "date", value: filters.until, "aria-label": "to date" });
    const total = h("span", { class: "total" });
    const tbody = h("tbody");
    const body = h("div");
    main.append(h("div", { class: "filters" }, search, model, kind, h("label", null, "from", since), h("label", null, "to", until), total), body);
    body.append(h("table", { class: "grid sessions" },
      h("thead", null, h("tr", null, h("th", { text: "session" }), h("th", { text: "first question" }), h("th", { text: "model" }),
        h("th", { class: "num", text: "answers" }), h("th", { text: "kind" }), h("th", { text: "recorded" }))),
      tbody));
    const sel = selectable(tbody);
    let token = 0;

    async function load() {
      const my = ++token;
      // A date input gives a day; `until` includes the whole of that day.
      const untilNext = filters.until ? new Date(new Date(filters.until + "T00:00").getTime() + 86400000).toISOString() : "";
      try {
        const data = await api("/sessions", { q: filters.q, model: filters.model, kind: filters.kind,
          since: filters.since ? new Date(filters.since + "T00:00").toISOString() : "", until: untilNext });
        if (my !== token) return;
        const models = Object.keys(data.models).sort();
        model.replaceChildren(h("option", { value: "", text: "all models" }), ...models.map((m) => h("option", { value: m, text: `${m} (${data.models[m]})` })));
        model.value = filters.model;
        tbody.replaceChildren();
        for (const s of data.items) {
          const kinds = [s.kind === "generic" ? "endpoint" : null, s.stream ? "stream" : null, s.tools ? "tools" : null].filter(Boolean);
          tbody.append(h("tr", { class: "row", dataset: { href: sessionHref(s.name) }, onclick: () => { location.hash = sessionHref(s.name); } },
            h("td", { class: "nowrap" }, h("a", { href: sessionHref(s.name), text: s.name }), s.error ? [" ", h("span", { class: "badge broken", text: "broken", title: s.error })] : ""),
            h("td", { class: "title", text: s.title || (s.endpoint || ""), title: s.title }),
            h("td", { class: "nowrap", text: s.model || "–" }),
            h("td", { class: "num", text: s.answers }),
            h("td", { class: "nowrap" }, kinds.map((k) => h("span", { class: "badge outline", text: k })), " "),
            h("td", { class: "nowrap mono", text: fmt.date(s.at) })));
        }
        if (!data.items.length) tbody.append(h("tr", null, h("td", { colspan: 6, class: "empty", text: "No session matches." })));
        total.textContent = `${data.total} session${data.total === 1 ? "" : "s"}`;
      } catch (e) {
        if (my === token) failed(body, e);
      }
    }

    const reload = () => { setQuery(filters); load(); };
    search.addEventListener("input", debounce(() => { filters.q = search.value.trim(); reload(); }, 150));
    model.addEventListener("change", () => { filters.model = model.value; reload(); });
    kind.addEventListener("change", () => { filters.kind = kind.value; reload(); });
    since.addEventListener("change", () => { filters.since = since.value; reload(); });
    until.addEventListener("change", () => { filters.until = until.value; reload(); });
    const later = debounce(load, 300);
    state.listeners.add((type, data) => { if (type === "exchange" && data.kind === "record") later(); });
    load();
    return { search, sel };
  }

  // -- one session ------------------------------------------------------------------------

  function sessionView(parts, q) {
    const name = parts.join("/");
    const answer = q.get("answer");
    const box = h("div");
    main.append(box);
    let tabs = null;
    (async () => {
      let s;
      try {
        s = await api("/sessions/" + encodeURIComponent(name), { answer });
      } catch (e) { return failed(box, e); }
      const panels = {
        rendered: h("div", { class: "panel", html: s.html || "" }),
        source: h("div", { class: "panel", html: s.source_html || "" }),
        data: h("div", { class: "panel" }),
      };
      const dataPanel = panels.data;
      dataPanel.append(h("pre", { class: "hl-plain" }, h("code", { text: JSON.stringify({ params: s.params, messages: s.messages, responses: s.responses, exchanges: s.exchanges }, null, 2) })));
      const buttons = {};
      const show = (k) => {
        for (const [n, p] of Object.entries(panels)) p.hidden = n !== k;
        for (const [n, b] of Object.entries(buttons)) b.classList.toggle("active", n === k);
      };
      for (const [k, label] of [["rendered", "Rendered"], ["source", "Markdown source"], ["data", "Parsed data"]]) {
        buttons[k] = h("button", { type: "button", text: label, onclick: () => show(k) });
      }
      tabs = { show };
      const facts = h("dl", { class: "facts" },
        fact("file", s.path), fact("kind", s.kind), fact("model", s.model || "–"), fact("answers", s.answers),
        fact("recorded", fmt.date(s.at)), fact("served (log)", s.log ? String(s.log.length) + (s.log.length === 50 ? "+" : "") + " times" : "–"));
      box.append(
        h("div", { class: "crumbs" }, h("a", { href: "#/sessions", text: "Sessions" }), " / "),
        h("h1", { text: s.name }),
        s.error ? h("div", { class: "banner" }, `This file does not parse: line ${s.error.line}: ${s.error.message}` + (s.html ? " (showing its last good version)" : "")) : "",
        facts,
        h("div", { class: "subtabs", role: "tablist" }, Object.values(buttons)),
        ...Object.values(panels));
      if (s.log && s.log.length) {
        box.append(h("h2", null, "Requests answered from or recorded into this file ", h("span", { class: "count", text: "(latest " + s.log.length + ")" })));
        const tb = h("tbody");
        for (const r of s.log) {
          tb.append(h("tr", { class: "row", dataset: { href: "#/r/" + r.id }, onclick: () => { location.hash = "#/r/" + r.id; } },
            h("td", { class: "mono nowrap", text: fmt.time(r.at) }), h("td", null, badge(r.kind)),
            h("td", { class: "num", text: r.exchange != null ? "answer " + (r.exchange + 1) : "" }),
            h("td", { class: "num", text: fmt.ms(r.ms) }), h("td", { class: "preview", text: r.prompt || "" })));
        }
        box.append(h("table", { class: "grid" }, tb));
      }
      show(s.html ? "rendered" : "source");
      if (answer != null) {
        const el = box.querySelector(`[data-answer="${CSS.escape(answer)}"]`);
        if (el) el.scrollIntoView({ block: "center" });
      }
    })();
    let msgIndex = -1;
    return {
      keys: {
        r: () => tabs && tabs.show("rendered"),
        s: () => tabs && tabs.show("source"),
        d: () => tabs && tabs.show("data"),
      },
      move(d) {
        const msgs = [...box.querySelectorAll(".panel:not([hidden]) section.msg")];
        if (!msgs.length) return;
        msgIndex = Math.max(0, Math.min(msgs.length - 1, msgIndex + d));
        msgs.forEach((m, i) => m.classList.toggle("kbd", i === msgIndex));
        msgs[msgIndex].scrollIntoView({ block: "nearest" });
      },
    };
  }

  function fact(label, value, title) {
    return h("div", null, h("dt", { text: label }), h("dd", { title: title || null }, value == null ? "–" : value));
  }

  // -- one request ------------------------------------------------------------------------

  function requestView(parts) {
    const id = parts[0];
    const box = h("div");
    main.append(box);
    (async () => {
      let d;
      try { d = await api("/logs/" + encodeURIComponent(id)); } catch (e) { return failed(box, e); }
      const r = d.row;
      const served = r.served_model && r.served_model !== r.model ? r.served_model : null;
      const match = r.match === "exact" ? "exact" + (r.plays > 1 ? ` (answer ${r.play} of ${r.plays})` : "")
        : r.match === "nearest" ? `none; nearest ${(r.score * 100).toFixed(0)}% similar` : "none";
      const sessionLink = d.session
        ? h("a", { href: sessionHref(d.session.name, d.session.exchange), title: d.session.name,
            text: shortName(d.session.name) + (d.session.line ? ":" + d.session.line : "") })
        : "–";
      box.append(
        h("div", { class: "crumbs" }, h("a", { href: "#/", text: "Live" }), " / request #" + r.id),
        h("h1", null, badge(r.kind), " ", h("span", { class: "mono", text: `${r.method} ${r.path}${r.query ? "?" + r.query : ""}` }), " ",
          h("span", { class: r.status >= 400 ? "status-err" : "muted", text: r.status != null ? String(r.status) : "" })),
        h("dl", { class: "facts" },
          fact("time", new Date(r.at * 1000).toLocaleString(), r.time),
          fact("model asked", r.model || "–"),
          fact("model served", r.served_model || "–"),
          fact("match", match),
          fact("duration", fmt.ms(r.ms)),
          fact("first byte", fmt.ms(r.ttfb_ms)),
          fact("time saved", r.kind === "replay" ? fmt.ms(r.saved_ms || 0) : "–"),
          fact("tokens", r.total_tokens != null ? `${r.prompt_tokens ?? "?"} + ${r.completion_tokens ?? "?"} = ${r.total_tokens}` : "–"),
          fact("sent", fmt.bytes(r.req_bytes)),
          fact("received", fmt.bytes(r.resp_bytes)),
          fact("session", sessionLink),
          fact("client", r.client || "–"),
          fact("streamed", r.stream ? "yes" : "no"),
          fact("request", `#${r.req} of run ${r.run.split("-")[0]}`, `rechat process ${r.run}`)),
        r.detail ? h("div", { class: "banner" + (r.kind === "miss" || r.kind === "error" ? "" : " info"), text: r.detail }) : "");
      if (d.nearest) {
        box.append(h("h2", null, "Nearest recording: ",
          h("a", { href: sessionHref(d.nearest.name), text: `${d.nearest.name}:${d.nearest.line}` }),
          h("span", { class: "count", text: ` (similarity ${d.nearest.similarity.toFixed(2)})` })),
          h("p", { class: "muted", text: "What this request changes compared with the recording (- recorded, + this request):" }),
          h("div", { class: "diff", html: d.nearest.diff_html }));
      }
      if (d.conversation_html) {
        box.append(h("h2", { text: "Conversation" }), h("div", { class: "conversation", html: d.conversation_html }));
      }
      const reqPanel = h("div", { class: "panel", html: d.request.html });
      const respPanel = h("div", { class: "panel", html: d.response.html });
      const headersTable = (rows) => h("table", { class: "headers" }, h("tbody", null,
        rows.length ? rows.map(([k, v]) => h("tr", null, h("td", { text: k }), h("td", { text: v }))) : h("tr", null, h("td", { class: "muted", text: "(none kept)" }))));
      box.append(
        h("div", { class: "two" },
          h("div", null, h("h2", null, "Request ", h("span", { class: "count", text: fmt.bytes(r.req_bytes) + (d.request.truncated ? ", truncated" : "") })), reqPanel,
            h("details", null, h("summary", { text: "headers (allow-listed; secrets never stored)" }), headersTable(d.request.headers))),
          h("div", null, h("h2", null, "Response ", h("span", { class: "count", text: fmt.bytes(r.resp_bytes) + (d.response.truncated ? ", truncated" : "") + (d.response_rebuilt ? ", rebuilt from the session" : "") })), respPanel,
            h("details", null, h("summary", { text: "headers (redacted)" }), headersTable(d.response.headers)))));
    })();
    return {};
  }

  // -- stats ------------------------------------------------------------------------------

  function statsView(_, q) {
    const range = q.get("range") || "all";
    const ranges = [["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"], ["all", "all"]];
    const box = h("div");
    main.append(h("div", { class: "filters" }, h("div", { class: "ranges", role: "group", "aria-label": "time range" },
      ranges.map(([v, t]) => h("a", { href: "#/stats?range=" + v, class: v === range ? "active" : "", text: t })))), box);

    async function load() {
      let st;
      try { st = await api("/stats", { since: range === "all" ? null : range }); } catch (e) { return failed(box, e); }
      const t = st.totals;
      const card = (label, value, sub, cls) => h("div", { class: "card " + (cls || "") }, h("div", { class: "label", text: label }), h("div", { class: "value", text: value }), sub ? h("div", { class: "sub", text: sub }) : "");
      const k = t.by_kind;
      box.replaceChildren(
        h("div", { class: "cards" },
          card("Requests", fmt.int(t.requests), `${fmt.int(k.replay)} replayed · ${fmt.int(k.record)} recorded · ${fmt.int(k.forward)} forwarded`),
          card("Hit rate", fmt.pct(t.hit_rate), `${fmt.int(t.hits)} hits · ${fmt.int(t.misses)} misses`, "hit-rate"),
          card("Time saved", fmt.dur(t.time_saved_ms), "upstream time the replays did not spend"),
          card("Tokens saved", fmt.tokens(t.tokens_saved), `of ${fmt.tokens(t.tokens)} tokens in the log`),
          card("Misses and errors", fmt.int(t.errors + (k.miss || 0)), `${fmt.int(k.miss)} misses (404) · ${fmt.int(t.errors)} errors`),
          card("In flight", fmt.int(st.inflight), `average duration ${fmt.ms(t.avg_ms)}`)),
        h("h2", { text: "Requests over time" }),
        h("div", { class: "legend" }, KINDS.map((kk) => h("span", null, h("i", { class: kk }), kk))),
        timeline(st.timeline),
        h("div", { class: "two" },
          h("div", null, h("h2", { text: "By model" }), byModel(st.by_model)),
          h("div", null, h("h2", { text: "By kind" }), byKind(st.by_kind))));
    }

    function timeline(tl) {
      const W = 1000, H = 160;
      const pts = tl.points;
      const wrap = h("div", { class: "timeline" });
      if (!pts.length) return h("p", { class: "muted", text: "No requests in this range." });
      const max = Math.max(1, ...pts.map((p) => KINDS.reduce((s, k) => s + p[k], 0)));
      const el = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
        "aria-label": `requests per ${bucketName(tl.bucket_s)}` });
      const bw = W / pts.length;
      el.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" }));
      pts.forEach((p, i) => {
        let y = H;
        const total = KINDS.reduce((s, k) => s + p[k], 0);
        for (const k of KINDS) {
          if (!p[k]) continue;
          const hgt = (p[k] / max) * (H - 4);
          y -= hgt;
          el.append(svg("rect", { x: i * bw + bw * 0.1, y, width: Math.max(1, bw * 0.8), height: hgt, class: k },
            svg("title", { text: `${fmt.date(p.t)}: ${p[k]} ${k} of ${total}` })));
        }
      });
      wrap.append(
        h("div", { class: "chart-scale muted", text: `max ${max} per ${bucketName(tl.bucket_s)}` }),
        el,
        h("div", { class: "chart-axis muted" }, h("span", { text: fmt.date(pts[0].t) }), h("span", { text: fmt.date(pts[pts.length - 1].t + tl.bucket_s) })));
      return wrap;
    }

    function bucketName(s) {
      return { 60: "minute", 300: "5 minutes", 900: "15 minutes", 3600: "hour", 10800: "3 hours", 21600: "6 hours", 86400: "day", 604800: "week" }[s] || `${Math.round(s / 86400)} days`;
    }

    function byModel(rows) {
      if (!rows.length) return h("p", { class: "muted", text: "No requests yet." });
      return h("table", { class: "grid" },
        h("thead", null, h("tr", null, h("th", { text: "model" }), h("th", { class: "num", text: "requests" }), h("th", { text: "hit rate" }),
          h("th", { class: "num", text: "avg" }), h("th", { class: "num", text: "tokens saved" }), h("th", { class: "num", text: "time saved" }))),
        h("tbody", null, rows.map((m) => h("tr", null,
          h("td", { text: m.model || "(none)" }), h("td", { class: "num", text: fmt.int(m.requests) }),
          h("td", { class: "nowrap" }, h("span", { class: "bar-track" }, h("span", { class: "bar", style: { width: ((m.hit_rate || 0) * 100) + "%", display: "block" } })), fmt.pct(m.hit_rate)),
          h("td", { class: "num", text: fmt.ms(m.avg_ms) }), h("td", { class: "num", text: fmt.tokens(m.tokens_saved) }),
          h("td", { class: "num", text: fmt.dur(m.time_saved_ms) })))));
    }

    function byKind(rows) {
      if (!rows.length) return h("p", { class: "muted", text: "No requests yet." });
      return h("table", { class: "grid" },
        h("thead", null, h("tr", null, h("th", { text: "kind" }), h("th", { class: "num", text: "requests" }), h("th", { class: "num", text: "avg" }),
          h("th", { class: "num", text: "avg first byte" }), h("th", { class: "num", text: "slowest" }), h("th", { class: "num", text: "sent" }))),
        h("tbody", null, rows.map((k) => h("tr", null, h("td", null, badge(k.kind)), h("td", { class: "num", text: fmt.int(k.requests) }),
          h("td", { class: "num", text: fmt.ms(k.avg_ms) }), h("td", { class: "num", text: fmt.ms(k.avg_ttfb_ms) }),
          h("td", { class: "num", text: fmt.ms(k.max_ms) }), h("td", { class: "num", text: fmt.bytes(k.bytes_out) })))));
    }

    state.listeners.add(debounce((type) => { if (type === "exchange") load(); }, 1000));
    load();
    return {};
  }

  // -- keyboard ---------------------------------------------------------------------------

  const help = document.getElementById("help");
  function toggleHelp(show) { help.hidden = show === undefined ? !help.hidden : !show; }
  document.getElementById("help-button").addEventListener("click", () => toggleHelp());
  help.addEventListener("click", (e) => { if (e.target === help) toggleHelp(false); });

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement && document.activeElement.tagName);
    if (e.key === "Escape") {
      if (!help.hidden) return toggleHelp(false);
      if (typing) { document.activeElement.blur(); return; }
      if (current && (current.name === "s" || current.name === "r")) history.back();
      return;
    }
    if (typing) return;
    const c = current || {};
    const keys = {
      "1": () => { location.hash = "#/"; },
      "2": () => { location.hash = "#/sessions"; },
      "3": () => { location.hash = "#/stats"; },
      "?": () => toggleHelp(),
      "/": () => { if (c.search) { c.search.focus(); c.search.select(); } },
      j: () => (c.sel || c).move && (c.sel || c).move(1),
      k: () => (c.sel || c).move && (c.sel || c).move(-1),
      ArrowDown: () => c.sel && c.sel.move(1),
      ArrowUp: () => c.sel && c.sel.move(-1),
      Enter: () => c.sel && c.sel.open(),
      o: () => c.sel && c.sel.open(),
      ...(c.keys || {}),
    };
    const fn = keys[e.key];
    if (fn) {
      if (e.key.startsWith("Arrow") && !c.sel) return;
      e.preventDefault();
      fn();
    }
  });

  // -- start ------------------------------------------------------------------------------

  window.addEventListener("hashchange", route);
  (async () => {
    try {
      state.info = await api("/info");
      const i = state.info;
      const ups = (i.upstreams || []).map((u) => u.replace(/^https?:\/\//, ""));
      document.getElementById("mode").textContent = i.mode + (ups.length ? " → " + ups[0] + (ups.length > 1 ? ` +${ups.length - 1}` : "") : " (offline)");
      document.getElementById("mode").title = `sessions: ${i.sessions.join(", ")}\nlog: ${i.log.path}` + (i.log.enabled ? "" : " (off: " + i.log.error + ")");
    } catch (e) { /* shown by the views */ }
  })();
  route();
  connect();
  refreshSummary(true);
})();
