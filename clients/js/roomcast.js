// roomcast.js: the JavaScript client of roomcast, one dependency-free ES module for browsers and
// Node >= 20. It authenticates with the first frame (never the URL), reconnects with jittered
// backoff, rejoins rooms with `since` so no stored event is missed, and refreshes the token.

const REPLY_TYPES = new Set([
  'joined', 'left', 'error', 'pong', 'token_expiring', 'authenticated',
  'presence', 'history', 'presence_join', 'presence_leave',
]);
// How long presence() and history() wait for their answer.
const REQUEST_TIMEOUT_MS = 10000;
// Closes after which reconnecting cannot help: origin/policy refusal and a forbidden client.
const FINAL_CLOSE_CODES = new Set([1008, 4003]);

const DEFAULTS = {
  minDelayMs: 500, // first reconnect delay (before jitter)
  maxDelayMs: 30000, // cap of the exponential backoff
  heartbeatMs: 25000, // send a ping this often; no frame for 2.5 times this = dead link (0: off)
  maxQueue: 100, // broadcasts kept while not connected
  dedupWindow: 10000, // numeric event ids remembered to drop replayed duplicates
  rejoinRetries: 3, // a join with since answered recovered:false, replayed:0 is retried...
  rejoinRetryMs: 1000, // ...after this long, doubling (the outbox may be briefly unreadable)
  joinBurst: 30, // joins sent at once after a reconnect; then joinsPerSecond, so that rejoining
  joinsPerSecond: 15, // many rooms stays under the server's RATE_LIMIT (default 20/s, burst 40)
  batch: false, // ask the server for array frames (?batch=1)
};

function decode(data) {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(new Uint8Array(data));
  if (ArrayBuffer.isView(data)) {
    return new TextDecoder().decode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return String(data);
}

/**
 * A roomcast connection that stays up by itself.
 *
 *   const rc = new RoomcastClient('wss://rt.example.com/ws', { getToken: async () => fetchToken() });
 *   rc.on('message', (m) => console.log(m.room, m.event ?? m.body));
 *   rc.join('order-7');
 *
 * options: token (string) and/or getToken (async () => string, called before every connection
 * and on token_expiring), onTokenRefresh (({token, exp}) => void, after the server accepted a
 * refreshed token), WebSocket (constructor; needed on Node 20, e.g. from the `ws` package),
 * batch, minDelayMs, maxDelayMs, heartbeatMs, maxQueue, dedupWindow, rejoinRetries,
 * rejoinRetryMs, joinBurst, joinsPerSecond, autoConnect (default true); DEFAULTS above has
 * the values.
 *
 * Events (on(name, fn) returns a function that removes fn): 'open' (socket open, auth sent),
 * 'authenticated' (payload {exp}; first auth and every refresh), 'joined' (payload {room,
 * recovered?, replayed?, position?}; recovered false = the missed events cannot be replayed,
 * even after rejoinRetries tries: refetch state; position: see lastEventId), 'left', 'message' (a room message, with .room;
 * numeric ids arrive once), 'error' ({code, error, room?}: the
 * server's error replies plus local codes 'transport', 'token', 'bad_frame', 'queue_full',
 * 'handler'), 'token_expiring' ({in_s}), 'close' ({code, reason, reconnecting, delayMs}),
 * 'presence_join' / 'presence_leave' ({room, user}; for rooms joined with {presence: true}).
 *
 * Requests (promises, rejected when not connected, on the server's error for that room, on a
 * lost connection or after 10 s): presence(room) -> {room, count, members: [{user, conns}],
 * truncated?}; history(room, since = 0, limit = 100) -> {room, events, recovered, more}
 * (page on with since = the last event's id while more is true).
 */
export class RoomcastClient {
  constructor(url, options = {}) {
    // Relative URLs ('/ws') resolve against the page; http(s) becomes ws(s).
    const u = new URL(String(url), globalThis.location?.href);
    if (u.protocol === 'http:' || u.protocol === 'https:') u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    if (u.searchParams.has('token')) {
      throw new Error('roomcast: pass the token in the options, never in the URL');
    }
    if (options.batch) u.searchParams.set('batch', '1');
    this.url = u.toString();
    this.options = { ...DEFAULTS, ...options };
    this._WS = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== 'function') {
      throw new TypeError('roomcast: no WebSocket here; pass options.WebSocket (e.g. the ws package)');
    }
    this._token = options.token || null;
    this._handlers = new Map();
    // room -> room state (see _room)
    this._rooms = new Map();
    this._seen = new Set();
    this._seenOrder = [];
    this._queue = [];
    this._joins = []; // paced join frames (see _pump)
    this._joinTokens = 0;
    this._joinTokensAt = 0;
    this._joinTimer = null;
    this._ws = null;
    this._state = 'idle';
    this._attempt = 0;
    this._timer = null;
    this._heartbeat = null;
    this._lastRx = 0;
    this._closed = false;
    this._usedFirst = false; // the token option has been used once: getToken from now on
    this._gen = 0; // bumped by close(): an _open() still awaiting getToken then gives up
    this._requests = []; // presence/history asked and not yet answered, in order
    if (options.autoConnect !== false) this.connect();
  }

  /** 'idle', 'connecting', 'authenticating', 'open', 'waiting' (to reconnect) or 'closed'. */
  get state() {
    return this._state;
  }

  /** The rooms this client asked to be in (automatic rooms are not listed). */
  get rooms() {
    return [...this._rooms.keys()];
  }

  /** What a rejoin sends as since, or null: the newest numeric event id seen in the room, or
   * the room position a `joined` carried when greater (a room without events of its own). */
  lastEventId(room) {
    const r = this._rooms.get(room);
    return r ? this._sinceOf(r) : null;
  }

  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
  }

  /** Starts (or restarts after close()) connecting. */
  connect() {
    this._closed = false;
    if (this._state === 'idle' || this._state === 'closed') this._open();
  }

  /** Joins a room now or, when not connected, as soon as the client is. `since` (optional)
   * replays stored events after that id; `presence: true` also asks for presence_join and
   * presence_leave events of the room (kept across reconnects). */
  join(room, { since, presence } = {}) {
    let r = this._rooms.get(room);
    if (!r) {
      r = this._room();
      this._rooms.set(room, r);
    }
    if (Number.isSafeInteger(since)) r.since = since;
    if (presence) r.presence = true;
    if (this._state === 'open' && r.state !== 'retrying') this._sendJoin(room, r);
  }

  /** Who is in a room (the client must be a member). */
  presence(room) {
    return this._request('presence', { room });
  }

  /** A page of the room's stored events after `since` (the client must be a member). */
  history(room, since = 0, limit = 100) {
    return this._request('history', { room, since, limit });
  }

  _request(type, payload) {
    return new Promise((resolve, reject) => {
      if (this._state !== 'open' || !this._send({ type, payload })) {
        reject(new Error('roomcast: not connected'));
        return;
      }
      const req = { type, room: payload.room, resolve, reject };
      req.timer = setTimeout(() => this._settle(req, new Error(`roomcast: no ${type} answer`)), REQUEST_TIMEOUT_MS);
      this._requests.push(req);
    });
  }

  /** Answers (or fails, when err is an Error) a pending request and forgets it. */
  _settle(req, result) {
    const i = this._requests.indexOf(req);
    if (i < 0) return;
    this._requests.splice(i, 1);
    clearTimeout(req.timer);
    if (result instanceof Error) req.reject(result);
    else req.resolve(result);
  }

  leave(room) {
    const r = this._rooms.get(room);
    if (!r) return;
    clearTimeout(r.retryTimer);
    this._rooms.delete(room);
    // A join still waiting for its turn is dropped instead: the server never saw it.
    const waiting = this._joins.length;
    this._joins = this._joins.filter((j) => j.payload.room !== room);
    if (this._joins.length !== waiting) return;
    if (this._state === 'open') this._send({ type: 'leave', payload: { room } });
  }

  /** Sends body (any JSON value) to a room this client is in; kept in a small queue while not
   * connected or while the room's join is under way. */
  broadcast(room, body) {
    const msg = { type: 'broadcast', payload: { room, body: body === undefined ? null : body } };
    if (this._state === 'open' && this._rooms.get(room)?.state !== 'pending') {
      this._send(msg);
      return;
    }
    if (this._queue.length >= this.options.maxQueue) {
      this._queue.shift();
      this._emit('error', { code: 'queue_full', error: 'oldest queued broadcast dropped', room });
    }
    this._queue.push({ room, msg });
  }

  /** Replaces the token; on a live connection it is sent at once as a refresh. */
  setToken(token) {
    this._token = token;
    if (this._state === 'open') this._send({ type: 'auth', payload: { token } });
  }

  /** Closes for good (no reconnect). connect() starts again, keeping rooms and event ids. */
  close(code = 1000, reason = 'client closed') {
    this._closed = true;
    this._gen++;
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._detach();
    this._resetRooms();
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    const was = this._state;
    this._state = 'closed';
    if (was !== 'closed' && was !== 'idle') {
      this._emit('close', { code, reason, reconnecting: false, delayMs: 0 });
    }
  }

  // ---- connection ----

  async _open() {
    const gen = this._gen;
    this._state = 'connecting';
    let token = this._token;
    if (this.options.getToken && (this._usedFirst || !token)) {
      try {
        token = await this.options.getToken();
        this._token = token;
      } catch (e) {
        if (gen !== this._gen) return;
        this._emit('error', { code: 'token', error: 'getToken failed: ' + (e?.message || e) });
        this._scheduleReconnect(0, 'getToken failed');
        return;
      }
    }
    this._usedFirst = true;
    if (this._closed || gen !== this._gen) return;
    if (!token) {
      this._emit('error', { code: 'token', error: 'no token: pass token or getToken' });
      this._state = 'closed';
      return;
    }
    let ws;
    try {
      ws = new this._WS(this.url);
    } catch (e) {
      this._emit('error', { code: 'transport', error: String(e?.message || e) });
      this._scheduleReconnect(0, 'connect failed');
      return;
    }
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._state = 'authenticating';
      this._lastRx = Date.now();
      this._startHeartbeat();
      this._emit('open', {});
      this._send({ type: 'auth', payload: { token } });
    };
    ws.onmessage = (ev) => {
      if (ws === this._ws) this._onFrame(ev.data);
    };
    ws.onerror = (ev) => {
      if (ws !== this._ws) return;
      this._emit('error', { code: 'transport', error: ev?.message || 'WebSocket error' });
    };
    ws.onclose = (ev) => {
      if (ws !== this._ws) return;
      this._detach();
      this._onClosed(ev?.code ?? 1006, ev?.reason ?? '');
    };
  }

  _detach() {
    const ws = this._ws;
    if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    this._ws = null;
    clearInterval(this._heartbeat);
    this._heartbeat = null;
    clearTimeout(this._joinTimer);
    this._joinTimer = null;
    this._joins = [];
  }

  /** After a connection ends: every room is to be joined again. Held messages are dropped:
   * the next join's since, which they did not move, replays them. */
  _resetRooms() {
    for (const r of this._rooms.values()) {
      clearTimeout(r.retryTimer);
      r.retryTimer = null;
      r.state = 'pending';
      r.replayLeft = 0;
      r.joinPosition = null;
      r.holding = false;
      r.held = [];
      r.silentLeave = false;
      r.retriesLeft = this.options.rejoinRetries;
    }
  }

  _onClosed(code, reason) {
    this._resetRooms();
    for (const req of [...this._requests]) this._settle(req, new Error('roomcast: connection lost'));
    if (this._closed) return;
    const final = FINAL_CLOSE_CODES.has(code) || (code === 4001 && !this.options.getToken);
    if (final) {
      this._state = 'closed';
      this._emit('close', { code, reason, reconnecting: false, delayMs: 0 });
      return;
    }
    this._scheduleReconnect(code, reason);
  }

  _scheduleReconnect(code, reason) {
    const { minDelayMs, maxDelayMs } = this.options;
    const cap = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(this._attempt, 30));
    // Equal jitter: never sooner than half the step, so a restarted server is not stampeded.
    const delayMs = Math.round(cap / 2 + Math.random() * (cap / 2));
    this._attempt++;
    this._state = 'waiting';
    this._emit('close', { code, reason, reconnecting: true, delayMs });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._closed) this._open();
    }, delayMs);
  }

  _startHeartbeat() {
    const every = this.options.heartbeatMs;
    if (!every) return;
    this._heartbeat = setInterval(() => {
      if (Date.now() - this._lastRx > every * 2.5) {
        // Nothing at all (not even our pongs) for a while: the link is dead, start over.
        const ws = this._ws;
        this._detach();
        try {
          ws?.close(4000, 'heartbeat timeout');
        } catch {
          // ignore
        }
        this._onClosed(1006, 'heartbeat timeout');
        return;
      }
      this._send({ type: 'ping' });
    }, every);
  }

  _send(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  _sinceOf(r) {
    const a = r.last;
    const b = r.after;
    let s = a === null ? b : b === null ? a : Math.max(a, b);
    if (r.since !== null && (s === null || r.since > s)) s = r.since;
    if (r.position !== null && (s === null || r.position > s)) s = r.position;
    return s;
  }

  _room() {
    return {
      state: 'pending', // 'pending' (join sent or to send), 'retrying' or 'joined'
      last: null, // newest numeric id seen in this room
      after: null, // newest live numeric id seen anywhere while joined
      position: null, // the room position of a `joined` whose replay is through
      joinPosition: null, // the position of the join under way, until its replay is through
      since: null, // a starting point given to join()
      joinSince: null, // the since of the join under way
      replayLeft: 0, // replayed frames still to come after `joined`
      retriesLeft: this.options.rejoinRetries,
      retryTimer: null,
      holding: false, // a join is being retried: live messages are kept back...
      held: [], // ...here, until its replay is through
      silentLeave: false, // the next `left` is the client's own, for a retry
    };
  }

  _sendJoin(room, r, since = this._sinceOf(r)) {
    const payload = { room };
    if (since !== null) payload.since = since;
    if (r.presence) payload.presence = true;
    r.state = 'pending';
    r.joinSince = since;
    this._joins.push({ type: 'join', payload });
    this._pump();
  }

  /** Sends paced joins: a token bucket of joinBurst refilled at joinsPerSecond. */
  _pump() {
    if (this._joinTimer) return;
    const { joinBurst, joinsPerSecond } = this.options;
    const now = Date.now();
    this._joinTokens = Math.min(joinBurst, this._joinTokens + ((now - this._joinTokensAt) * joinsPerSecond) / 1000);
    this._joinTokensAt = now;
    while (this._joins.length && this._joinTokens >= 1) {
      this._send(this._joins.shift());
      this._joinTokens--;
    }
    if (this._joins.length) {
      this._joinTimer = setTimeout(() => {
        this._joinTimer = null;
        this._pump();
      }, Math.ceil(((1 - this._joinTokens) * 1000) / joinsPerSecond));
    }
  }

  /** The server could not replay (recovered:false with nothing replayed): typically its
   * PostgreSQL connection is not up yet right after a restart. Leave and join again with the
   * same since a few times before telling the application to refetch its state. */
  _retryJoin(room, r) {
    r.state = 'retrying';
    r.holding = true;
    const delay = this.options.rejoinRetryMs * 2 ** (this.options.rejoinRetries - r.retriesLeft);
    r.retriesLeft--;
    r.retryTimer = setTimeout(() => {
      r.retryTimer = null;
      if (this._rooms.get(room) !== r || r.state !== 'retrying' || this._state !== 'open') return;
      r.silentLeave = true;
      this._send({ type: 'leave', payload: { room } });
      this._sendJoin(room, r, r.joinSince);
    }, delay);
  }

  _takePosition(r) {
    const p = r.joinPosition;
    r.joinPosition = null;
    if (p !== null && (r.position === null || p > r.position)) r.position = p;
  }

  /** Delivers the live messages held during a retried join (duplicates are dropped). */
  _releaseHeld(r) {
    if (!r.holding) return;
    const held = r.held;
    r.holding = false;
    r.held = [];
    for (const m of held) this._onRoomMessage(m);
  }

  _flush() {
    if (this._state !== 'open') return;
    const keep = [];
    for (const item of this._queue) {
      if (this._rooms.get(item.room)?.state === 'pending') keep.push(item);
      else this._send(item.msg);
    }
    this._queue = keep;
  }

  // ---- incoming ----

  _onFrame(data) {
    this._lastRx = Date.now();
    let msg;
    try {
      msg = JSON.parse(decode(data));
    } catch {
      this._emit('error', { code: 'bad_frame', error: 'frame is not JSON' });
      return;
    }
    if (Array.isArray(msg)) {
      for (const m of msg) this._onRoomMessage(m);
    } else if (msg && typeof msg === 'object' && REPLY_TYPES.has(msg.type)) {
      this._onReply(msg.type, msg.payload || {});
    } else {
      this._onRoomMessage(msg);
    }
  }

  _onReply(type, p) {
    switch (type) {
      case 'authenticated':
        if (this._state === 'authenticating') {
          this._state = 'open';
          this._attempt = 0;
          this._joinTokens = this.options.joinBurst; // a new connection has a full budget
          this._joinTokensAt = Date.now();
          this._emit('authenticated', p);
          for (const [room, r] of this._rooms) this._sendJoin(room, r);
          this._flush();
        } else {
          this._emit('authenticated', p);
          this.options.onTokenRefresh?.({ token: this._token, exp: p.exp });
        }
        break;
      case 'joined': {
        const r = this._rooms.get(p.room);
        if (r && r.state === 'retrying') break; // the answer to a join that is being redone
        if (r) {
          const replayed = Number.isSafeInteger(p.replayed) ? p.replayed : 0;
          if (p.recovered === false && replayed === 0 && r.joinSince !== null && r.retriesLeft > 0) {
            this._retryJoin(p.room, r);
            break;
          }
          r.state = 'joined';
          r.replayLeft = replayed;
          r.retriesLeft = this.options.rejoinRetries;
          // Every event up to the position is delivered or in this join's replay: it counts
          // once the replay is through (a rejoin from it then misses nothing).
          r.joinPosition = Number.isSafeInteger(p.position) ? p.position : null;
          if (replayed === 0) this._takePosition(r);
        }
        this._emit('joined', p);
        if (r && r.replayLeft === 0) this._releaseHeld(r);
        this._flush();
        break;
      }
      case 'left': {
        const r = this._rooms.get(p.room);
        if (r?.silentLeave) {
          r.silentLeave = false;
          break;
        }
        this._emit('left', p);
        break;
      }
      case 'presence':
      case 'history': {
        const req = this._requests.find((q) => q.type === type && q.room === p.room);
        if (req) this._settle(req, p);
        break;
      }
      case 'presence_join':
      case 'presence_leave':
        this._emit(type, p);
        break;
      case 'error': {
        // The answer to a presence or history request for this room (not a member, ...).
        const req = p.room && this._requests.find((q) => q.room === p.room);
        if (req && ['not_member', 'bad_room', 'bad_json', 'server_error', 'rate_limited'].includes(p.code)) {
          this._settle(req, Object.assign(new Error(p.error), { code: p.code }));
        }
        // A room that cannot be joined (or no longer) is forgotten, not retried forever.
        if (p.room && (p.code === 'forbidden' || p.code === 'bad_room')) {
          const r = this._rooms.get(p.room);
          if (r) {
            this._rooms.delete(p.room);
            this._queue = this._queue.filter((q) => q.room !== p.room);
          }
        }
        this._emit('error', p);
        this._flush();
        break;
      }
      case 'token_expiring':
        this._emit('token_expiring', p);
        if (this.options.getToken) this._refresh();
        break;
      default: // pong
        break;
    }
  }

  async _refresh() {
    try {
      const token = await this.options.getToken();
      this._token = token;
      if (this._state === 'open') this._send({ type: 'auth', payload: { token } });
    } catch (e) {
      this._emit('error', { code: 'token', error: 'getToken failed: ' + (e?.message || e) });
    }
  }

  _onRoomMessage(m) {
    const r = m && typeof m === 'object' ? this._rooms.get(m.room) : undefined;
    if (r?.holding && r.state !== 'joined') {
      // Kept until the retried join's replay is through, so the room stays in order.
      if (r.held.length < 10000) r.held.push(m);
      return;
    }
    if (m && typeof m === 'object' && Number.isSafeInteger(m.id)) {
      const id = m.id;
      if (this._seen.has(id)) return; // replayed again after a reconnect: already delivered
      this._seen.add(id);
      this._seenOrder.push(id);
      if (this._seenOrder.length > this.options.dedupWindow) {
        this._seen.delete(this._seenOrder.shift());
      }
      let replay = false;
      const own = this._rooms.get(m.room);
      if (own) {
        if (own.last === null || id > own.last) own.last = id;
        if (own.replayLeft > 0) {
          own.replayLeft--;
          replay = true;
          if (own.replayLeft === 0) {
            this._takePosition(own);
            queueMicrotask(() => this._releaseHeld(own));
          }
        }
      }
      // A live event proves every event committed before it reached this client: rooms that
      // see no event of their own can resume from it (replayed frames are in id order, not
      // commit order, so they do not count).
      if (!replay) {
        for (const r of this._rooms.values()) {
          if (r.state === 'joined' && (r.after === null || id > r.after)) r.after = id;
        }
      }
    }
    this._emit('message', m);
  }

  _emit(event, arg) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (e) {
        if (event !== 'error') this._emit('error', { code: 'handler', error: String(e?.stack || e) });
        else queueMicrotask(() => { throw e; });
      }
    }
  }
}

export default RoomcastClient;
