// The SyncKairos web clock: one session's clocks, live, over gRPC-Web.
//
// 1. Offset to the server clock: GetServerTime a few times, keep the round
//    trip with the smallest RTT, offset = server_time - (t0 + t1) / 2; then
//    every message's server_time keeps it honest (a message cannot arrive
//    before it was sent, so server_time - arrival is a lower bound).
// 2. Subscribe: a SNAPSHOT, then every change. When the stream drops (or goes
//    quiet for three heartbeats) it reconnects with backoff and
//    `from_version` + `epoch`, so the server replays every change missed.
// 3. Every animation frame draws each clock from `deadline_at - (now +
//    offset)` (src/clock.ts); the flag only when the server says so.
// 4. With a play token (or ?as= in open mode): a button, and the space bar,
//    end the player's own turn (SwitchCycle).
//
// For tests, `window.__clock` records what was received and drawn, and the
// clock elements carry data-* attributes (README.md).

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { faces, formatMs, tsMs, type Face } from "./clock.js";
import { ParamError, parseParams, type Params } from "./params.js";
import {
  EventType,
  type Session,
  type SessionEvent,
  Status,
  SubscribeRequestSchema,
  SyncService,
} from "./gen/synckairos/v1/sync_pb.js";

/** Local wall-clock time, ms since the epoch: monotonic within the page, high resolution. */
const now = (): number => performance.timeOrigin + performance.now();

/** How many entries each record of `window.__clock` keeps (the oldest go first). */
const KEEP = 5000;

interface Drawn {
  /** The session version on screen from this frame on. */
  version: number;
  /** Every version applied since the previous drawn frame (a replay can bring several at once). */
  versions: number[];
  /** When the frame drew it, epoch ms (performance.timeOrigin + performance.now()). */
  at: number;
  /**
   * The same instant on the server's clock (`at` + the page's offset): what
   * a test compares with the server's instants, since the browser's own
   * epoch clock may be many ms off the system's.
   */
  serverAt: number;
  active: string;
  status: string;
  flagged: string[];
}

interface Received {
  version: number;
  type: string;
  epoch: string;
  /** The message's server_time, epoch ms. */
  serverTime: number | undefined;
  at: number;
}

const record = {
  params: null as Params | null,
  offsetMs: 0,
  rttMs: NaN,
  syncs: [] as { offset: number; rtt: number; at: number }[],
  subscribes: [] as { fromVersion: number | null; epoch: string | null; at: number }[],
  received: [] as Received[],
  drawn: [] as Drawn[],
  /** The latest frame: what each clock showed. */
  last: null as null | { at: number; serverNow: number; version: number; faces: Face[] },
  switches: [] as { at: number; answeredAt?: number; version?: number; error?: string }[],
  /** Stream events that skipped versions (the server promises none): `{after, got, at}`. */
  gaps: [] as { after: number; got: number; at: number }[],
  conn: "starting" as "starting" | "syncing" | "connecting" | "live" | "reconnecting" | "ended" | "error",
  error: null as null | { code: string; message: string; at: number },
};
declare global {
  interface Window {
    __clock: typeof record;
  }
}
window.__clock = record;

function push<T>(list: T[], item: T): void {
  list.push(item);
  if (list.length > KEEP) list.splice(0, list.length - KEEP);
}

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const statusEl = $("status");
const errorEl = $("error");
const clocksEl = $("clocks");
const button = $<HTMLButtonElement>("switch");

function showConn(conn: typeof record.conn, text: string): void {
  record.conn = conn;
  statusEl.dataset.conn = conn;
  statusEl.textContent = text;
}

/** Shows an error on the page (and in `__clock.error`); `code` is a stable word for tests. */
function showError(code: string, message: string): void {
  record.error = { code, message, at: now() };
  errorEl.hidden = false;
  errorEl.dataset.errorCode = code;
  errorEl.textContent = message;
}

function clearError(): void {
  record.error = null;
  errorEl.hidden = true;
  delete errorEl.dataset.errorCode;
  errorEl.textContent = "";
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Backoff before reconnect attempt n (1, 2, ...): 250 ms doubling to 4 s, with jitter. */
const backoff = (n: number) => Math.min(4000, 250 * 2 ** (n - 1)) * (0.75 + Math.random() * 0.5);

/** A ConnectError's code as a lower-case word (`unauthenticated`, `unavailable`...). */
function codeWord(e: ConnectError): string {
  return Code[e.code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** Errors retrying cannot fix: the page says so and stops. */
const FATAL = new Set([Code.Unauthenticated, Code.PermissionDenied, Code.InvalidArgument]);

/** What a failed fetch (no answer at all), a dropped stream or a timeout look like. */
const NETWORK = new Set([Code.Unknown, Code.Unavailable, Code.Canceled, Code.DeadlineExceeded]);

/** The message for an answer that is not SyncKairos speaking gRPC-Web (a 404, another service). */
function notSyncKairos(server: string, e: ConnectError): string {
  return `${server} answered GetServerTime with ${codeWord(e)} (${e.rawMessage}): is it a SyncKairos server with gRPC-Web, at that address with no path? Retrying.`;
}

/** The message for an error reaching the server at all (fetch gives no detail, on purpose). */
function unreachable(server: string, e: ConnectError): string {
  return (
    `cannot reach ${server}: ${e.rawMessage || e.message}. ` +
    `Is the server running there, and is this page's origin (${location.origin}) in its SYNCKAIROS_CORS_ORIGINS? Retrying.`
  );
}

function main(): void {
  let params: Params;
  try {
    params = parseParams(location.search, location);
  } catch (e) {
    showConn("error", "not started");
    showError("bad_params", e instanceof ParamError ? e.message : String(e));
    return;
  }
  record.params = params;
  document.title = `${params.session} - SyncKairos`;
  $("session").textContent = params.session;

  const auth: Interceptor = (next) => async (req) => {
    if (params.token !== null) req.header.set("authorization", `Bearer ${params.token}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl: params.server, interceptors: [auth] });
  const client = createClient(SyncService, transport);

  let session: Session | null = null;
  /** Versions applied since the last drawn frame. */
  let pending: number[] = [];
  let stopped = false;
  /** `as` (or the token's sub) names nobody in the session. */
  let playerMissing = false;

  /** Applies a session (from the stream or a SwitchCycle reply) when it is newer than what is shown. */
  function apply(s: Session, force: boolean): boolean {
    const v = Number(s.version);
    if (!force && session !== null && s.epoch === session.epoch && v <= Number(session.version)) return false;
    if (params.player !== null && (session === null || session.epoch !== s.epoch)) {
      playerMissing = !s.participants.some((p) => p.participantId === params.player);
    }
    if (playerMissing) showError("bad_params", `as: "${params.player}" is not a participant of this session; the button stays off`);
    session = s;
    pending.push(v);
    return true;
  }

  /** A message's server_time T arrived at local time L: the offset is at least T - L. */
  function freshen(serverTime: number | undefined, arrivedAt: number): void {
    if (serverTime === undefined) return;
    const lower = serverTime - arrivedAt;
    if (lower > record.offsetMs) record.offsetMs = lower;
  }

  async function syncOffset(rounds: number): Promise<void> {
    let best: { rtt: number; offset: number } | null = null;
    for (let i = 0; i < rounds; i++) {
      const t0 = now();
      const r = await client.getServerTime({}, { timeoutMs: 5000 });
      const t1 = now();
      const s = tsMs(r.serverTime);
      if (s === undefined) throw new ConnectError("GetServerTime answered without server_time", Code.Internal);
      const rtt = t1 - t0;
      if (best === null || rtt < best.rtt) best = { rtt, offset: s - (t0 + t1) / 2 };
    }
    record.offsetMs = best!.offset;
    record.rttMs = best!.rtt;
    push(record.syncs, { offset: best!.offset, rtt: best!.rtt, at: now() });
  }

  /** Measures the offset, retrying with backoff while the server cannot be reached; false on a fatal error. */
  async function syncUntilDone(): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        await syncOffset(attempt === 1 && record.syncs.length === 0 ? 8 : 4);
        return true;
      } catch (err) {
        const e = ConnectError.from(err);
        if (FATAL.has(e.code)) {
          showConn("error", "stopped");
          showError(codeWord(e), `GetServerTime: ${codeWord(e)}: ${e.rawMessage}`);
          return false;
        }
        showConn("reconnecting", `offline, retrying (attempt ${attempt})`);
        showError(codeWord(e), NETWORK.has(e.code) ? unreachable(params.server, e) : notSyncKairos(params.server, e));
        await sleep(backoff(attempt));
      }
    }
  }

  async function streamLoop(): Promise<void> {
    showConn("syncing", "measuring the clock offset");
    if (!(await syncUntilDone())) return;
    // Clocks drift: measure the offset again every minute while the page runs.
    window.setInterval(() => {
      if (record.conn === "live") void syncOffset(4).catch(() => undefined);
    }, 60_000);
    /** Failed attempts in a row (0 while the stream is live). */
    let failures = 0;
    while (!stopped) {
      // And after each drop, without delaying the resubscribe: the replay comes first.
      if (failures > 0) void syncOffset(4).catch(() => undefined);
      const resume = session !== null;
      const req = create(SubscribeRequestSchema, {
        sessionId: params.session,
        heartbeatMs: params.heartbeatMs,
      });
      if (session !== null) {
        req.fromVersion = session.version;
        req.epoch = session.epoch;
      }
      // What the request carries, as sent (not what the page meant to send).
      push(record.subscribes, {
        fromVersion: req.fromVersion === undefined ? null : Number(req.fromVersion),
        epoch: req.epoch === "" ? null : req.epoch,
        at: now(),
      });
      if (failures === 0) showConn("connecting", resume ? `resuming after version ${session!.version}` : "subscribing");
      const abort = new AbortController();
      // A stream that goes quiet for three heartbeats is dead (a proxy or a
      // network that silently dropped it): abort it and reconnect.
      let quietTimer = 0;
      const arm = () => {
        clearTimeout(quietTimer);
        quietTimer = window.setTimeout(() => abort.abort(), 3 * params.heartbeatMs + 1000);
      };
      arm();
      try {
        for await (const ev of client.subscribe(req, { signal: abort.signal })) {
          arm();
          if (record.conn !== "live") {
            failures = 0;
            clearError();
            showConn("live", "live");
          }
          if (onEvent(ev)) {
            stopped = true;
            break;
          }
        }
        if (!stopped) showConn("reconnecting", "the stream ended; reconnecting");
      } catch (err) {
        const e = ConnectError.from(err);
        if (FATAL.has(e.code)) {
          showConn("error", "stopped");
          showError(codeWord(e), `Subscribe: ${codeWord(e)}: ${e.rawMessage}`);
          return;
        }
        if (e.code === Code.NotFound) {
          if (session === null) {
            showConn("error", "stopped");
            showError("not_found", `Subscribe: no session "${params.session}" on ${params.server}`);
            return;
          }
          // The id is gone (deleted, expired, or made again with a new epoch):
          // follow whatever session has that id now, from a fresh SNAPSHOT.
          showError("not_found", `Subscribe: ${e.rawMessage}; looking again`);
          session = null;
        } else if (NETWORK.has(e.code)) {
          showError(codeWord(e), unreachable(params.server, e));
        } else {
          showError(codeWord(e), `Subscribe: ${codeWord(e)}: ${e.rawMessage}; retrying`);
        }
        showConn("reconnecting", `stream lost (${codeWord(e)}), reconnecting`);
      } finally {
        clearTimeout(quietTimer);
      }
      if (!stopped) {
        failures++;
        await sleep(backoff(failures));
      }
    }
  }

  /** One stream message; true when the stream is over (DELETED). */
  function onEvent(ev: SessionEvent): boolean {
    const at = now();
    const serverTime = tsMs(ev.serverTime);
    freshen(serverTime, at);
    push(record.received, {
      version: Number(ev.version),
      type: EventType[ev.type] ?? String(ev.type),
      epoch: ev.epoch,
      serverTime,
      at,
    });
    if (ev.type === EventType.HEARTBEAT) return false;
    if (ev.type === EventType.DELETED) {
      showConn("ended", "the session was deleted");
      if (ev.session) apply(ev.session, true);
      return true;
    }
    const v = Number(ev.version);
    if (ev.type !== EventType.SNAPSHOT && session !== null && ev.epoch === session.epoch && v > Number(session.version) + 1) {
      push(record.gaps, { after: Number(session.version), got: v, at });
    }
    if (ev.session) apply(ev.session, ev.type === EventType.SNAPSHOT || (session !== null && ev.epoch !== session.epoch));
    return false;
  }

  // The player's button and the space bar.
  const player = params.player;
  let inFlight = false;
  async function endTurn(): Promise<void> {
    if (player === null || inFlight || session === null) return;
    if (session.status !== Status.RUNNING || session.activeParticipantId !== player) return;
    inFlight = true;
    const entry: (typeof record.switches)[number] = { at: now() };
    push(record.switches, entry);
    try {
      const s = await client.switchCycle(
        { sessionId: params.session, fromParticipantId: player, requestId: requestId() },
        { timeoutMs: 5000 },
      );
      entry.answeredAt = now();
      entry.version = Number(s.version);
      freshen(tsMs(s.serverTime), entry.answeredAt);
      // Drawn at once when it is the very next version; otherwise the stream
      // brings the versions in between first, in order.
      if (session !== null && s.epoch === session.epoch && s.version === session.version + 1n) apply(s, false);
    } catch (err) {
      const e = ConnectError.from(err);
      entry.error = `${codeWord(e)}: ${e.rawMessage}`;
      showError(codeWord(e), `SwitchCycle: ${entry.error}`);
    } finally {
      inFlight = false;
    }
  }
  if (player !== null) {
    button.hidden = false;
    button.dataset.player = player;
    button.textContent = `${player}: end my turn (space)`;
    button.addEventListener("click", () => void endTurn());
    document.addEventListener("keydown", (k) => {
      // A focused button takes Space itself (as a click): not twice.
      if (document.activeElement === button && !button.disabled) return;
      if (k.code === "Space" || k.key === " ") {
        k.preventDefault();
        if (!k.repeat) void endTurn();
      }
    });
  }

  // Drawing: every animation frame, from the deadline and the offset.
  const rows = new Map<string, { el: HTMLElement; time: HTMLElement; extra: HTMLElement }>();
  let drawnKey = "";
  function row(id: string): { el: HTMLElement; time: HTMLElement; extra: HTMLElement } {
    let r = rows.get(id);
    if (r === undefined) {
      const el = document.createElement("div");
      el.className = "clock";
      el.dataset.participant = id;
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = id;
      const time = document.createElement("div");
      time.className = "time";
      const extra = document.createElement("div");
      extra.className = "extra";
      el.append(name, time, extra);
      clocksEl.append(el);
      r = { el, time, extra };
      rows.set(id, r);
    }
    return r;
  }

  function frame(): void {
    requestAnimationFrame(frame);
    const s = session;
    if (s === null) return;
    const at = now();
    const serverNow = at + record.offsetMs;
    const fs = faces(s, serverNow);
    if (rows.size > fs.length || fs.some((f) => !rows.has(f.participantId))) {
      // A session made again under the same id (a new epoch) may have other participants.
      const ids = new Set(fs.map((f) => f.participantId));
      for (const [id, r] of rows) {
        if (!ids.has(id)) {
          r.el.remove();
          rows.delete(id);
        }
      }
    }
    for (const f of fs) {
      const r = row(f.participantId);
      const text = formatMs(f.ms);
      if (r.time.textContent !== text) r.time.textContent = text;
      const ms = String(Math.floor(f.ms));
      const d = r.el.dataset;
      d.remainingMs = ms;
      setIf(d, "active", String(f.active));
      setIf(d, "running", String(f.running));
      setIf(d, "flagged", String(f.flagged));
      setIf(d, "overtime", String(f.inOvertime));
      setIf(d, "periodsLeft", f.periodsLeft === null ? "" : String(f.periodsLeft));
      setIf(d, "stonesLeft", f.stonesLeft === null ? "" : String(f.stonesLeft));
      const extra = overtimeText(f, s);
      if (r.extra.textContent !== extra) r.extra.textContent = extra;
    }
    const v = Number(s.version);
    const main = $("main");
    setIf(main.dataset, "status", Status[s.status] ?? String(s.status));
    setIf(main.dataset, "version", String(v));
    setIf(main.dataset, "epoch", s.epoch);
    const playing = s.status === Status.RUNNING || s.status === Status.PAUSED;
    const statusText = `${Status[s.status] ?? s.status} · version ${v}${playing && s.activeParticipantId ? ` · ${s.activeParticipantId} to move` : ""}`;
    const st = $("session-status");
    if (st.textContent !== statusText) st.textContent = statusText;
    if (player !== null) {
      const mine = s.status === Status.RUNNING && s.activeParticipantId === player;
      if (button.disabled === mine) button.disabled = !mine;
    }
    record.last = { at, serverNow, version: v, faces: fs };
    // A frame is recorded when it draws a new version, or a change of who is
    // to move or who flagged at the same version (which only the server may
    // cause: a record of it would show a page guessing on its own).
    const flagged = fs.filter((f) => f.flagged).map((f) => f.participantId);
    const key = `${v}|${s.activeParticipantId}|${flagged.join(",")}`;
    if (key !== drawnKey || pending.length > 0) {
      drawnKey = key;
      push(record.drawn, {
        version: v,
        versions: pending,
        at,
        serverAt: serverNow,
        active: s.activeParticipantId,
        status: Status[s.status] ?? String(s.status),
        flagged,
      });
      pending = [];
    }
  }
  requestAnimationFrame(frame);

  void streamLoop().catch((err) => {
    showConn("error", "stopped");
    showError("internal", `the page failed: ${String(err)}`);
  });
}

/** The line under the digits: the flag, or what overtime is left (byo-yomi periods, Canadian stones). */
function overtimeText(f: Face, s: Session): string {
  if (f.flagged) return "FLAG";
  const tc = s.timeControl;
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
  if (f.periodsLeft !== null && tc !== undefined) {
    const period = seconds(Number(tc.byoyomiPeriodMs));
    return f.inOvertime
      ? `byo-yomi · ${plural(f.periodsLeft, "period")} of ${period} left`
      : `then ${f.periodsLeft} × ${period} byo-yomi`;
  }
  if (f.stonesLeft !== null && tc !== undefined) {
    return f.inOvertime
      ? `overtime · ${plural(f.stonesLeft, "stone")} to play in the block`
      : `then ${plural(f.stonesLeft, "stone")} in ${seconds(Number(tc.canadianBlockMs))}`;
  }
  if (f.countUp) return "count-up";
  return "";
}

/** A period's length for people: 30 s, 1.5 s, 10 min. */
function seconds(ms: number): string {
  if (ms >= 60_000 && ms % 60_000 === 0) return `${ms / 60_000} min`;
  return `${Number((ms / 1000).toFixed(1))} s`;
}

function setIf(d: DOMStringMap, key: string, value: string): void {
  if (d[key] !== value) d[key] = value;
}

/** A random request id (crypto.randomUUID needs a secure context; this does not). */
function requestId(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

main();
