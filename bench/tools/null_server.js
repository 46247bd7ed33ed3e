// Load-generator capacity check: a minimal broadcast server that frames each message once and
// writes everything pending for a client in one write per event-loop turn. It does as little as
// a WebSocket server can, so that the load generator, not this server, is what gets measured.
// Not a peer and not a chat server: no close handshake, no pings, text frames only.
// Usage: node tools/null_server.js PORT
'use strict';
const net = require('net');
const crypto = require('crypto');

const port = Number(process.argv[2] || 9999);
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const clients = new Set();
const dirty = new Set();
let flushScheduled = false;

function frame(payload) {
  const n = payload.length;
  let head;
  if (n < 126) head = Buffer.from([0x81, n]);
  else if (n < 65536) head = Buffer.from([0x81, 126, n >> 8, n & 255]);
  else throw new Error('too long');
  return Buffer.concat([head, payload]);
}

function flush() {
  flushScheduled = false;
  for (const c of dirty) {
    c.sock.write(c.pending.length === 1 ? c.pending[0] : Buffer.concat(c.pending));
    c.pending = [];
  }
  dirty.clear();
}

function broadcast(payload) {
  const f = frame(payload);
  for (const c of clients) {
    c.pending.push(f);
    dirty.add(c);
  }
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush);
  }
}

net
  .createServer((sock) => {
    sock.setNoDelay(true);
    const c = { sock, pending: [], buf: Buffer.alloc(0), open: false };
    sock.on('data', (d) => {
      c.buf = c.buf.length ? Buffer.concat([c.buf, d]) : d;
      if (!c.open) {
        const end = c.buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const m = /sec-websocket-key:\s*(\S+)/i.exec(c.buf.slice(0, end).toString());
        const accept = crypto.createHash('sha1').update(m[1] + GUID).digest('base64');
        sock.write(
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
            `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
        );
        c.open = true;
        clients.add(c);
        c.buf = c.buf.slice(end + 4);
      }
      // client frames are masked
      for (;;) {
        const b = c.buf;
        if (b.length < 2) return;
        let len = b[1] & 127;
        let off = 2;
        if (len === 126) {
          if (b.length < 4) return;
          len = b.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          sock.destroy();
          return;
        }
        if (b.length < off + 4 + len) return;
        const mask = b.slice(off, off + 4);
        const payload = Buffer.from(b.slice(off + 4, off + 4 + len));
        for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
        const opcode = b[0] & 15;
        c.buf = b.slice(off + 4 + len);
        if (opcode === 1) broadcast(payload);
        else if (opcode === 8) sock.end();
      }
    });
    const gone = () => {
      clients.delete(c);
      dirty.delete(c);
    };
    sock.on('close', gone);
    sock.on('error', gone);
  })
  .listen(port, '127.0.0.1', () => console.log(`null server listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
