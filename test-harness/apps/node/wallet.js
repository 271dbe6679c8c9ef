#!/usr/bin/env node
// Sample wallet API behind a meshgate sidecar. Standard library only.
//
//   PORT=8080 EGRESS=127.0.0.1:15001 PEER_HOST=wallet-peer.internal node wallet.js
//   node wallet.js [PORT [EGRESS]]
//
// The app trusts the x-meshgate-* headers because the sidecar strips any a
// client sent and sets them only after verification.
'use strict';

const http = require('http');

const PORT = Number(process.argv[2] || process.env.PORT || 8080);
const HOST = process.env.HOST || '127.0.0.1';
const EGRESS = process.argv[3] || process.env.EGRESS || '127.0.0.1:15001';
const PEER_HOST = process.env.PEER_HOST || 'wallet-peer.internal';
const MAX_BODY = 1024 * 1024;

function send(res, status, value, extraHeaders) {
  const body = Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
  res.writeHead(status, {
    'content-type': typeof value === 'string' ? 'text/plain' : 'application/json',
    'content-length': body.length,
    ...extraHeaders,
  });
  res.end(body);
}

function meshgateHeaders(req) {
  const seen = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (name.startsWith('x-meshgate-')) {
      seen[name] = Array.isArray(value) ? value.join(', ') : value;
    }
  }
  return seen;
}

function readBody(req, done) {
  const chunks = [];
  let size = 0;
  let tooLarge = false;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) tooLarge = true;
    else chunks.push(chunk);
  });
  req.on('end', () => done(tooLarge ? null : Buffer.concat(chunks)));
}

function callPeer(res) {
  const sep = EGRESS.lastIndexOf(':');
  const options = {
    host: EGRESS.slice(0, sep),
    port: Number(EGRESS.slice(sep + 1)),
    method: 'GET',
    path: '/api/balance',
    headers: { host: PEER_HOST },
    timeout: 5000,
  };
  const peerReq = http.request(options, (peerRes) => {
    const chunks = [];
    peerRes.on('data', (c) => chunks.push(c));
    peerRes.on('end', () =>
      send(res, 200, {
        peer_status: peerRes.statusCode,
        peer_body: Buffer.concat(chunks).toString('utf8'),
      }),
    );
  });
  peerReq.on('timeout', () => peerReq.destroy(new Error('timeout')));
  peerReq.on('error', (err) => {
    if (!res.headersSent) send(res, 502, { error: 'peer_unreachable', detail: err.message });
  });
  peerReq.end();
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  const user = req.headers['x-meshgate-user'] ?? null;
  const route = `${req.method} ${path}`;

  switch (route) {
    case 'GET /healthz':
      return send(res, 200, 'ok');
    case 'POST /login':
      return readBody(req, (body) => {
        let login;
        try {
          login = JSON.parse(body === null ? '' : body.toString('utf8'));
        } catch {
          login = null;
        }
        if (!login || typeof login.user !== 'string' || login.user === '') {
          return send(res, 400, { error: 'body must be {"user": "<id>"}' });
        }
        const session = { sub: login.user, claims: { tenant: 't-1' }, ttl: '2h' };
        return send(res, 200, { ok: true, user: login.user }, {
          'x-meshgate-session-set': JSON.stringify(session),
        });
      });
    case 'GET /api/balance':
      return send(res, 200, {
        user,
        client_id: req.headers['x-meshgate-client-id'] ?? null,
        balance: 100,
        host: req.headers.host ?? null,
        meshgate_headers: meshgateHeaders(req),
      });
    case 'POST /api/transfer':
      return readBody(req, (body) => {
        if (body === null) return send(res, 413, { error: 'body too large' });
        return send(res, 200, { ok: true, received: body.length, user });
      });
    case 'GET /api/peer':
      return callPeer(res);
    default:
      // Drain any body so a keep-alive connection stays usable.
      req.resume();
      return send(res, 404, { error: 'not found', path });
  }
});

// Idle keep-alive connections must outlive the sidecar's pool idle timeout
// (90s by default), or the sidecar may reuse one just as the app closes it.
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
server.listen(PORT, HOST, () => {
  console.error(`wallet (node) listening on ${HOST}:${PORT}, egress ${EGRESS}, peer ${PEER_HOST}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
