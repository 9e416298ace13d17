// clients/js/roomcast.js against a real roomcast and PostgreSQL, driven by
// tests/integration/test_dashboard.py (which stops and restarts roomcast and commits events):
// the client reconnects by itself and gets, through `since`, exactly what it missed.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import WebSocket from 'ws';

import { RoomcastClient } from '../../clients/js/roomcast.js';
import { signal, sleep, until, waitFor } from './sync.mjs';

const url = process.env.ROOMCAST_URL;
const skip = !url && 'ROOMCAST_URL is not set: run through tests/integration/test_dashboard.py';

test('reconnects after a restart and resumes with since, without gaps or duplicates', { skip, timeout: 120000 }, async () => {
  const room = process.env.ROOM;
  let tokenCalls = 0;
  const client = new RoomcastClient(url, {
    WebSocket,
    getToken: async () => {
      tokenCalls++;
      return process.env.TOKEN;
    },
    minDelayMs: 200,
    maxDelayMs: 1000,
  });
  const got = [];
  const joined = [];
  const closes = [];
  const errors = [];
  let authenticated = 0;
  client.on('message', (m) => {
    if (m.room === room) got.push(m);
  });
  client.on('joined', (p) => joined.push(p));
  client.on('close', (e) => closes.push(e));
  client.on('authenticated', () => authenticated++);
  client.on('error', (e) => {
    if (e.code !== 'transport') errors.push(e);
  });
  try {
    client.join(room);
    await until(() => joined.length === 1, 'the first joined');
    assert.equal(authenticated, 1);
    signal('joined');

    const first = await waitFor('published-first');
    await until(() => got.length === 1, 'the first event');
    assert.equal(got[0].id, first.ids[0]);
    assert.equal(got[0].event, 'before_restart');
    signal('got-first');

    // Python stops roomcast (SIGTERM: close 1001), commits events, starts it again.
    await until(() => closes.length > 0, 'the close of the server shutdown', 20000);
    assert.equal(closes[0].code, 1001);
    assert.equal(closes[0].reconnecting, true);
    const down = await waitFor('published-down', 60000);
    await until(() => joined.length === 2, 'the rejoin after the restart', 60000);
    const { position, ...rejoined } = joined[1];
    assert.ok(Number.isSafeInteger(position), `joined carries the room position: ${position}`);
    assert.deepEqual(rejoined, { room, recovered: true, replayed: down.ids.length });
    await until(() => got.length === 1 + down.ids.length, 'the replayed events');
    signal('resumed');

    const live = await waitFor('published-live');
    await until(() => got.length === 1 + down.ids.length + live.ids.length, 'the live events');
    await sleep(500); // nothing else may follow
    assert.deepEqual(
      got.map((m) => m.id),
      [...first.ids, ...down.ids, ...live.ids],
    );
    assert.deepEqual(
      got.map((m) => m.event),
      ['before_restart', ...down.ids.map(() => 'while_down'), ...live.ids.map(() => 'after_restart')],
    );
    assert.equal(got.at(-1).data.n, live.ids.length);
    assert.equal(authenticated, 2);
    assert.ok(tokenCalls >= 2, 'getToken is asked again for the new connection');
    assert.equal(client.lastEventId(room), live.ids.at(-1));
    assert.deepEqual(errors, []);
  } finally {
    client.close();
  }
});
