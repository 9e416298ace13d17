// The file handshake between a Node test and tests/integration/test_dashboard.py, which owns
// roomcast and PostgreSQL: each side writes small JSON files into SYNC_DIR and polls for the
// other's. signal(name, data) and waitFor(name) -> data.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.env.SYNC_DIR;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function signal(name, data = {}) {
  const path = join(dir, name);
  writeFileSync(path + '.tmp', JSON.stringify(data));
  renameSync(path + '.tmp', path);
}

export async function waitFor(name, timeoutMs = 30000) {
  const path = join(dir, name);
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${name}`);
    await sleep(20);
  }
  return JSON.parse(readFileSync(path, 'utf8'));
}

/** Polls pred until it returns a truthy value. */
export async function until(pred, what, timeoutMs = 15000, everyMs = 25) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}
