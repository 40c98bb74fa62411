// What each clock shows at a given server instant, from the last Session the
// server sent. Pure: no DOM, no network, no clock of its own (the caller
// passes `serverNowMs`), so the same code runs in the page and in a test.
//
// The server never ticks and neither does this: the running clock is always
// `deadline_at - serverNow` (the caller's serverNow is `local now + offset`),
// split into main time and overtime by what the session's time control says.
// A local count of frames or timer ticks never enters into it.

import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { Participant, Session } from "./gen/synckairos/v1/sync_pb.js";
import { DelayKind, Mode, Status } from "./gen/synckairos/v1/sync_pb.js";

/** A Timestamp as epoch milliseconds (fractional: µs precision kept). */
export function tsMs(t: Timestamp | undefined): number | undefined {
  if (!t) return undefined;
  return Number(t.seconds) * 1000 + t.nanos / 1e6;
}

/** One participant's clock face at one instant. */
export interface Face {
  participantId: string;
  /** What the big digits show, ms: main time, or the current byo-yomi period / Canadian block in overtime; count-up: time used. */
  ms: number;
  /** This clock is the one running now. */
  running: boolean;
  /** It is this participant's turn (running or paused). */
  active: boolean;
  /** The server said this clock ran out (never guessed locally). */
  flagged: boolean;
  inOvertime: boolean;
  /** Byo-yomi periods left, the current one included (null: no byo-yomi). */
  periodsLeft: number | null;
  /** Canadian stones still to play in the block (null: no Canadian overtime). */
  stonesLeft: number | null;
  /** MODE_COUNT_UP: the digits count up. */
  countUp: boolean;
}

/** Whether `p`'s clock is the one running in `s` (the session's mode decides whose budget runs). */
function runsFor(s: Session, p: Participant): boolean {
  if (s.status !== Status.RUNNING) return false;
  switch (s.mode) {
    case Mode.PER_GROUP:
      return s.activeGroupId !== "" && p.groupId === s.activeGroupId;
    case Mode.GLOBAL:
      // One session-wide budget: every participant's value is the global one.
      return true;
    default:
      return p.participantId === s.activeParticipantId;
  }
}

/**
 * Every participant's face at `serverNowMs`, in rotation order.
 *
 * For the running clock, T = deadline_at - serverNow is the time until it
 * flags. What part of T is main time follows from the server's own numbers
 * at its `server_time` S: main time R = remaining_ms, so the rest of the
 * budget, X = (deadline_at - S) - R, is overtime (byo-yomi periods, the
 * Canadian block), which comes after the main time, or a simple delay's free
 * time, which comes before it.
 */
export function faces(s: Session, serverNowMs: number): Face[] {
  const tc = s.timeControl;
  const byoyomi = tc !== undefined && tc.byoyomiPeriods > 0 && tc.byoyomiPeriodMs > 0n;
  const canadian = tc !== undefined && tc.canadianStones > 0 && tc.canadianBlockMs > 0n;
  const simpleDelay = tc !== undefined && tc.delayKind === DelayKind.SIMPLE && tc.delayMs > 0n;
  const periodMs = byoyomi ? Number(tc!.byoyomiPeriodMs) : 0;
  const S = tsMs(s.serverTime) ?? serverNowMs;
  const deadline = tsMs(s.deadlineAt);
  const countUp = s.mode === Mode.COUNT_UP;

  const out = [...s.participants]
    .sort((a, b) => a.index - b.index)
    .map((p): Face => {
      const face: Face = {
        participantId: p.participantId,
        ms: Number(countUp ? p.usedMs : p.remainingMs),
        running: false,
        active: p.participantId === s.activeParticipantId,
        flagged: p.expired,
        inOvertime: p.inOvertime,
        periodsLeft: byoyomi ? p.periodsLeft : null,
        stonesLeft: canadian ? p.stonesLeft : null,
        countUp,
      };
      if (!runsFor(s, p) || p.expired) return face;
      face.running = true;
      if (countUp) {
        // A stopwatch: what it had used at S, plus the time since (capped).
        let used = Number(p.usedMs) + Math.max(0, serverNowMs - S);
        if (s.maxTimeMs > 0n) used = Math.min(used, Number(s.maxTimeMs));
        face.ms = used;
        return face;
      }
      if (deadline === undefined) return face; // running without a deadline: nothing to count down to
      const T = Math.max(0, deadline - serverNowMs);
      const R = Number(p.remainingMs);
      if (simpleDelay) {
        // The delay's free time runs first: the main time stays until it is spent.
        face.ms = Math.min(R, T);
        return face;
      }
      if ((byoyomi || canadian) && !p.inOvertime) {
        const X = Math.max(0, deadline - S - R);
        if (T > X) {
          face.ms = T - X;
          return face;
        }
        // The main time ran out since S: the turn flows into overtime.
        face.inOvertime = true;
        if (byoyomi) return byoyomiFace(face, T, periodMs);
        face.ms = T;
        face.stonesLeft = tc!.canadianStones;
        return face;
      }
      if (byoyomi && p.inOvertime) return byoyomiFace(face, T, periodMs);
      face.ms = T; // main time only (Fischer, Bronstein, sudden death), or the Canadian block
      return face;
    });
  return out;
}

/** In byo-yomi overtime with T to the flag: the current period and how many are left (itself included). */
function byoyomiFace(face: Face, T: number, periodMs: number): Face {
  const k = Math.max(1, Math.ceil(T / periodMs));
  face.periodsLeft = k;
  face.ms = Math.max(0, T - (k - 1) * periodMs);
  return face;
}

/** Clock digits: h:mm:ss from an hour up, else m:ss.t (tenths, rounded down: a clock never shows more than is left). */
export function formatMs(ms: number): string {
  const v = Math.max(0, Math.floor(ms));
  const tenths = Math.floor(v / 100) % 10;
  const totalS = Math.floor(v / 1000);
  const s = totalS % 60;
  const m = Math.floor(totalS / 60) % 60;
  const h = Math.floor(totalS / 3600);
  const ss = String(s).padStart(2, "0");
  if (h > 0) return `${h}:${String(m).padStart(2, "0")}:${ss}`;
  return `${m}:${ss}.${tenths}`;
}

/** The inverse of formatMs (for tests reading the screen): the lower end of what the digits stand for, ms. */
export function parseDigits(text: string): number | undefined {
  const t = text.trim();
  let m = /^(\d+):(\d{2}):(\d{2})$/.exec(t);
  if (m) return (Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3])) * 1000;
  m = /^(\d+):(\d{2})\.(\d)$/.exec(t);
  if (m) return (Number(m[1]) * 60 + Number(m[2])) * 1000 + Number(m[3]) * 100;
  return undefined;
}
