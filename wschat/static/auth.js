// Signing in (protocol.md, "Signed identities"): whether this page signs in (/config.json), and
// where its token comes from: the URL fragment #token=… or the application's
// --client-token-url. The token is only ever sent inside the WebSocket (session.js).

import { state } from './state.js';

// A token with less than this to go (by our clock) is not worth signing in with.
const TOKEN_MIN_LEFT_MS = 2000;

export function takeFragmentToken() {
  // "#token=…": a link the application made for this user. Read it and take it out of the URL
  // (and so out of the history) at once.
  if (!location.hash.startsWith('#token=')) return null;
  let token = location.hash.slice('#token='.length);
  try {
    token = decodeURIComponent(token);
  } catch {
    // keep it as it is
  }
  history.replaceState(null, '', location.pathname + location.search);
  return token || null;
}

function tokenExpiresAt(jwt) {
  // The payload's exp, to know when to get a new token; the server is the one that verifies.
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
    return Number.isFinite(claims.exp) ? claims.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

export function signedMode() {
  return state.auth.mode !== 'off' && (state.auth.jwt !== null || state.auth.tokenUrl !== null);
}

export function tokenUsable() {
  const jwt = state.auth.jwt;
  return jwt !== null && tokenExpiresAt(jwt) - Date.now() > TOKEN_MIN_LEFT_MS;
}

export async function fetchToken() {
  if (!state.auth.tokenUrl) return null;
  try {
    const response = await fetch(state.auth.tokenUrl, {
      credentials: 'include',
      cache: 'no-store',
      headers: { accept: 'application/json' },
    });
    if (!response.ok) return null;
    const body = await response.json();
    return body && typeof body.token === 'string' && body.token ? body.token : null;
  } catch {
    return null;
  }
}

export async function loadConfig() {
  try {
    const response = await fetch('config.json', { cache: 'no-store' });
    if (!response.ok) return;
    const config = await response.json();
    if (['off', 'optional', 'required'].includes(config.auth)) state.auth.mode = config.auth;
    if (typeof config.token_url === 'string' && config.token_url) state.auth.tokenUrl = config.token_url;
    if (Number.isFinite(config.rate) && Number.isFinite(config.burst)) {
      state.limits = { rate: config.rate, burst: config.burst };
    }
  } catch {
    // an older server without /config.json: the open chat
  }
}
