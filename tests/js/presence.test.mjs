// clients/js/roomcast.js's presence and history against a real roomcast and PostgreSQL, driven
// by tests/integration/test_dashboard.py (which stores the events first): presence() and its
// change events across two clients, history() paged with the last id, a non-member refused.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import WebSocket from 'ws';

import { RoomcastClient } from '../../clients/js/roomcast.js';
import { sleep, until } from './sync.mjs';

const url = process.env.ROOMCAST_URL;
const skip = !url && 'ROOMCAST_URL is not set: run through tests/integration/test_dashboard.py';

test('presence(), presence events and history() paging', { skip, timeout: 60000 }, async () => {
  const room = process.env.ROOM;
  const ids = JSON.parse(process.env.IDS);
  const a = new RoomcastClient(url, { WebSocket, token: process.env.TOKEN, heartbeatMs: 0 });
  const b = new RoomcastClient(url, { WebSocket, token: process.env.USER_TOKEN, heartbeatMs: 0 });
  const changes = [];
  a.on('presence_join', (p) => changes.push(['join', p.room, p.user]));
  a.on('presence_leave', (p) => changes.push(['leave', p.room, p.user]));
  try {
    let aJoined = false;
    a.on('joined', (p) => { if (p.room === room) aJoined = true; });
    a.join(room, { presence: true });
    await until(() => aJoined, 'a joined');
    // Not a member yet: refused with the server's code.
    await until(() => b.state === 'open', 'b open');
    await assert.rejects(b.presence(room), (e) => e.code === 'not_member');
    let bJoined = false;
    b.on('joined', (p) => { if (p.room === room) bJoined = true; });
    b.join(room);
    await until(() => bJoined, 'b joined');
    await until(() => changes.length === 1, 'presence_join for b');
    assert.deepEqual(changes, [['join', room, 'js-user']]);
    const p = await a.presence(room);
    assert.equal(p.count, 2);
    assert.deepEqual(p.members.map((m) => m.user).sort(), ['1', 'js-user']);

    // History in pages of 2, each asked after the last id of the one before.
    const got = [];
    let since = 0;
    for (;;) {
      const page = await b.history(room, since, 2);
      assert.equal(page.recovered, true);
      got.push(...page.events.map((e) => e.id));
      if (!page.more) break;
      since = page.events[page.events.length - 1].id;
    }
    assert.deepEqual(got, ids);

    b.leave(room);
    await until(() => changes.length === 2, 'presence_leave for b', 5000);
    assert.deepEqual(changes[1], ['leave', room, 'js-user']);
    await sleep(100);
  } finally {
    a.close();
    b.close();
  }
});
