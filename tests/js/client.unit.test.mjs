// Unit tests of clients/js/roomcast.js against a scripted fake WebSocket: what the client sends
// and when (first-frame auth, rejoin with since, queued broadcasts, refresh), and what it makes
// of what it receives (batches, duplicates, refusals). Run: node --test tests/js/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RoomcastClient } from '../../clients/js/roomcast.js';
import { until } from './sync.mjs';

/** A WebSocket stand-in: records what the client sends; the test plays the server. */
class FakeWS {
  static all = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closed = null;
    FakeWS.all.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closed = { code, reason };
    this.readyState = 3;
  }

  // -- the test's side --
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  recv(obj) {
    this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
  }

  drop(code = 1006, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  take() {
    const out = this.sent;
    this.sent = [];
    return out;
  }
}

const tick = () => new Promise((r) => setTimeout(r, 0));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Waits for the client's next WebSocket (after a close, the reconnect timer runs first). */
const nextSocket = (n) => until(() => FakeWS.all.length >= n && FakeWS.all[n - 1], `socket ${n}`, 5000, 2);

function make(opts = {}) {
  FakeWS.all = [];
  const events = [];
  const client = new RoomcastClient('ws://example.test/ws', {
    WebSocket: FakeWS,
    token: 'tok-1',
    minDelayMs: 5,
    maxDelayMs: 20,
    heartbeatMs: 0,
    ...opts,
  });
  for (const e of ['open', 'authenticated', 'joined', 'left', 'message', 'error', 'close', 'token_expiring']) {
    client.on(e, (p) => events.push([e, p]));
  }
  return { client, events, ws: () => FakeWS.all.at(-1) };
}

async function authenticate(ws) {
  ws.open();
  ws.recv({ type: 'authenticated', payload: { exp: 9999999999 } });
  await tick();
}

test('the token goes in the first frame, never in the URL', async () => {
  const { client, ws, events } = make({ batch: true });
  await tick();
  assert.equal(ws().url, 'ws://example.test/ws?batch=1');
  ws().open();
  assert.deepEqual(ws().take(), [{ type: 'auth', payload: { token: 'tok-1' } }]);
  ws().recv({ type: 'authenticated', payload: { exp: 1 } });
  assert.equal(client.state, 'open');
  assert.deepEqual(events.map((e) => e[0]), ['open', 'authenticated']);
  assert.throws(() => new RoomcastClient('ws://x/ws?token=abc', { WebSocket: FakeWS }), /never in the URL/);
  const plain = new RoomcastClient('https://x.test/ws', { WebSocket: FakeWS, token: 't', autoConnect: false });
  assert.equal(plain.url, 'wss://x.test/ws');
  client.close();
});

test('joins wait for authentication; messages, batches and duplicates', async () => {
  const { client, ws, events } = make();
  client.join('order-7');
  await tick();
  ws().open();
  assert.deepEqual(ws().take(), [{ type: 'auth', payload: { token: 'tok-1' } }]);
  ws().recv({ type: 'authenticated', payload: { exp: 1 } });
  assert.deepEqual(ws().take(), [{ type: 'join', payload: { room: 'order-7' } }]);
  ws().recv({ type: 'joined', payload: { room: 'order-7' } });
  ws().recv({ id: 10, event: 'e', room: 'order-7', data: {} });
  ws().recv([
    { id: 11, event: 'e', room: 'order-7' },
    { id: 10, event: 'e', room: 'order-7' }, // a duplicate is dropped
    { id: 'n1-3', from: 'conn-1', room: 'order-7', body: 'hi' }, // ephemeral: no id tracking
  ]);
  const msgs = events.filter((e) => e[0] === 'message').map((e) => e[1].id);
  assert.deepEqual(msgs, [10, 11, 'n1-3']);
  assert.equal(client.lastEventId('order-7'), 11);
  client.close();
});

test('reconnects with backoff and rejoins every room with since', async () => {
  const { client, ws, events } = make();
  client.join('order-7');
  client.join('chat-1'); // sees no event of its own
  await tick();
  await authenticate(ws());
  ws().take();
  ws().recv({ type: 'joined', payload: { room: 'order-7' } });
  ws().recv({ type: 'joined', payload: { room: 'chat-1' } });
  ws().recv({ id: 40, room: 'order-7' });
  ws().recv({ id: 42, room: 'order-7' });
  const first = ws();
  first.drop(1001, 'going away');
  const close = events.find((e) => e[0] === 'close')[1];
  assert.equal(close.reconnecting, true);
  assert.ok(close.delayMs >= 2 && close.delayMs <= 5, `jittered delay ${close.delayMs}`);
  assert.equal(client.state, 'waiting');
  await nextSocket(2);
  assert.notEqual(ws(), first);
  await authenticate(ws());
  const sent = ws().take();
  assert.deepEqual(sent.slice(1), [
    { type: 'join', payload: { room: 'order-7', since: 42 } },
    // A room without events of its own resumes from the newest live id seen while in it.
    { type: 'join', payload: { room: 'chat-1', since: 42 } },
  ]);
  // The replay may repeat ids already delivered; the client drops them.
  ws().recv({ type: 'joined', payload: { room: 'order-7', recovered: true, replayed: 3 } });
  ws().recv({ id: 41, room: 'order-7' });
  ws().recv({ id: 42, room: 'order-7' });
  ws().recv({ id: 43, room: 'order-7' });
  const ids = events.filter((e) => e[0] === 'message').map((e) => e[1].id);
  assert.deepEqual(ids, [40, 42, 41, 43]);
  client.close();
  assert.equal(client.state, 'closed');
});

test('replayed frames do not advance the resume point of other rooms', async () => {
  const { client, ws } = make();
  client.join('a');
  client.join('b');
  await tick();
  await authenticate(ws());
  ws().recv({ type: 'joined', payload: { room: 'b' } });
  ws().recv({ type: 'joined', payload: { room: 'a', recovered: true, replayed: 1 } });
  ws().recv({ id: 90, room: 'a' }); // a replayed frame (id order, not commit order)
  assert.equal(client.lastEventId('b'), null);
  ws().recv({ id: 91, room: 'a' }); // live
  assert.equal(client.lastEventId('b'), 91);
  client.close();
});

test('a room that saw no event resumes from the position its joined carried', async () => {
  const { client, ws } = make();
  client.join('quiet');
  client.join('replayed', { since: 5 });
  await tick();
  await authenticate(ws());
  ws().recv({ type: 'joined', payload: { room: 'quiet', position: 70 } });
  assert.equal(client.lastEventId('quiet'), 70);
  // With a replay, the position counts once the replay is through.
  ws().recv({ type: 'joined', payload: { room: 'replayed', recovered: true, replayed: 1, position: 80 } });
  assert.equal(client.lastEventId('replayed'), 5);
  ws().recv({ id: 6, room: 'replayed' });
  assert.equal(client.lastEventId('replayed'), 80);
  ws().drop(1006);
  await nextSocket(2);
  await authenticate(ws());
  assert.deepEqual(ws().take().slice(1), [
    { type: 'join', payload: { room: 'quiet', since: 70 } },
    { type: 'join', payload: { room: 'replayed', since: 80 } },
  ]);
  client.close();
});

test('a forbidden room is forgotten; queued broadcasts wait for their join', async () => {
  const { client, ws, events } = make();
  client.join('secret-1');
  client.join('chat-9');
  client.broadcast('chat-9', { text: 'queued' });
  await tick();
  await authenticate(ws());
  ws().take();
  ws().recv({ type: 'error', payload: { error: 'not authorized', code: 'forbidden', room: 'secret-1' } });
  assert.deepEqual(client.rooms, ['chat-9']);
  assert.deepEqual(ws().take(), [], 'broadcast waits for the join');
  ws().recv({ type: 'joined', payload: { room: 'chat-9' } });
  assert.deepEqual(ws().take(), [{ type: 'broadcast', payload: { room: 'chat-9', body: { text: 'queued' } } }]);
  assert.equal(events.filter((e) => e[0] === 'error').length, 1);
  client.leave('chat-9');
  assert.deepEqual(ws().take(), [{ type: 'leave', payload: { room: 'chat-9' } }]);
  client.close();
});

test('token_expiring calls getToken and sends auth on the live connection', async () => {
  let n = 0;
  const refreshed = [];
  const { client, ws } = make({
    token: undefined,
    getToken: async () => `tok-${++n}`,
    onTokenRefresh: (r) => refreshed.push(r),
  });
  await tick();
  ws().open();
  assert.deepEqual(ws().take(), [{ type: 'auth', payload: { token: 'tok-1' } }]);
  ws().recv({ type: 'authenticated', payload: { exp: 100 } });
  ws().recv({ type: 'token_expiring', payload: { in_s: 30 } });
  await tick();
  assert.deepEqual(ws().take(), [{ type: 'auth', payload: { token: 'tok-2' } }]);
  ws().recv({ type: 'authenticated', payload: { exp: 200 } });
  assert.deepEqual(refreshed, [{ token: 'tok-2', exp: 200 }]);
  // After an expiry close, the next connection asks for a fresh token.
  ws().drop(4001, 'token expired');
  await nextSocket(2);
  ws().open();
  assert.deepEqual(ws().take(), [{ type: 'auth', payload: { token: 'tok-3' } }]);
  client.close();
});

test('a refused static token or a forbidden close stops reconnecting', async () => {
  const { client, ws, events } = make();
  await tick();
  ws().open();
  ws().recv({ type: 'error', payload: { error: 'invalid token', code: 'unauthenticated' } });
  ws().drop(4001, 'invalid token');
  await sleep(30);
  assert.equal(FakeWS.all.length, 1);
  assert.equal(client.state, 'closed');
  assert.deepEqual(events.at(-1), ['close', { code: 4001, reason: 'invalid token', reconnecting: false, delayMs: 0 }]);
});

test('a silent link is dropped by the heartbeat and reconnected', async () => {
  const { client, ws } = make({ heartbeatMs: 200 });
  await tick();
  await authenticate(ws());
  const first = ws();
  // Answered like the server would, pings keep the link up...
  let pings = 0;
  const send = first.send.bind(first);
  first.send = (text) => {
    send(text);
    if (JSON.parse(text).type === 'ping' && pings++ < 2) first.recv({ type: 'pong' });
  };
  await until(() => pings >= 3, 'three pings on one link', 5000, 5);
  // ...and unanswered, the link is given up (after 2.5 intervals) and a new one opened.
  await until(() => first.closed, 'the dead socket closed', 5000, 5);
  assert.equal(FakeWS.all.indexOf(first), 0);
  await nextSocket(2);
  client.close();
});

test('a rejoin the server could not replay is retried with the same since', async () => {
  const { client, ws, events } = make({ rejoinRetryMs: 5 });
  client.join('order-7');
  await tick();
  await authenticate(ws());
  ws().recv({ type: 'joined', payload: { room: 'order-7' } });
  ws().recv({ id: 50, room: 'order-7' });
  ws().drop(1001, 'restart');
  await nextSocket(2);
  await authenticate(ws());
  assert.deepEqual(ws().take().slice(1), [{ type: 'join', payload: { room: 'order-7', since: 50 } }]);
  // PostgreSQL not up yet on the restarted server: nothing replayed.
  ws().recv({ type: 'joined', payload: { room: 'order-7', recovered: false, replayed: 0 } });
  ws().recv({ id: 53, room: 'order-7' }); // live, held back until the replay is through
  await until(() => ws().sent.length === 2, 'the retry', 5000, 2);
  assert.deepEqual(ws().take(), [
    { type: 'leave', payload: { room: 'order-7' } },
    { type: 'join', payload: { room: 'order-7', since: 50 } },
  ]);
  ws().recv({ type: 'left', payload: { room: 'order-7' } });
  ws().recv({ type: 'joined', payload: { room: 'order-7', recovered: true, replayed: 3 } });
  ws().recv([{ id: 51, room: 'order-7' }, { id: 52, room: 'order-7' }, { id: 53, room: 'order-7' }]);
  await tick();
  const ids = events.filter((e) => e[0] === 'message').map((e) => e[1].id);
  assert.deepEqual(ids, [50, 51, 52, 53]);
  const joined = events.filter((e) => e[0] === 'joined').map((e) => e[1]);
  assert.deepEqual(joined.at(-1), { room: 'order-7', recovered: true, replayed: 3 });
  assert.equal(joined.length, 2, 'the failed answer is not reported');
  assert.equal(events.filter((e) => e[0] === 'left').length, 0, 'nor the internal leave');

  // When retries run out, the application is told to refetch.
  ws().drop(1001, 'restart');
  await nextSocket(3);
  await authenticate(ws());
  ws().take();
  for (let i = 0; i < 3; i++) {
    ws().recv({ type: 'joined', payload: { room: 'order-7', recovered: false, replayed: 0 } });
    await until(() => ws().sent.length === 2, `retry ${i + 1}`, 5000, 2);
    assert.deepEqual(ws().take().map((m) => m.type), ['leave', 'join']);
    ws().recv({ type: 'left', payload: { room: 'order-7' } });
  }
  ws().recv({ type: 'joined', payload: { room: 'order-7', recovered: false, replayed: 0 } });
  assert.deepEqual(events.filter((e) => e[0] === 'joined').at(-1)[1], { room: 'order-7', recovered: false, replayed: 0 });
  client.close();
});

test('rejoining many rooms is paced under the server rate limit', async () => {
  const { client, ws } = make({ joinBurst: 5, joinsPerSecond: 8 });
  for (let i = 0; i < 12; i++) client.join(`chat-${i}`);
  await tick();
  ws().open();
  ws().recv({ type: 'authenticated', payload: { exp: 1 } });
  assert.equal(ws().take().length, 1 + 5, 'auth and a burst of joins, at once');
  client.leave('chat-11'); // still waiting: dropped, and no leave is sent
  const t0 = Date.now();
  await until(() => ws().sent.length >= 6, 'the paced joins', 10000, 5);
  assert.ok(Date.now() - t0 >= 500, 'six more joins at 8/s take most of a second');
  await sleep(300);
  assert.deepEqual(ws().take().map((m) => m.type + ' ' + m.payload.room),
    ['chat-5', 'chat-6', 'chat-7', 'chat-8', 'chat-9', 'chat-10'].map((r) => 'join ' + r));
  client.close();
});
