/** The dashboard page: one self-contained HTML document (no CDN, works offline), drawn from the /dashboard/events stream. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tokamak · live memory</title>
<style>
  :root { --bg:#0f1218; --panel:#171b24; --line:#262c38; --text:#e6e9ef; --dim:#8b93a5; --accent:#f5a524;
          --weights:#6c8cff; --kv:#35c28b; --act:#f5a524; --ws:#c77dff; --other:#8b93a5; --free:#222834; --cached:#2f5d8f; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--text); }
  header { display:flex; align-items:baseline; gap:16px; padding:14px 22px; border-bottom:1px solid var(--line); flex-wrap:wrap; }
  header h1 { margin:0; font-size:18px; letter-spacing:.5px; } header h1 b { color:var(--accent); }
  header .meta { color:var(--dim); } header .status { margin-left:auto; color:var(--dim); font-variant-numeric:tabular-nums; }
  .dot { display:inline-block; width:8px; height:8px; border-radius:50%; background:#555; margin-right:6px; } .dot.live { background:#35c28b; box-shadow:0 0 6px #35c28b; }
  main { padding:16px 22px; display:grid; grid-template-columns: repeat(12, 1fr); gap:14px; }
  .panel { background:var(--panel); border:1px solid var(--line); border-radius:10px; padding:14px 16px; min-width:0; }
  .panel h2 { margin:0 0 10px; font-size:12px; font-weight:600; color:var(--dim); text-transform:uppercase; letter-spacing:.8px; }
  .cards { grid-column: span 12; display:grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap:14px; }
  .card { background:var(--panel); border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
  .card .v { font-size:26px; font-weight:650; font-variant-numeric:tabular-nums; } .card .l { color:var(--dim); font-size:12px; }
  .mem { grid-column: span 7; } .lat { grid-column: span 5; } .kv { grid-column: span 7; } .tp { grid-column: span 5; } .reqs { grid-column: span 12; }
  @media (max-width: 1000px) { .mem,.lat,.kv,.tp { grid-column: span 12; } }
  .bar { display:flex; height:30px; border-radius:6px; overflow:hidden; background:var(--free); }
  .bar div { height:100%; min-width:1px; } .legend { display:flex; flex-wrap:wrap; gap:6px 16px; margin-top:10px; color:var(--dim); font-size:12px; }
  .legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; vertical-align:-1px; }
  .legend b { color:var(--text); font-weight:600; font-variant-numeric:tabular-nums; }
  .groups { margin-top:12px; display:grid; grid-template-columns: 120px 1fr 80px; gap:3px 10px; font-size:12px; max-height:190px; overflow:auto; }
  .groups .g { height:10px; border-radius:3px; align-self:center; } .groups span { color:var(--dim); } .groups .n { text-align:right; font-variant-numeric:tabular-nums; color:var(--text); }
  .note { color:var(--dim); font-size:12px; margin-top:8px; }
  canvas { display:block; width:100%; }
  #kvgrid { image-rendering: pixelated; cursor: crosshair; }
  table { width:100%; border-collapse:collapse; font-size:13px; font-variant-numeric:tabular-nums; }
  th { text-align:left; color:var(--dim); font-weight:500; padding:4px 8px; border-bottom:1px solid var(--line); }
  td { padding:4px 8px; border-bottom:1px solid #1d222c; } td.num, th.num { text-align:right; }
  .st { padding:1px 7px; border-radius:9px; font-size:11px; } .st.running { background:#173d2e; color:#5ee0a8; } .st.waiting { background:#3a3220; color:#f5c46a; } .st.preempted { background:#40202a; color:#ff8fa3; }
  #tip { position:fixed; pointer-events:none; background:#0b0d12ee; border:1px solid var(--line); border-radius:6px; padding:6px 9px; font-size:12px; display:none; z-index:10; }
  #login { position:fixed; inset:0; background:#0f1218f0; display:none; align-items:center; justify-content:center; z-index:20; }
  #login form { background:var(--panel); border:1px solid var(--line); border-radius:10px; padding:22px; width:340px; }
  #login input { width:100%; padding:8px; margin:10px 0; background:#0f1218; color:var(--text); border:1px solid var(--line); border-radius:6px; }
  #login button { padding:8px 14px; background:var(--accent); border:0; border-radius:6px; font-weight:600; cursor:pointer; }
  .empty { color:var(--dim); text-align:center; padding:14px; }
</style>
</head>
<body>
<header>
  <h1><b>◉</b> Tokamak</h1>
  <span class="meta" id="model">connecting…</span>
  <span class="status"><span class="dot" id="dot"></span><span id="status">offline</span> · <span id="hz">0.0</span> updates/s · <span id="updates">0</span> received</span>
</header>
<main>
  <section class="cards">
    <div class="card"><div class="v" id="running">–</div><div class="l">running</div></div>
    <div class="card"><div class="v" id="waiting">–</div><div class="l">waiting</div></div>
    <div class="card"><div class="v" id="preempted">–</div><div class="l">preempted now · <span id="preempt-total">0</span> total</div></div>
    <div class="card"><div class="v" id="prompt-rate">–</div><div class="l">prompt tokens/s</div></div>
    <div class="card"><div class="v" id="gen-rate">–</div><div class="l">generation tokens/s</div></div>
    <div class="card"><div class="v" id="kv-usage">–</div><div class="l">KV cache in use</div></div>
    <div class="card"><div class="v" id="hit-rate">–</div><div class="l">prefix-cache hit rate</div></div>
  </section>
  <section class="panel mem">
    <h2>Memory map · <span id="device"></span></h2>
    <div class="bar" id="membar"></div>
    <div class="legend" id="memlegend"></div>
    <div class="groups" id="groups"></div>
    <div class="note" id="arena"></div>
  </section>
  <section class="panel lat">
    <h2>Latency · last minute</h2>
    <table><thead><tr><th></th><th class="num">p50</th><th class="num">p90</th><th class="num">p99</th><th class="num">samples</th></tr></thead>
    <tbody><tr><td>time to first token</td><td class="num" id="ttft-p50">–</td><td class="num" id="ttft-p90">–</td><td class="num" id="ttft-p99">–</td><td class="num" id="ttft-n">0</td></tr>
    <tr><td>inter-token latency</td><td class="num" id="itl-p50">–</td><td class="num" id="itl-p90">–</td><td class="num" id="itl-p99">–</td><td class="num" id="itl-n">0</td></tr></tbody></table>
    <h2 style="margin-top:18px">KV blocks</h2>
    <div class="legend"><span><i style="background:var(--kv)"></i>in use <b id="kv-used">0</b></span><span><i style="background:var(--cached)"></i>cached prefix <b id="kv-cached">0</b></span><span><i style="background:var(--free)"></i>free <b id="kv-free">0</b></span><span>of <b id="kv-total">0</b> × <b id="kv-bs">0</b> tokens</span></div>
  </section>
  <section class="panel kv">
    <h2>KV cache blocks · hover for the owner</h2>
    <canvas id="kvgrid" height="220"></canvas>
  </section>
  <section class="panel tp">
    <h2>Throughput · tokens/s, last minute</h2>
    <canvas id="tpchart" height="220"></canvas>
    <div class="legend"><span><i style="background:var(--kv)"></i>generation</span><span><i style="background:var(--weights)"></i>prompt</span></div>
  </section>
  <section class="panel reqs">
    <h2>Live requests</h2>
    <table><thead><tr><th>request</th><th>state</th><th class="num">prompt</th><th class="num">cached</th><th class="num">output</th><th class="num">blocks</th><th class="num">preempted</th><th class="num">age</th></tr></thead>
    <tbody id="reqrows"><tr><td colspan="8" class="empty">no requests</td></tr></tbody></table>
  </section>
</main>
<div id="tip"></div>
<div id="login"><form id="loginform"><b>API key</b><div class="note">This server was started with --api-key. The key is kept in this browser.</div><input id="key" type="password" autocomplete="off" placeholder="sk-..."><button>Connect</button></form></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const TAG_COLORS = { weights: "var(--weights)", "kv-cache": "var(--kv)", activations: "var(--act)", workspace: "var(--ws)", other: "var(--other)" };
const fmtBytes = (b) => { const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0; while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; } return (i ? b.toFixed(b < 10 ? 2 : 1) : b) + " " + u[i]; };
const fmtRate = (x) => x >= 1000 ? (x / 1000).toFixed(1) + "k" : x.toFixed(x < 10 ? 1 : 0);
const fmtMs = (x) => x == null ? "–" : x < 10 ? x.toFixed(2) + " ms" : x < 1000 ? x.toFixed(0) + " ms" : (x / 1000).toFixed(2) + " s";
let key = localStorage.getItem("tokamak-api-key") || "";
let snap = null, updates = 0, stamps = [], owners = new Map();

function hue(id) { let h = 0; for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) >>> 0; return h % 360; }

async function connect() {
  for (;;) {
    try {
      const res = await fetch("/dashboard/events", { headers: key ? { authorization: "Bearer " + key } : {} });
      if (res.status === 401) { $("login").style.display = "flex"; setStatus(false, "API key needed"); return; }
      if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
      setStatus(true, "live");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\\n\\n")) >= 0) {
          const ev = buf.slice(0, i); buf = buf.slice(i + 2);
          if (ev.startsWith("data: ")) onSnapshot(JSON.parse(ev.slice(6)));
        }
      }
    } catch (e) { /* retry below */ }
    setStatus(false, "reconnecting");
    await new Promise((r) => setTimeout(r, 1000));
  }
}
function setStatus(live, text) { $("dot").className = "dot" + (live ? " live" : ""); $("status").textContent = text; }
$("loginform").addEventListener("submit", (e) => { e.preventDefault(); key = $("key").value.trim(); localStorage.setItem("tokamak-api-key", key); $("login").style.display = "none"; connect(); });

function onSnapshot(s) {
  snap = s; updates++;
  const now = performance.now(); stamps.push(now); while (stamps.length && stamps[0] < now - 5000) stamps.shift();
  $("updates").textContent = updates;
  $("hz").textContent = (stamps.length / Math.min(5, Math.max(1, (now - stamps[0]) / 1000 || 1))).toFixed(1);
  $("model").textContent = s.model + " · " + s.backend;
  $("running").textContent = s.counts.running; $("waiting").textContent = s.counts.waiting; $("preempted").textContent = s.counts.preempted;
  $("preempt-total").textContent = s.counts.preemptionsTotal;
  $("prompt-rate").textContent = fmtRate(s.throughput.promptTokensPerSecond); $("gen-rate").textContent = fmtRate(s.throughput.generationTokensPerSecond);
  $("kv-usage").textContent = (100 * s.kv.usage).toFixed(1) + "%";
  $("hit-rate").textContent = s.kv.prefixCacheQueries ? (100 * s.kv.prefixCacheHits / s.kv.prefixCacheQueries).toFixed(1) + "%" : "–";
  drawMemory(s); drawLatency(s); drawKv(s); drawThroughput(s); drawRequests(s);
}

function drawMemory(s) {
  const dev = s.device, m = s.memory;
  $("device").textContent = dev.name + " · " + fmtBytes(dev.totalBytes) + " total, " + fmtBytes(dev.freeBytes) + " free";
  const total = Math.max(m.total, 1);
  const tags = Object.entries(m.byTag).filter(([, b]) => b > 0);
  $("membar").innerHTML = tags.map(([t, b]) => '<div title="' + t + ": " + fmtBytes(b) + '" style="width:' + (100 * b / total) + "%;background:" + TAG_COLORS[t] + '"></div>').join("");
  $("memlegend").innerHTML = tags.map(([t, b]) => '<span><i style="background:' + TAG_COLORS[t] + '"></i>' + t + " <b>" + fmtBytes(b) + "</b> " + (100 * b / total).toFixed(1) + "%</span>").join("") +
    "<span>allocated <b>" + fmtBytes(m.total) + "</b> · peak <b>" + fmtBytes(m.peak) + "</b> · " + m.allocations + " buffers</span>";
  const groups = [...m.groups].sort((a, b) => b.bytes - a.bytes);
  const max = Math.max(1, ...groups.map((g) => g.bytes));
  $("groups").innerHTML = groups.map((g) => "<span>" + g.name + '</span><div class="g" style="width:' + Math.max(1, 100 * g.bytes / max) + "%;background:" + TAG_COLORS[g.tag] + '"></div><div class="n">' + fmtBytes(g.bytes) + "</div>").join("");
  $("arena").textContent = m.arena.bytes ? "activation arena: " + fmtBytes(m.arena.bytes) + " with buffer reuse, " + fmtBytes(m.arena.unsharedBytes) + " without (" + (m.arena.unsharedBytes / m.arena.bytes).toFixed(1) + "× saved)" : "";
}

function drawLatency(s) {
  for (const [k, w] of [["ttft", s.latency.ttftMs], ["itl", s.latency.itlMs]]) {
    for (const p of ["p50", "p90", "p99"]) $(k + "-" + p).textContent = fmtMs(w.values[p]);
    $(k + "-n").textContent = w.count;
  }
  $("kv-used").textContent = s.kv.used; $("kv-cached").textContent = s.kv.cached; $("kv-free").textContent = s.kv.free;
  $("kv-total").textContent = s.kv.numBlocks; $("kv-bs").textContent = s.kv.blockSize;
}

let kvLayout = null;
function drawKv(s) {
  const c = $("kvgrid"), ctx = c.getContext("2d");
  const w = c.clientWidth, n = s.kv.numBlocks;
  const cell = Math.max(2, Math.min(14, Math.floor(Math.sqrt((w * 220) / n))));
  const cols = Math.max(1, Math.floor(w / cell)), rows = Math.ceil(n / cols);
  const h = Math.max(40, rows * cell);
  const dpr = window.devicePixelRatio || 1;
  if (c.width !== Math.floor(w * dpr) || c.height !== Math.floor(h * dpr)) { c.width = Math.floor(w * dpr); c.height = Math.floor(h * dpr); c.style.height = h + "px"; }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  kvLayout = { cell, cols, n };
  owners = new Map();
  for (const r of s.requests) for (const b of r.blocks) { const o = owners.get(b); if (o) o.push(r.id); else owners.set(b, [r.id]); }
  const bin = atob(s.kv.blockStates);
  const css = getComputedStyle(document.documentElement);
  const FREE = css.getPropertyValue("--free").trim(), CACHED = css.getPropertyValue("--cached").trim();
  ctx.clearRect(0, 0, w, h);
  const gap = cell >= 5 ? 1 : 0;
  for (let i = 0; i < n; i++) {
    const st = bin.charCodeAt(i);
    const o = owners.get(i);
    ctx.fillStyle = st === 2 ? (o ? "hsl(" + hue(o[0]) + ",65%,55%)" : "#35c28b") : st === 1 ? CACHED : FREE;
    ctx.fillRect((i % cols) * cell, Math.floor(i / cols) * cell, cell - gap, cell - gap);
  }
}
$("kvgrid").addEventListener("mousemove", (e) => {
  const tip = $("tip");
  if (!snap || !kvLayout) return;
  const r = e.target.getBoundingClientRect();
  const col = Math.floor((e.clientX - r.left) / kvLayout.cell), row = Math.floor((e.clientY - r.top) / kvLayout.cell);
  const i = row * kvLayout.cols + col;
  if (col >= kvLayout.cols || i >= kvLayout.n || i < 0) { tip.style.display = "none"; return; }
  const st = atob(snap.kv.blockStates).charCodeAt(i);
  const o = owners.get(i);
  tip.innerHTML = "block <b>" + i + "</b> · " + (st === 2 ? "in use" : st === 1 ? "cached prefix (free, reusable)" : "free") + (o ? "<br>" + o.map((x) => "▸ " + x).join("<br>") : "");
  tip.style.display = "block"; tip.style.left = e.clientX + 14 + "px"; tip.style.top = e.clientY + 10 + "px";
});
$("kvgrid").addEventListener("mouseleave", () => ($("tip").style.display = "none"));

function drawThroughput(s) {
  const c = $("tpchart"), ctx = c.getContext("2d"), dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = 220;
  if (c.width !== Math.floor(w * dpr)) { c.width = Math.floor(w * dpr); c.height = h * dpr; c.style.height = h + "px"; }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0); ctx.clearRect(0, 0, w, h);
  const hist = s.throughput.history;
  const max = Math.max(1, ...hist.map((p) => Math.max(p.prompt, p.generation)));
  ctx.strokeStyle = "#262c38"; ctx.fillStyle = "#8b93a5"; ctx.font = "11px system-ui"; ctx.lineWidth = 1;
  for (let k = 0; k <= 4; k++) { const y = 10 + (h - 30) * k / 4; ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(w, y); ctx.stroke(); ctx.fillText(fmtRate(max * (1 - k / 4)), 2, y + 4); }
  const now = Date.now();
  const x = (t) => 40 + (w - 44) * (1 - (now - t) / 60000);
  const y = (v) => 10 + (h - 30) * (1 - v / max);
  for (const [field, color] of [["prompt", "#6c8cff"], ["generation", "#35c28b"]]) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    hist.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p[field])) : ctx.moveTo(x(p.t), y(p[field]))));
    ctx.stroke();
  }
  ctx.fillStyle = "#8b93a5"; ctx.fillText("−60 s", 40, h - 4); ctx.fillText("now", w - 26, h - 4);
}

// The first 64 only: a table that fits a screen is read at a glance, and rebuilding hundreds of rows 4 times a second costs the browser more than it tells.
const MAX_ROWS = 64;
function drawRequests(s) {
  const rows = s.requests.slice(0, MAX_ROWS).map((r) => "<tr><td>" + r.id.replace(/[<>&]/g, "") + '</td><td><span class="st ' + r.state + '">' + r.state + '</span></td><td class="num">' + r.promptTokens +
    '</td><td class="num">' + r.cachedTokens + '</td><td class="num">' + r.outputTokens + '</td><td class="num">' + r.blocks.length + '</td><td class="num">' + r.numPreemptions + '</td><td class="num">' + (r.ageMs / 1000).toFixed(1) + " s</td></tr>");
  $("reqrows").innerHTML = rows.length ? rows.join("") + (s.requests.length > MAX_ROWS ? '<tr><td colspan="8" class="empty">… ' + (s.requests.length - MAX_ROWS) + " more</td></tr>" : "") : '<tr><td colspan="8" class="empty">no requests</td></tr>';
}
connect();
</script>
</body>
</html>
`;
