// The dashboard's behaviour: polls /health, /metrics and /api/rooms (every replica) every 2 s,
// draws the message-rate chart, tails a room over the WebSocket through the client module with
// its presence, publishes to a room and disconnects a user through the server API (the admin
// token goes in the first frame and the Authorization header, never in a URL).
import { RoomcastClient } from './roomcast.js';

const POLL_MS = 2000;
const CHART_POINTS = 60; // two minutes at one sample per poll
const TAIL_MAX = 200;
const ROOMS_SHOWN = 500;
const STORAGE_KEY = 'roomcast.adminToken';

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  client: null,
  tailRoom: null,
  rooms: {},
  samples: [], // {in, out} messages per second
  lastCounters: null, // {t, in, out}
  clientsTimer: null,
};

// ---- small helpers ----

function setText(id, text) {
  $(id).textContent = text;
}

function say(text, kind = 'info') {
  const el = $('message');
  el.textContent = text;
  el.dataset.kind = kind;
}

function badge(id, value) {
  const el = $(id);
  el.textContent = value;
  el.dataset.state = value;
}

function duration(s) {
  if (!Number.isFinite(s)) return '–';
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return `${m}m ${Math.floor(s % 60)}s`;
}

function formatRate(x) {
  if (!Number.isFinite(x)) return '–';
  return x >= 100 ? x.toFixed(0) : x.toFixed(1);
}

// ---- /health (public) ----

async function pollHealth() {
  try {
    const r = await fetch('/health', { cache: 'no-store' });
    const h = await r.json();
    setText('node', h.node ?? '–');
    setText('version', h.version ?? '–');
    setText('uptime', duration(h.uptime_s));
    badge('status', h.status ?? 'unknown');
    badge('pg-state', h.postgres ?? 'unknown');
    badge('redis-state', h.redis ?? 'unknown');
    setText('health-connections', String(h.connections ?? '–'));
  } catch {
    badge('status', 'unreachable');
    badge('pg-state', 'unknown');
    badge('redis-state', 'unknown');
  }
}

// ---- /metrics: messages per second ----

/** Sums every sample of a metric family (all label sets) in Prometheus text format. */
export function metricSum(text, name) {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    const value = Number(rest.slice(rest.lastIndexOf('}') + 1).trim().split(/\s+/)[0]);
    if (Number.isFinite(value)) {
      sum += value;
      found = true;
    }
  }
  return found ? sum : NaN;
}

async function pollMetrics() {
  let text;
  try {
    const r = await fetch('/metrics', { cache: 'no-store' });
    if (!r.ok) return;
    text = await r.text();
  } catch {
    return;
  }
  const now = performance.now();
  const cur = {
    t: now,
    in: metricSum(text, 'roomcast_messages_in_total'),
    out: metricSum(text, 'roomcast_messages_out_total'),
  };
  const prev = state.lastCounters;
  state.lastCounters = cur;
  if (!prev) return;
  const dt = (cur.t - prev.t) / 1000;
  // A counter that went down means roomcast restarted: that interval has no rate.
  const rate = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && a >= b && dt > 0 ? (a - b) / dt : NaN);
  const sample = { in: rate(cur.in, prev.in), out: rate(cur.out, prev.out) };
  state.samples.push(sample);
  if (state.samples.length > CHART_POINTS) state.samples.shift();
  setText('rate-in', formatRate(sample.in));
  setText('rate-out', formatRate(sample.out));
  drawChart();
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawChart() {
  const canvas = $('chart');
  const css = getComputedStyle(canvas);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const left = 48;
  const right = 8;
  const top = 8;
  const bottom = 22;
  const pw = w - left - right;
  const ph = h - top - bottom;
  let max = 0;
  for (const s of state.samples) max = Math.max(max, s.in || 0, s.out || 0);
  max = niceMax(max);

  ctx.font = '12px system-ui, sans-serif';
  ctx.fillStyle = css.getPropertyValue('--muted').trim() || '#666';
  ctx.strokeStyle = css.getPropertyValue('--grid').trim() || '#ddd';
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, Math.round(y) + 0.5);
    ctx.lineTo(left + pw, Math.round(y) + 0.5);
    ctx.stroke();
    const v = (max * i) / 4;
    ctx.fillText(v >= 100 ? v.toFixed(0) : String(Number(v.toFixed(2))), left - 6, y);
  }
  ctx.textAlign = 'left';
  ctx.textBaseline = 'alphabetic';
  ctx.fillText('2 min ago', left, h - 4);
  ctx.textAlign = 'right';
  ctx.fillText('now', left + pw, h - 4);

  const line = (key, color, dash) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.setLineDash(dash);
    ctx.beginPath();
    let pen = false;
    const n = state.samples.length;
    state.samples.forEach((s, i) => {
      const v = s[key];
      if (!Number.isFinite(v)) {
        pen = false;
        return;
      }
      const x = left + pw - ((n - 1 - i) * pw) / (CHART_POINTS - 1);
      const y = top + ph - (v / max) * ph;
      if (pen) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      pen = true;
    });
    ctx.stroke();
    ctx.setLineDash([]);
  };
  line('in', css.getPropertyValue('--in').trim() || '#1f6feb', []);
  line('out', css.getPropertyValue('--out').trim() || '#c2410c', [6, 3]);
}

// ---- /api/rooms (admin token): every replica ----

function authHeaders(json = false) {
  const h = { Authorization: 'Bearer ' + state.token };
  if (json) h['Content-Type'] = 'application/json';
  return h;
}

async function pollClients() {
  if (!state.token) return;
  let r;
  try {
    r = await fetch('/api/rooms', { cache: 'no-store', headers: authHeaders() });
  } catch {
    say('roomcast is unreachable; retrying.', 'error');
    return;
  }
  if (r.status === 401 || r.status === 403) {
    say(r.status === 401 ? 'The token was refused (invalid or expired).' : 'This token is not an admin token.', 'error');
    disconnect();
    return;
  }
  if (!r.ok) return;
  const c = await r.json();
  const nodes = Object.entries(c.nodes || {}).sort((a, b) => a[0].localeCompare(b[0]));
  setText('connections', String(nodes.reduce((n, [, v]) => n + (v.connections || 0), 0)));
  state.rooms = c.rooms || {};
  renderRooms();
  renderNodes(nodes, c.partial);
  pollPresence();
}

function renderNodes(nodes, partial) {
  const rows = nodes.map(([name, v]) => {
    const tr = document.createElement('tr');
    const cells = [name, String(v.connections), String(v.rooms), v.postgres, v.redis, duration(v.uptime_s)];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      if (i === 1 || i === 2) td.className = 'num';
      if (i === 3 || i === 4) {
        const b = document.createElement('span');
        b.className = 'badge';
        b.textContent = text;
        b.dataset.state = text;
        td.append(b);
      } else {
        td.textContent = text;
      }
      tr.append(td);
    });
    return tr;
  });
  $('nodes').replaceChildren(...rows);
  setText('nodes-note', partial ? 'A replica did not answer in time: the figures lack it.' : '');
}

async function pollPresence() {
  const room = state.tailRoom;
  if (!state.token || !room) {
    setText('presence', '');
    return;
  }
  try {
    const r = await fetch('/api/presence?room=' + encodeURIComponent(room), { cache: 'no-store', headers: authHeaders() });
    if (!r.ok || room !== state.tailRoom) return;
    const p = await r.json();
    const list = p.members.map((m) => (m.conns > 1 ? `${m.user} (${m.conns})` : m.user)).join(', ');
    setText('presence', `Present in ${p.room}: ${p.count} user${p.count === 1 ? '' : 's'}${list ? ': ' + list : ''}${p.truncated ? ', …' : ''}`);
  } catch {
    /* the next poll tries again */
  }
}

// ---- the server API: publish, disconnect ----

async function post(path, body) {
  const r = await fetch(path, { method: 'POST', headers: authHeaders(true), body: JSON.stringify(body) });
  let answer = {};
  try {
    answer = await r.json();
  } catch {
    /* an empty or non-JSON body */
  }
  if (!r.ok) throw new Error(answer.error || `HTTP ${r.status}`);
  return answer;
}

async function publish() {
  if (!state.token) return say('Sign in first.', 'error');
  let data;
  try {
    data = JSON.parse($('pub-data').value || 'null');
  } catch {
    setText('publish-result', 'Data is not valid JSON.');
    return;
  }
  try {
    const a = await post('/api/notify', { room: $('pub-room').value.trim(), event: $('pub-event').value.trim(), data });
    setText('publish-result', `Published (${a.id}).`);
  } catch (e) {
    setText('publish-result', `Not published: ${e.message}.`);
  }
}

async function kick() {
  if (!state.token) return say('Sign in first.', 'error');
  const user = $('kick-user').value.trim();
  try {
    const a = await post('/api/disconnect', { user_id: user });
    setText('kick-result', `${a.affected} connection${a.affected === 1 ? '' : 's'} of ${user} closed${a.partial ? ' (a replica did not answer)' : ''}.`);
  } catch (e) {
    setText('kick-result', `Failed: ${e.message}.`);
  }
}

function renderRooms() {
  const filter = $('room-filter').value.trim().toLowerCase();
  const entries = Object.entries(state.rooms)
    .filter(([name]) => !filter || name.toLowerCase().includes(filter))
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  setText('room-count', String(Object.keys(state.rooms).length));
  const body = $('rooms');
  const rows = entries.slice(0, ROOMS_SHOWN).map(([name, n]) => {
    const tr = document.createElement('tr');
    const td1 = document.createElement('td');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'link';
    button.textContent = name;
    button.title = 'Watch ' + name;
    button.addEventListener('click', () => {
      $('room').value = name;
      watch(name);
    });
    td1.append(button);
    const td2 = document.createElement('td');
    td2.className = 'num';
    td2.textContent = String(n);
    tr.append(td1, td2);
    return tr;
  });
  body.replaceChildren(...rows);
  setText('rooms-more', entries.length > ROOMS_SHOWN ? `and ${entries.length - ROOMS_SHOWN} more` : '');
}

// ---- the WebSocket: live tail ----

function setWsState(text) {
  setText('ws-state', text);
  $('ws-state').dataset.state = text;
}

function connect(token) {
  disconnect(true);
  state.token = token;
  const client = new RoomcastClient('/ws', { token, heartbeatMs: 20000 });
  state.client = client;
  client.on('open', () => setWsState('authenticating'));
  client.on('authenticated', () => {
    setWsState('connected');
    say('Connected as admin.', 'ok');
    pollClients(); // counts this connection now rather than at the next poll
  });
  client.on('close', (e) => {
    if (e.reconnecting) {
      setWsState(`reconnecting in ${(e.delayMs / 1000).toFixed(1)} s`);
    } else {
      setWsState('not connected');
      if (e.code === 4001) say('The WebSocket refused the token (invalid or expired).', 'error');
    }
  });
  client.on('joined', (p) => {
    if (p.room === state.tailRoom) setText('tail-state', `Watching ${p.room}: newest first, last ${TAIL_MAX} kept.`);
  });
  client.on('error', (p) => {
    if (p.room && p.room === state.tailRoom) setText('tail-state', `Cannot watch ${p.room}: ${p.error}.`);
    else if (p.code !== 'transport') say(`Server: ${p.error}${p.code ? ` (${p.code})` : ''}`, 'error');
  });
  client.on('token_expiring', (p) => say(`The token expires in ${p.in_s} s: paste a new one and press Connect.`, 'warn'));
  client.on('message', (m) => {
    if (m && m.room === state.tailRoom) addTail(m);
  });
  if (state.tailRoom) client.join(state.tailRoom);
  $('disconnect').disabled = false;
  pollClients();
  state.clientsTimer = setInterval(pollClients, POLL_MS);
}

function disconnect(quiet = false) {
  clearInterval(state.clientsTimer);
  state.clientsTimer = null;
  if (state.client) state.client.close();
  state.client = null;
  state.token = null;
  $('disconnect').disabled = true;
  setWsState('not connected');
  if (!quiet) sessionStorage.removeItem(STORAGE_KEY);
}

function watch(room) {
  if (!room) return;
  const client = state.client;
  if (client && state.tailRoom && state.tailRoom !== room) client.leave(state.tailRoom);
  state.tailRoom = room;
  if (!client) {
    setText('tail-state', `Will watch ${room} once connected.`);
    return;
  }
  setText('tail-state', `Joining ${room}…`);
  client.join(room);
  pollPresence();
}

function addTail(m) {
  const li = document.createElement('li');
  const head = document.createElement('div');
  head.className = 'tail-head';
  const time = document.createElement('time');
  const ts = m.ts ? new Date(m.ts) : new Date();
  time.dateTime = ts.toISOString();
  time.textContent = ts.toLocaleTimeString();
  const what = document.createElement('strong');
  what.textContent = m.event ?? (m.from ? `broadcast from ${m.user ?? m.from}` : 'message');
  const id = document.createElement('span');
  id.className = 'muted';
  id.textContent = `#${m.id ?? '?'}`;
  head.append(time, ' ', what, ' ', id);
  const pre = document.createElement('pre');
  pre.textContent = JSON.stringify(m.data ?? m.body ?? m, null, 2);
  li.append(head, pre);
  const list = $('tail');
  list.prepend(li);
  while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
}

// ---- wiring ----

function init() {
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    if ($('remember').checked) sessionStorage.setItem(STORAGE_KEY, token);
    else sessionStorage.removeItem(STORAGE_KEY);
    say('Connecting…');
    connect(token);
  });
  $('disconnect').addEventListener('click', () => {
    disconnect();
    $('token').value = '';
    say('Disconnected.');
  });
  $('tail-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    watch($('room').value.trim());
  });
  $('clear').addEventListener('click', () => $('tail').replaceChildren());
  $('publish-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    publish();
  });
  $('kick-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    kick();
  });
  $('room-filter').addEventListener('input', renderRooms);
  window.addEventListener('resize', drawChart);

  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (saved) {
    $('token').value = saved;
    $('remember').checked = true;
    connect(saved);
  }
  pollHealth();
  pollMetrics();
  drawChart();
  setInterval(pollHealth, POLL_MS);
  setInterval(pollMetrics, POLL_MS);
}

init();
