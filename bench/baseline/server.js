// The baseline for `make bench`: the server a team would otherwise write in Node.js, with `ws`,
// `pg` and `jsonwebtoken`, implementing the subset of roomcast's protocol the benchmark uses
// (docs/protocol.md): bearer-token handshake, join/leave/ping/broadcast, automatic user rooms,
// POST /api/notify, GET /health, and database events from LISTEN realtime_events routed by the
// payload's rooms; with LIVE_QUERY, live statistics rooms polled once per room per interval.
// Written the idiomatic way, and fairly: every message is serialized once and
// the same Buffer goes to every member; the verification key is built once.
'use strict';

const crypto = require('crypto');
const http = require('http');
const jwt = require('jsonwebtoken');
const { Client, Pool } = require('pg');
const { WebSocketServer, WebSocket } = require('ws');

const PORT = Number(process.env.PORT || 8080);
const HOST = process.env.HOST || '0.0.0.0';
const NODE_ID = process.env.NODE_ID || `baseline-${process.pid}`;
const NOTIFY_TOKEN = process.env.NOTIFY_TOKEN || '';
const NOTIFY_MAX_BYTES = Number(process.env.NOTIFY_MAX_BYTES || 65536);
const MAX_MESSAGE_SIZE = Number(process.env.MAX_MESSAGE_SIZE || 8192);
const PING_INTERVAL_MS = Number(process.env.PING_INTERVAL_S || 25) * 1000;
const ALGORITHMS = (process.env.JWT_ALGORITHMS || 'HS256,HS384,HS512').split(',');
if (!process.env.JWT_SECRET) {
  console.error('baseline: JWT_SECRET is required');
  process.exit(2);
}
// Built once: jsonwebtoken would otherwise turn the secret string into a key on every call.
const KEY = crypto.createSecretKey(Buffer.from(process.env.JWT_SECRET));
const VERIFY = { algorithms: ALGORITHMS, clockTolerance: 30 };

const rooms = new Map(); // room -> Set<WebSocket>
let notifySeq = 0;
let broadcastSeq = 0;

function join(ws, room) {
  let members = rooms.get(room);
  if (!members) {
    members = new Set();
    rooms.set(room, members);
  }
  members.add(ws);
  ws.rooms.add(room);
}

function leave(ws, room) {
  const members = rooms.get(room);
  if (members) {
    members.delete(ws);
    if (members.size === 0) {
      rooms.delete(room);
      liveStop(room);
    }
  }
  ws.rooms.delete(room);
}

// The claim rules of docs/protocol.md (AUTHZ=claims); the benchmark's tokens are admins.
function mayJoin(claims, room) {
  const role = String(claims.role || '').toLowerCase();
  const sub = String(claims.sub ?? claims.user_id ?? claims.id ?? '');
  if (role === 'admin') return true;
  if (room === `user-${sub}`) return true;
  if (room.startsWith('product-')) return true;
  const seller = claims.seller_id ?? claims.id_seller ?? (role === 'seller' ? claims.reference_id : undefined);
  if (seller !== undefined && room === `seller-${seller}`) return true;
  const client = claims.client_id ?? claims.id_client;
  if (client !== undefined && room === `client-${client}`) return true;
  const patterns = Array.isArray(claims.rooms) ? claims.rooms : [];
  return patterns.some((p) => new RegExp('^' + String(p).replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*') + '$').test(room));
}

const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

function reply(ws, type, payload) {
  ws.send(JSON.stringify(payload === undefined ? { type } : { type, payload }));
}

function error(ws, code, message, room) {
  reply(ws, 'error', room ? { error: message, code, room } : { error: message, code });
}

// One serialization per room; a member of several of the event's rooms gets it once, named
// after the first of them that it is in.
function deliver(roomList, build) {
  let seen = null;
  if (roomList.length > 1) seen = new Set();
  let n = 0;
  for (const room of roomList) {
    const members = rooms.get(room);
    if (!members) continue;
    const frame = Buffer.from(build(room));
    for (const ws of members) {
      if (seen) {
        if (seen.has(ws)) continue;
        seen.add(ws);
      }
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(frame, TEXT);
        n++;
      }
    }
  }
  return n;
}

// ws sends a Buffer as a binary frame unless told otherwise; room messages are text.
const TEXT = { binary: false };

function eventJSON(id, event, room, ts, data, meta) {
  return JSON.stringify({ id, event, to: room, room, ts, data, meta });
}

// Live statistics rooms (LIVE_ROOM_PREFIX, LIVE_QUERY with $1, LIVE_EVERY_MS), as a team would
// write the dashboard's polling on the server: while a room `<prefix><id>` has members, one
// timer per room runs the query with $1 = id on a pg.Pool of 4 (roomcast: one connection, 4
// queries in flight) and sends the first row, serialized once, when it changed; a new member
// gets the last row at once.
const LIVE_PREFIX = process.env.LIVE_ROOM_PREFIX || '';
const LIVE_QUERY = process.env.LIVE_QUERY || '';
const LIVE_EVERY_MS = Number(process.env.LIVE_EVERY_MS || 5000);
const live = new Map(); // room -> { timer, busy, last (row JSON), frame (Buffer) }
const liveStats = { queries: 0, seconds: 0 };
let livePool = null;
let liveSeq = 0;

function liveJoined(ws, room) {
  if (!LIVE_QUERY || !room.startsWith(LIVE_PREFIX)) return;
  let l = live.get(room);
  if (l) {
    if (l.frame) ws.send(l.frame, TEXT);
    return;
  }
  if (!livePool) livePool = new Pool({ connectionString: process.env.DATABASE_URL, max: 4, application_name: 'baseline-live' });
  l = { timer: null, busy: false, last: null, frame: null };
  const id = room.slice(LIVE_PREFIX.length);
  const tick = async () => {
    if (l.busy) return;
    l.busy = true;
    const t0 = process.hrtime.bigint();
    try {
      const r = await livePool.query(LIVE_QUERY, [id]);
      const row = JSON.stringify(r.rows.length ? r.rows[0] : null);
      if (row !== l.last && live.get(room) === l) {
        l.last = row;
        l.frame = Buffer.from(`{"id":"live-${++liveSeq}","event":"stats","to":${JSON.stringify(room)},"room":${JSON.stringify(room)},"ts":"${new Date().toISOString()}","data":${row}}`);
        const members = rooms.get(room);
        for (const m of members || []) if (m.readyState === WebSocket.OPEN) m.send(l.frame, TEXT);
      }
    } catch (e) {
      console.error(`baseline: live query failed: ${e.message}`);
    } finally {
      liveStats.queries++;
      liveStats.seconds += Number(process.hrtime.bigint() - t0) / 1e9;
      l.busy = false;
    }
  };
  l.timer = setInterval(tick, LIVE_EVERY_MS);
  live.set(room, l);
  tick();
}

function liveStop(room) {
  const l = live.get(room);
  if (!l) return;
  clearInterval(l.timer);
  live.delete(room);
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: MAX_MESSAGE_SIZE });

wss.on('connection', (ws, req, claims) => {
  ws.claims = claims;
  ws.user = String(claims.sub ?? claims.user_id ?? claims.id);
  ws.id = `conn-${crypto.randomUUID()}`;
  ws.rooms = new Set();
  ws.isAlive = true;
  join(ws, `user-${ws.user}`);
  if (String(claims.role || '').toLowerCase() === 'admin') join(ws, 'admins');
  ws.on('pong', () => {
    ws.isAlive = true;
  });
  ws.on('message', (raw, isBinary) => {
    let msg;
    try {
      msg = JSON.parse(raw.toString());
    } catch {
      return error(ws, 'bad_json', 'invalid JSON');
    }
    if (!msg || typeof msg !== 'object') return error(ws, 'bad_json', 'invalid JSON');
    const payload = msg.payload || msg.data || {};
    const room = payload.room ?? payload.channel;
    switch (msg.type) {
      case 'join':
      case 'subscribe':
        if (typeof room !== 'string' || !ROOM_RE.test(room)) return error(ws, 'bad_room', 'invalid room');
        if (!mayJoin(ws.claims, room)) return error(ws, 'forbidden', 'not authorized', room);
        join(ws, room);
        reply(ws, 'joined', { room });
        return liveJoined(ws, room);
      case 'leave':
      case 'unsubscribe':
        if (typeof room !== 'string' || !ws.rooms.has(room)) return error(ws, 'not_member', 'not a member', room);
        leave(ws, room);
        return reply(ws, 'left', { room });
      case 'broadcast': {
        if (typeof room !== 'string' || !ws.rooms.has(room)) return error(ws, 'not_member', 'not a member', room);
        const id = `${NODE_ID}-${++broadcastSeq}`;
        const ts = new Date().toISOString();
        deliver([room], (r) => JSON.stringify({ id, from: ws.id, user: ws.user, room: r, ts, body: payload.body }));
        return;
      }
      case 'ping':
        return reply(ws, 'pong');
      default:
        return error(ws, 'bad_type', 'unknown type');
    }
  });
  ws.on('close', () => {
    for (const room of [...ws.rooms]) leave(ws, room);
  });
});

// The ws documentation's heartbeat: ping everybody, drop those that did not answer the last one.
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, PING_INTERVAL_MS);

function bearer(req) {
  const h = req.headers.authorization || '';
  return h.startsWith('Bearer ') ? h.slice(7) : null;
}

function json(res, status, body) {
  const s = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(s) });
  res.end(s);
}

function notifyAuthorized(token) {
  if (!token) return false;
  if (NOTIFY_TOKEN) {
    const a = Buffer.from(token);
    const b = Buffer.from(NOTIFY_TOKEN);
    if (a.length === b.length && crypto.timingSafeEqual(a, b)) return true;
  }
  try {
    const claims = jwt.verify(token, KEY, VERIFY);
    const role = String(claims.role || '').toLowerCase();
    return role === 'admin' || role === 'service';
  } catch {
    return false;
  }
}

function notify(req, res) {
  if (!notifyAuthorized(bearer(req))) return json(res, 401, { error: 'unauthorized' });
  if (!String(req.headers['content-type'] || '').startsWith('application/json')) {
    return json(res, 415, { error: 'content type must be application/json' });
  }
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > NOTIFY_MAX_BYTES) {
      json(res, 413, { error: 'body too large' });
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (size > NOTIFY_MAX_BYTES) return;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString());
    } catch {
      return json(res, 400, { error: 'malformed JSON' });
    }
    const room = body.room ?? (body.user_id !== undefined ? `user-${body.user_id}` : undefined);
    if (typeof room !== 'string' || !ROOM_RE.test(room) || typeof body.event !== 'string') {
      return json(res, 400, { error: 'event and room or user_id are required' });
    }
    const id = `${NODE_ID}-n${++notifySeq}`;
    const ts = new Date().toISOString();
    deliver([room], (r) => eventJSON(id, body.event, r, ts, body.data ?? null, { source: 'notify' }));
    json(res, 200, { status: 'success', message: 'Notification sent', id });
  });
}

const started = Date.now();
let pgState = process.env.DATABASE_URL ? 'down' : 'disabled';

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && path === '/health') {
    return json(res, 200, {
      status: pgState === 'down' ? 'degraded' : 'healthy',
      service: 'baseline',
      node: NODE_ID,
      uptime_s: Math.floor((Date.now() - started) / 1000),
      connections: wss.clients.size,
      postgres: pgState,
      redis: 'disabled',
      live_rooms: live.size,
      live_queries: liveStats.queries,
      live_query_seconds: liveStats.seconds,
    });
  }
  if (path === '/api/notify') {
    if (req.method !== 'POST') return json(res, 405, { error: 'method not allowed' });
    return notify(req, res);
  }
  json(res, 404, { error: 'not found' });
});

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname !== '/ws') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  const token = bearer(req) || url.searchParams.get('token');
  let claims;
  try {
    if (!token) throw new Error('no token');
    claims = jwt.verify(token, KEY, VERIFY);
    if (claims.exp === undefined) throw new Error('exp required');
  } catch {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nunauthorized');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req, claims));
});

// Database events: LISTEN on the channel realtime.publish notifies, route by the payload's rooms.
// A large event arrives as {"id","xid","large":true} and is read from the outbox.
function listen(delay = 100) {
  const pg = new Client({ connectionString: process.env.DATABASE_URL, application_name: 'baseline-listener' });
  const retry = () => {
    pgState = 'down';
    pg.removeAllListeners();
    pg.end().catch(() => {});
    setTimeout(() => listen(Math.min(delay * 2, 5000)), delay);
  };
  pg.on('error', retry);
  pg.on('notification', async (msg) => {
    let ev;
    try {
      ev = JSON.parse(msg.payload);
      if (ev.large) {
        const r = await pg.query('SELECT realtime.event_json(e) AS j FROM realtime.events e WHERE id = $1', [ev.id]);
        if (!r.rows.length) return;
        ev = JSON.parse(r.rows[0].j);
      }
    } catch {
      return;
    }
    if (!Array.isArray(ev.rooms)) return;
    deliver(ev.rooms, (room) => eventJSON(ev.id, ev.event, room, ev.ts, ev.data, ev.meta));
  });
  pg.connect()
    .then(() => pg.query('LISTEN realtime_events'))
    .then(() => {
      pgState = 'up';
      delay = 100;
    })
    .catch(retry);
}
if (process.env.DATABASE_URL) listen();

server.listen(PORT, HOST, () => console.error(`baseline: listening on ${HOST}:${PORT} as ${NODE_ID}`));

function shutdown() {
  clearInterval(heartbeat);
  server.close();
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
