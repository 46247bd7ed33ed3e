#!/usr/bin/env node
// wschat benchmark load generator (Node + the `ws` package).
//
// One process drives a share of the clients of one scenario. It is started by
// bench/run.py with a JSON config as its only argument, talks JSON lines on
// stdout, and takes commands ("go", "status", "exit") on stdin:
//
//   loadgen -> {"event":"ready", ...}     all its clients are connected (and joined)
//   run.py  -> go                         start sending (fanout / steady)
//   loadgen -> {"event":"result", ...}    counts, latency histogram, own CPU use
//   run.py  -> status                     (connect) how many connections are still open
//   loadgen -> {"event":"status", ...}
//   run.py  -> exit
//
// Config fields:
//   mode        "fanout" | "steady" | "connect"
//   proto       "raw" (peers: the payload is the whole frame) | "wschat" (join/say JSON)
//   url         ws://127.0.0.1:PORT/path
//   gen         index of this generator process
//   clients     number of clients of this process
//   offset      global index of its first client (names, rooms and source addresses)
//   senders     global sender ids driven by this process (its first clients send)
//   inflight    fanout: messages each sender keeps in flight
//   rate        steady: messages per second per sender
//   totalSenders steady: number of senders over all processes (to stagger them)
//   warmup, duration   seconds
//   payload     text bytes per message (140)
//   room        room name (fanout/steady), prefix (connect)
//   roomSize    connect: members per room for wschat (each join is broadcast to the room)
//   concurrency handshakes in progress at once (per process)
//   addrs       number of source addresses 127.0.0.2 .. 127.0.0.(1+addrs)
//
// Every message text starts with "<send time, integer microseconds of CLOCK_MONOTONIC>:<sender id>:"
// and is padded with "x" to `payload` bytes. CLOCK_MONOTONIC is shared by all processes of the
// machine, so a receiver in another generator process computes the same latency.
'use strict';

const WebSocket = require('ws');
const readline = require('readline');
const { monitorEventLoopDelay } = require('perf_hooks');

const cfg = JSON.parse(process.argv[2]);
const isWschat = cfg.proto === 'wschat';

function nowUs() {
  const t = process.hrtime();
  return t[0] * 1e6 + t[1] / 1e3;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// ---------------------------------------------------------------- latency histogram
// 10 us buckets up to 2 s, then 1 ms buckets up to 120 s.
const FINE_US = 10;
const FINE_N = 200000;
const COARSE_N = 120000;
const fine = new Uint32Array(FINE_N);
const coarse = new Uint32Array(COARSE_N);
let overflow = 0;

function record(us) {
  if (us < 0) us = 0;
  const b = (us / FINE_US) | 0;
  if (b < FINE_N) fine[b]++;
  else {
    const m = (us / 1000) | 0;
    if (m < COARSE_N) coarse[m]++;
    else overflow++;
  }
}

function sparseHistogram() {
  // [[bucket lower bound in us, bucket width in us, count], ...]
  const out = [];
  for (let i = 0; i < FINE_N; i++) if (fine[i]) out.push([i * FINE_US, FINE_US, fine[i]]);
  for (let i = 0; i < COARSE_N; i++) if (coarse[i]) out.push([i * 1000, 1000, coarse[i]]);
  if (overflow) out.push([COARSE_N * 1000, 0, overflow]);
  return out;
}

// ---------------------------------------------------------------- payload parsing
const TYPE_KEY = Buffer.from('"type"');
const TEXT_KEY = Buffer.from('"text"');
let parsedSid = -1;

function skipSep(buf, i) {
  // skip `:`, spaces and the opening quote after a JSON key
  while (i < buf.length) {
    const c = buf[i];
    if (c === 58 || c === 32 || c === 34) i++;
    else break;
  }
  return i;
}

// Returns the send time (us) carried by a chat message, or -1 if the frame is not one.
// Sets parsedSid to the sender id.
function parseFrame(buf) {
  let i = 0;
  if (isWschat) {
    let t = buf.indexOf(TYPE_KEY);
    if (t < 0) return -1;
    t = skipSep(buf, t + 6);
    if (buf[t] !== 109) return -1; // only "message" starts with 'm'
    i = buf.indexOf(TEXT_KEY);
    if (i < 0) return -1;
    i = skipSep(buf, i + 6);
  }
  let ts = 0;
  let c;
  const n = buf.length;
  for (; i < n; i++) {
    c = buf[i];
    if (c < 48 || c > 57) break;
    ts = ts * 10 + (c - 48);
  }
  if (i >= n || c !== 58) return -1;
  let sid = 0;
  for (i++; i < n; i++) {
    c = buf[i];
    if (c < 48 || c > 57) break;
    sid = sid * 10 + (c - 48);
  }
  parsedSid = sid;
  return ts;
}

function makeText(sid) {
  const head = `${Math.floor(nowUs())}:${sid}:`;
  return head + 'x'.repeat(Math.max(0, cfg.payload - head.length));
}

function sayFrame(sid) {
  const text = makeText(sid);
  return isWschat ? JSON.stringify({ type: 'say', room: cfg.room, text }) : text;
}

// ---------------------------------------------------------------- state
const clients = [];
let measuring = false;
let sending = false;
let deliveries = 0;
let received = 0; // all chat messages ever received (for the loss check)
let sent = 0;
let sentInWindow = 0;
let stalls = 0;
let errors = 0;
const errorKinds = {};
let closedEarly = 0;
const closeCodes = {};
let joinErrors = 0;
const joinErrorCodes = {};
let nextSendAt = null; // steady

function noteError(err) {
  errors++;
  const k = (err && (err.code || err.message)) || String(err);
  errorKinds[k] = (errorKinds[k] || 0) + 1;
}

function onMessage(cl, data) {
  const ts = parseFrame(data);
  if (ts < 0) {
    if (isWschat && !cl.joined) checkWelcome(cl, data);
    return;
  }
  const t = nowUs();
  received++;
  if (measuring) {
    deliveries++;
    record(t - ts);
  }
  if (cl.sid >= 0 && parsedSid === cl.sid) {
    cl.inflight--;
    cl.lastProgress = t;
    if (cfg.mode === 'fanout' && sending) sendOne(cl);
  }
}

function checkWelcome(cl, data) {
  const s = data.toString();
  let msg;
  try {
    msg = JSON.parse(s);
  } catch (e) {
    return;
  }
  if (msg.type === 'welcome') {
    cl.joined = true;
    cl.onJoined();
  } else if (msg.type === 'error') {
    joinErrors++;
    joinErrorCodes[msg.code] = (joinErrorCodes[msg.code] || 0) + 1;
    cl.joined = true; // stop looking
    cl.onJoinFailed(msg.code);
  }
}

function sendOne(cl) {
  cl.inflight++;
  sent++;
  if (measuring) sentInWindow++;
  cl.ws.send(sayFrame(cl.sid));
}

// Opens one client; resolves when it is open (raw) or joined (wschat). Never rejects.
function openClient(gidx, sid) {
  return new Promise((resolve) => {
    const opts = {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: 30000,
      maxPayload: 64 * 1024 * 1024,
    };
    if (cfg.addrs > 0) opts.localAddress = `127.0.0.${2 + (gidx % cfg.addrs)}`;
    const ws = new WebSocket(cfg.url, opts);
    const cl = { ws, gidx, sid, inflight: 0, joined: !isWschat, lastProgress: 0, done: false };
    const finish = (ok, why) => {
      if (cl.done) return;
      cl.done = true;
      resolve({ ok, why, cl });
    };
    cl.onJoined = () => finish(true);
    cl.onJoinFailed = (code) => finish(false, 'join:' + code);
    ws.on('open', () => {
      cl.open = true;
      if (isWschat) {
        let room = cfg.room;
        if (cfg.mode === 'connect') room = `${cfg.room}-${Math.floor(gidx / cfg.roomSize)}`;
        ws.send(JSON.stringify({ type: 'join', room, name: `u${gidx}` }));
      } else finish(true);
    });
    ws.on('message', (data) => onMessage(cl, data));
    ws.on('error', (err) => {
      noteError(err);
      finish(false, 'error:' + ((err && err.code) || err.message));
    });
    ws.on('close', (code) => {
      cl.open = false;
      if (!exiting) {
        closedEarly++;
        closeCodes[code] = (closeCodes[code] || 0) + 1;
      }
      finish(false, 'close:' + code);
    });
  });
}

let exiting = false;

async function openAll() {
  const n = cfg.clients;
  const conc = Math.max(1, cfg.concurrency || 50);
  const senders = cfg.senders || [];
  let next = 0;
  let ok = 0;
  let failed = 0;
  const failures = {};
  const t0 = nowUs();
  let tLast = t0;
  async function worker() {
    while (next < n) {
      const i = next++;
      const sid = i < senders.length ? senders[i] : -1;
      const r = await openClient(cfg.offset + i, sid);
      clients.push(r.cl);
      if (r.ok) {
        ok++;
        tLast = nowUs();
      } else {
        failed++;
        failures[r.why] = (failures[r.why] || 0) + 1;
      }
    }
  }
  const workers = [];
  for (let w = 0; w < conc; w++) workers.push(worker());
  await Promise.all(workers);
  const elapsed = (tLast - t0) / 1e6;
  return { connected: ok, failed, failures, connectSeconds: elapsed, connectStart: t0 / 1e6, connectEnd: tLast / 1e6 };
}

// ---------------------------------------------------------------- run phases
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
let cpuStart = null;
let wallStart = 0;

function startWindow() {
  measuring = true;
  cpuStart = process.cpuUsage();
  wallStart = nowUs();
  loopDelay.reset();
  loopDelay.enable();
}

function endWindow() {
  measuring = false;
  const cpu = process.cpuUsage(cpuStart);
  const wall = (nowUs() - wallStart) / 1e6;
  loopDelay.disable();
  return {
    window: wall,
    cpuUser: cpu.user / 1e6,
    cpuSystem: cpu.system / 1e6,
    cpuPercent: (100 * (cpu.user + cpu.system)) / 1e6 / wall,
    loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
    loopDelayMaxMs: loopDelay.max / 1e6,
  };
}

function senderClients() {
  return clients.filter((c) => c.sid >= 0 && c.open);
}

function runFanout() {
  const senders = senderClients();
  sending = true;
  for (const cl of senders) {
    cl.lastProgress = nowUs();
    for (let k = 0; k < cfg.inflight; k++) sendOne(cl);
  }
  // A sender whose messages did not come back in 10 s is counted as stalled and restarted.
  const watchdog = setInterval(() => {
    const t = nowUs();
    for (const cl of senders) {
      if (sending && cl.inflight > 0 && t - cl.lastProgress > 10e6) {
        stalls++;
        cl.inflight = 0;
        cl.lastProgress = t;
        for (let k = 0; k < cfg.inflight; k++) sendOne(cl);
      }
    }
  }, 1000);
  return () => clearInterval(watchdog);
}

function runSteady() {
  const senders = senderClients();
  sending = true;
  const interval = 1e6 / cfg.rate; // us
  const total = cfg.totalSenders || senders.length;
  const base = nowUs();
  const timers = [];
  for (const cl of senders) {
    let k = 0;
    const start = base + (cl.sid * interval) / total;
    const tick = () => {
      if (!sending) return;
      sendOne(cl);
      k++;
      const wait = (start + k * interval - nowUs()) / 1000;
      timers.push(setTimeout(tick, Math.max(0, wait)));
    };
    timers.push(setTimeout(tick, Math.max(0, (start - nowUs()) / 1000)));
  }
  return () => {
    sending = false;
    for (const t of timers) clearTimeout(t);
  };
}

async function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function go() {
  const stop = cfg.mode === 'fanout' ? runFanout() : runSteady();
  await sleep(cfg.warmup * 1000);
  startWindow();
  await sleep(cfg.duration * 1000);
  const win = endWindow();
  sending = false;
  stop();
  // Drain: wait until this process's senders have seen all their messages come back, then a
  // little more for the other processes' messages, so that `received` can be checked against
  // the number sent (every message must reach every member).
  const dl = nowUs() + 5e6;
  while (nowUs() < dl && clients.some((c) => c.sid >= 0 && c.open && c.inflight > 0)) await sleep(20);
  // then until no message has arrived for 300 ms (the other processes' senders drain too)
  for (let k = 0; k < 30; k++) {
    const r0 = received;
    await sleep(300);
    if (received === r0) break;
  }
  const openNow = clients.filter((c) => c.open).length;
  emit({
    event: 'result',
    gen: cfg.gen,
    deliveries,
    received,
    sentInWindow,
    sent,
    stalls,
    errors,
    errorKinds,
    closedEarly,
    closeCodes,
    open: openNow,
    hist: sparseHistogram(),
    ...win,
  });
}

function status() {
  const openNow = clients.filter((c) => c.open).length;
  const cpu = process.cpuUsage();
  emit({
    event: 'status',
    gen: cfg.gen,
    open: openNow,
    closedEarly,
    closeCodes,
    errors,
    errorKinds,
    cpuTotal: (cpu.user + cpu.system) / 1e6,
    rssBytes: process.memoryUsage().rss,
  });
}

async function main() {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const cmd = line.trim();
    if (cmd === 'go') go().catch((e) => emit({ event: 'fatal', error: String(e && e.stack) }));
    else if (cmd === 'status') status();
    else if (cmd === 'exit') {
      exiting = true;
      process.exit(0);
    }
  });
  rl.on('close', () => {
    exiting = true;
    process.exit(0);
  });
  const cpu0 = process.cpuUsage();
  const c = await openAll();
  const cpu = process.cpuUsage(cpu0);
  emit({
    event: 'ready',
    gen: cfg.gen,
    ...c,
    joinErrors,
    joinErrorCodes,
    errors,
    errorKinds,
    connectCpuPercent: c.connectSeconds > 0 ? (100 * (cpu.user + cpu.system)) / 1e6 / c.connectSeconds : 0,
  });
}

main().catch((e) => {
  emit({ event: 'fatal', error: String(e && e.stack) });
  process.exit(1);
});
