// The page's URL parameters, parsed once: a bad one is an error the page
// shows, never a silent default.
//
//   ?server=http://127.0.0.1:50051   the SyncKairos gRPC-Web address (default: this page's origin host, port 50051)
//   &session=game-42                 the session to show (required)
//   &token=<player token or API key> sent as `authorization: Bearer <token>` (optional: open mode needs none)
//   &as=white                        with an API key or in open mode: the participant whose turn the button ends
//                                    (with a `play` player token the token's `sub` is used, and `as` must match it)
//   &heartbeat=2000                  the stream's heartbeat period, ms (1000-60000; default 2000)

/** A player token's claims, read (not verified: the server verifies) to know whose button to show. */
export interface TokenClaims {
  sid?: string;
  scope?: string;
  sub?: string;
  exp?: number;
}

export interface Params {
  server: string;
  session: string;
  token: string | null;
  claims: TokenClaims | null;
  /** The participant whose turn the button ends; null: no button (a watcher). */
  player: string | null;
  heartbeatMs: number;
}

export class ParamError extends Error {}

const ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The claims of a JWT-shaped token, or null when it is not one (an API key, or garbage: the server judges). */
export function decodeClaims(token: string): TokenClaims | null {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const v: unknown = JSON.parse(json);
    return v !== null && typeof v === "object" ? (v as TokenClaims) : null;
  } catch {
    return null;
  }
}

export function parseParams(search: string, pageLocation: Location): Params {
  const q = new URLSearchParams(search);
  const rawServer = q.get("server") ?? `${pageLocation.protocol}//${pageLocation.hostname}:50051`;
  let url: URL;
  try {
    url = new URL(rawServer);
  } catch {
    throw new ParamError(`server: "${rawServer}" is not a URL (e.g. http://127.0.0.1:50051)`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ParamError(`server: must be an http:// or https:// URL, not ${url.protocol}`);
  }
  if (url.search !== "" || url.hash !== "") {
    throw new ParamError("server: give the address only (no ?query or #fragment)");
  }
  const server = url.origin + url.pathname.replace(/\/+$/, "");

  const session = q.get("session");
  if (session === null || session === "") throw new ParamError("session: missing (?session=<session id>)");
  if (!ID.test(session)) throw new ParamError("session: 1-128 characters of A-Z a-z 0-9 . _ : -");

  const rawToken = q.get("token");
  if (rawToken !== null && rawToken === "") throw new ParamError("token: empty (leave it out in open mode)");
  if (rawToken !== null && /[\s\u0000-\u001f\u007f]/.test(rawToken)) {
    throw new ParamError("token: contains spaces or control characters (is it URL-encoded?)");
  }
  const token = rawToken;
  const claims = token === null ? null : decodeClaims(token);

  let player: string | null = null;
  const as = q.get("as");
  if (claims?.scope === "play") {
    if (typeof claims.sub !== "string" || !ID.test(claims.sub)) throw new ParamError("token: a play token without a valid sub");
    if (as !== null && as !== claims.sub) throw new ParamError(`as: the token plays "${claims.sub}", not "${as}"`);
    player = claims.sub;
  } else if (as !== null && as !== "") {
    if (!ID.test(as)) throw new ParamError("as: not a participant id");
    if (claims?.scope === "watch") throw new ParamError("as: a watch token cannot end a turn");
    player = as;
  }
  if (claims?.sid !== undefined && claims.sid !== session) {
    throw new ParamError(`token: issued for session "${claims.sid}", not "${session}"`);
  }

  const hb = q.get("heartbeat");
  let heartbeatMs = 2000;
  if (hb !== null) {
    heartbeatMs = Number(hb);
    if (!Number.isInteger(heartbeatMs) || heartbeatMs < 1000 || heartbeatMs > 60000) {
      throw new ParamError("heartbeat: an integer number of ms, 1000-60000");
    }
  }
  return { server, session, token, claims, player, heartbeatMs };
}
