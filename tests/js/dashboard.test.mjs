// The /admin dashboard in Debian's headless Chromium (playwright-core), against a real roomcast
// and PostgreSQL that tests/integration/test_dashboard.py runs: sign in with a pasted token,
// watch the connection count move, tail a room and see a database event arrive.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';

import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { RoomcastClient } from '../../clients/js/roomcast.js';
import { signal, sleep, until, waitFor } from './sync.mjs';

const base = process.env.ROOMCAST_HTTP;
const skip = !base && 'ROOMCAST_HTTP is not set: run through tests/integration/test_dashboard.py';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

test('dashboard: sign in, connection count, room tail, screenshot', { skip, timeout: 150000 }, async () => {
  const token = process.env.ADMIN_TOKEN;
  const room = process.env.ROOM;
  const screenshot = process.env.SCREENSHOT;
  const profile = mkdtempSync(join(tmpdir(), 'roomcast-chromium-'));
  const extra = [];
  let traffic = null;
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1200, height: 1000 },
    colorScheme: 'light',
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    const urls = [];
    const sockets = [];
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
    page.on('request', (r) => urls.push(r.url()));
    page.on('websocket', (ws) => sockets.push(ws.url()));

    const resp = await page.goto(base + '/admin');
    assert.equal(resp.status(), 200);
    const headers = resp.headers();
    assert.match(headers['content-security-policy'], /default-src 'none'; script-src 'self'/);
    assert.equal(headers['x-frame-options'], 'DENY');
    assert.equal(headers['referrer-policy'], 'no-referrer');

    // Health is public: shown before signing in.
    await page.waitForFunction(() => document.querySelector('#pg-state').textContent === 'up');
    assert.equal(await page.textContent('#redis-state'), 'disabled');

    await page.fill('#token', token);
    await page.click('#connect');
    await page.waitForFunction(() => document.querySelector('#ws-state').textContent === 'connected');
    // The dashboard's own WebSocket is counted once the next poll comes.
    await page.waitForFunction(() => Number(document.querySelector('#connections').textContent) >= 1);
    const before = Number(await page.textContent('#connections'));

    // Three more clients (the client module, first-frame auth) chatting in a room.
    for (let i = 0; i < 3; i++) {
      const c = new RoomcastClient(base.replace(/^http/, 'ws') + '/ws', { WebSocket, token, heartbeatMs: 0 });
      c.join('chat-lobby');
      extra.push(c);
    }
    let joinedCount = 0;
    for (const c of extra) c.on('joined', () => joinedCount++);
    await until(() => joinedCount === 3, 'three extra clients joined');
    traffic = setInterval(() => {
      for (const c of extra) c.broadcast('chat-lobby', { text: 'hello' });
    }, 250);
    await page.waitForFunction(
      (n) => document.querySelector('#connections').textContent === String(n),
      before + 3,
      { timeout: 15000 },
    );
    await page.waitForFunction(
      () => [...document.querySelectorAll('#rooms tr')].some(
        (tr) => tr.cells[0].textContent === 'chat-lobby' && tr.cells[1].textContent === '3',
      ),
      null,
      { timeout: 10000 },
    );

    // Tail a room and have PostgreSQL publish into it.
    await page.fill('#room', room);
    await page.click('#watch');
    await page.waitForFunction((r) => document.querySelector('#tail-state').textContent.startsWith(`Watching ${r}`), room);
    signal('watching');
    const published = await waitFor('published');
    await page.waitForFunction(
      (id) => {
        const li = document.querySelector('#tail li');
        return li && li.textContent.includes('order_shipped') && li.textContent.includes(`#${id}`);
      },
      published.id,
      { timeout: 15000 },
    );
    assert.equal(await page.locator('#tail li').count(), 1);
    assert.match(await page.textContent('#tail li pre'), /"status": "shipped"/);

    // Every replica in one view (one here), and who is in the watched room.
    await page.waitForFunction(() => {
      const rows = document.querySelectorAll('#nodes tr');
      return rows.length === 1 && Number(rows[0].cells[1].textContent) >= 4 && rows[0].cells[3].textContent === 'up';
    }, null, { timeout: 10000 });
    await page.waitForFunction((r) => document.querySelector('#presence').textContent.startsWith(`Present in ${r}: 1 user`), room, { timeout: 10000 });

    // Publish to the watched room from the page: it arrives in the tail.
    await page.fill('#pub-room', room);
    await page.fill('#pub-event', 'dash_hello');
    await page.fill('#pub-data', '{"from":"page"}');
    await page.click('#publish');
    await page.waitForFunction(() => document.querySelector('#publish-result').textContent.startsWith('Published'));
    await page.waitForFunction(() => document.querySelector('#tail li')?.textContent.includes('dash_hello'), null, { timeout: 10000 });
    assert.match(await page.textContent('#tail li pre'), /"from": "page"/);

    // Disconnect a user from the page: its connection is closed with 4003.
    const victim = new RoomcastClient(base.replace(/^http/, 'ws') + '/ws', { WebSocket, token: process.env.USER_TOKEN, heartbeatMs: 0 });
    const victimCloses = [];
    victim.on('close', (e) => victimCloses.push(e.code));
    await until(() => victim.state === 'open', 'the user to disconnect is connected');
    await page.fill('#kick-user', 'dash-user');
    await page.click('#kick');
    await page.waitForFunction(() => document.querySelector('#kick-result').textContent === '1 connection of dash-user closed.', null, { timeout: 10000 });
    await until(() => victimCloses.includes(4003), 'closed with 4003');
    victim.close();

    // The chart has moved: messages went out to the chatting clients.
    await page.waitForFunction(() => Number(document.querySelector('#rate-out').textContent) > 0, null, { timeout: 15000 });
    await sleep(4500); // a few more samples for a readable chart
    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });

    assert.deepEqual(sockets.map((u) => new URL(u).pathname + new URL(u).search), ['/ws']);
    assert.deepEqual(urls.filter((u) => u.includes(token)), [], 'the token never appears in a URL');
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'nothing stored unless asked');
    assert.deepEqual(problems, []);
  } catch (e) {
    // Say what the page showed: the timeouts alone do not.
    const page = context.pages()[0];
    const shown = page
      ? await page.evaluate(() =>
          ['ws-state', 'connections', 'message', 'tail-state', 'rate-in', 'rate-out', 'pg-state']
            .map((id) => `${id}=${JSON.stringify(document.getElementById(id)?.textContent)}`)
            .join(' ') + ` rooms=${JSON.stringify(document.getElementById('rooms')?.textContent)}`)
      : 'no page';
    e.message += `\npage: ${shown}`;
    throw e;
  } finally {
    clearInterval(traffic);
    for (const c of extra) c.close();
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
