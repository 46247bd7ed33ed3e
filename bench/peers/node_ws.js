// Peer 1: the classic Node.js `ws` chat server, as in the ws README / tutorials.
// Usage: node peers/node_ws.js PORT
'use strict';
const WebSocket = require('ws');

const port = Number(process.argv[2] || 8080);
const server = new WebSocket.Server({ host: '127.0.0.1', port });

server.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    server.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

server.on('listening', () => console.log(`node ws peer listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
