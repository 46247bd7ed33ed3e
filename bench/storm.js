#!/usr/bin/env node
// The reconnect storm (bench/run.py, scenario bigroom_storm): N clients in one wschat room, the
// server is killed with SIGKILL and started again, and every client comes back by itself the
// way the browser client does (wschat/static/app.js: exponential backoff with equal jitter,
// then `join` with `since` and its token).
//
//   storm -> {"event":"ready", ...}   all joined, every message of phase 1 seen by everyone
//   (run.py kills the server and starts it again on the same port and database)
//   storm -> {"event":"back", ...}    every client has had its welcome again
//   storm -> {"event":"result", ...}  after phase 2: what each client saw, against what was acked
//
// Phase 1: `senders` clients say `messages` messages each, before the kill. Phase 2: each sender
// says `messages` more as soon as it is back, while the others are still reconnecting: those get
// them from their welcome's history (`since`), the ones already back live. A client counts a
// message as lost if an acked id never reached it, and as a duplicate if an id reached it twice
// (the browser client drops those by id; they are counted here all the same).
//
// Config (JSON, the only argument): url, clients, senders, messages, room, addrs, concurrency,
// backoffBaseMs, backoffMaxMs, payload.
'use strict';

const WebSocket = require('ws');
const readline = require('readline');

const cfg = JSON.parse(process.argv[2]);
const BASE_MS = cfg.backoffBaseMs || 1000;
const MAX_MS = cfg.backoffMaxMs || 30000;

function nowUs() {
  const t = process.hrtime();
  return t[0] * 1e6 + t[1] / 1e3;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const clients = [];
const acked = new Set(); // every id acked to any sender, phase 1 and 2
let phase = 'join'; // join | steady | storm | done
let firstCloseUs = 0;
let lastWelcomeUs = 0;
let backCount = 0;
let recoveredFalse = 0;
let welcomesWithoutRecovered = 0;
let joinErrors = {};
let connectFailures = 0;
const attemptsHist = {};

function makeClient(i) {
  return {
    i,
    name: `s${i}`,
    ws: null,
    token: null,
    lastId: null,
    seen: new Set(),
    dupes: 0,
    attempt: 0,
    back: false,
    welcomed: false,
    sender: i < cfg.senders,
    toSay: 0,
    inflight: 0,
  };
}

function addId(cl, id) {
  if (cl.seen.has(id)) cl.dupes++;
  else cl.seen.add(id);
  if (cl.lastId === null || id > cl.lastId) cl.lastId = id;
}

function say(cl) {
  cl.inflight++;
  const text = `${Math.floor(nowUs())}:${cl.i}:`.padEnd(cfg.payload || 140, 'x');
  cl.ws.send(JSON.stringify({ type: 'say', room: cfg.room, text, ref: `${cl.i}-${cl.toSay}-${phase}` }));
}

function onFrame(cl, data) {
  let msg;
  try {
    msg = JSON.parse(data.toString());
  } catch (e) {
    return;
  }
  switch (msg.type) {
    case 'message':
      addId(cl, msg.id);
      break;
    case 'ack':
      cl.inflight--;
      acked.add(msg.id);
      if (cl.toSay > 0) {
        cl.toSay--;
        if (cl.toSay > 0) say(cl);
      }
      break;
    case 'welcome':
      onWelcome(cl, msg);
      break;
    case 'error':
      joinErrors[msg.code] = (joinErrors[msg.code] || 0) + 1;
      break;
    default:
      break; // presence
  }
}

function onWelcome(cl, msg) {
  cl.token = msg.token;
  for (const m of msg.history || []) addId(cl, m.id);
  cl.welcomed = true;
  if (phase === 'storm' && !cl.back) {
    if (msg.recovered === false) recoveredFalse++;
    else if (msg.recovered !== true) welcomesWithoutRecovered++;
    cl.back = true;
    backCount++;
    attemptsHist[cl.attempt] = (attemptsHist[cl.attempt] || 0) + 1;
    cl.attempt = 0;
    lastWelcomeUs = nowUs();
    if (cl.sender) startSaying(cl);
    if (backCount === clients.length) emitBack();
  }
}

function startSaying(cl) {
  cl.toSay = cfg.messages;
  say(cl);
}

function open(cl) {
  const opts = { perMessageDeflate: false, handshakeTimeout: 30000, maxPayload: 64 * 1024 * 1024 };
  if (cfg.addrs > 0) opts.localAddress = `127.0.0.${2 + (cl.i % cfg.addrs)}`;
  return new Promise((resolve) => {
    const ws = new WebSocket(cfg.url, opts);
    cl.ws = ws;
    let settled = false;
    const settle = (ok) => {
      if (!settled) {
        settled = true;
        resolve(ok);
      }
    };
    ws.on('open', () => {
      const join = { type: 'join', room: cfg.room, name: cl.name };
      if (cl.lastId !== null) join.since = cl.lastId;
      if (cl.token) join.token = cl.token;
      ws.send(JSON.stringify(join));
    });
    ws.on('message', (data) => {
      onFrame(cl, data);
      if (cl.welcomed) settle(true);
    });
    ws.on('error', () => {
      if (!cl.welcomed) connectFailures++;
      settle(false);
    });
    ws.on('close', () => {
      settle(false);
      if (cl.ws !== ws) return;
      cl.welcomed = false;
      if (phase === 'steady' || phase === 'storm') onDisconnected(cl);
    });
  });
}

function onDisconnected(cl) {
  if (phase === 'steady') {
    phase = 'storm';
    firstCloseUs = nowUs();
  }
  // app.js scheduleReconnect(): equal jitter over an exponentially growing ceiling.
  const ceiling = Math.min(MAX_MS, BASE_MS * 2 ** cl.attempt);
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  cl.attempt++;
  setTimeout(() => open(cl), delay);
}

function emitBack() {
  emit({
    event: 'back',
    firstCloseUs,
    lastWelcomeUs,
    backSeconds: (lastWelcomeUs - firstCloseUs) / 1e6,
    recoveredFalse,
    welcomesWithoutRecovered,
    connectFailures,
    attemptsHist,
  });
  finish().catch((e) => emit({ event: 'fatal', error: String(e && e.stack) }));
}

async function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function missing() {
  let lost = 0;
  for (const cl of clients) for (const id of acked) if (!cl.seen.has(id)) lost++;
  return lost;
}

async function waitSeen(deadlineS) {
  const dl = nowUs() + deadlineS * 1e6;
  while (nowUs() < dl) {
    const saying = clients.some((c) => c.sender && (c.toSay > 0 || c.inflight > 0));
    // Cheap first: every id a client sees was said by a sender; the exact check follows.
    if (!saying && clients.every((c) => c.seen.size >= acked.size) && missing() === 0) return true;
    await sleep(100);
  }
  return false;
}

async function finish() {
  await waitSeen(60);
  phase = 'done';
  const dupes = clients.reduce((n, c) => n + c.dupes, 0);
  emit({
    event: 'result',
    clients: clients.length,
    acked: acked.size,
    lost: missing(),
    duplicates: dupes,
    clientsWithDuplicates: clients.filter((c) => c.dupes > 0).length,
    joinErrors,
  });
}

async function main() {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (line.trim() === 'exit') process.exit(0);
  });
  rl.on('close', () => process.exit(0));
  for (let i = 0; i < cfg.clients; i++) clients.push(makeClient(i));
  let next = 0;
  let failed = 0;
  const t0 = nowUs();
  async function worker() {
    while (next < clients.length) {
      const cl = clients[next++];
      if (!(await open(cl))) failed++;
    }
  }
  await Promise.all(Array.from({ length: cfg.concurrency || 50 }, worker));
  const joinSeconds = (nowUs() - t0) / 1e6;
  for (const cl of clients) if (cl.sender) startSaying(cl);
  const complete = await waitSeen(60);
  phase = 'steady';
  emit({
    event: 'ready',
    joined: clients.length - failed,
    failed,
    joinSeconds,
    acked: acked.size,
    complete,
    joinErrors,
  });
}

main().catch((e) => {
  emit({ event: 'fatal', error: String(e && e.stack) });
  process.exit(1);
});
