// Unit tests of src/clock.ts (what each clock shows at an instant), with
// node's test runner: `npm test` bundles this file with esbuild and runs it.
// Every case is a Session as the server would send it at S = 1000 s, read
// some milliseconds later.

import { test } from "node:test";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { faces, formatMs, parseDigits } from "../src/clock.js";
import {
  DelayKind,
  Mode,
  type Session,
  SessionSchema,
  Status,
  TimeControlSchema,
} from "../src/gen/synckairos/v1/sync_pb.js";

const S = 1_000_000; // server_time, epoch ms

interface P {
  id: string;
  remaining: number;
  used?: number;
  expired?: boolean;
  inOvertime?: boolean;
  periodsLeft?: number;
  stonesLeft?: number;
  group?: string;
}

function session(o: {
  mode?: Mode;
  status?: Status;
  active?: string;
  activeGroup?: string;
  deadlineIn?: number;
  tc?: MessageInitShape<typeof TimeControlSchema>;
  maxTimeMs?: number;
  participants: P[];
}): Session {
  return create(SessionSchema, {
    mode: o.mode ?? Mode.PER_PARTICIPANT,
    status: o.status ?? Status.RUNNING,
    version: 7n,
    activeParticipantId: o.active ?? "white",
    activeGroupId: o.activeGroup ?? "",
    serverTime: timestampFromMs(S),
    deadlineAt: o.deadlineIn === undefined ? undefined : timestampFromMs(S + o.deadlineIn),
    timeControl: create(TimeControlSchema, o.tc ?? {}),
    maxTimeMs: BigInt(o.maxTimeMs ?? 0),
    participants: o.participants.map((p, index) => ({
      participantId: p.id,
      index,
      groupId: p.group ?? "",
      remainingMs: BigInt(p.remaining),
      usedMs: BigInt(p.used ?? 0),
      active: p.id === (o.active ?? "white"),
      expired: p.expired ?? false,
      inOvertime: p.inOvertime ?? false,
      periodsLeft: p.periodsLeft ?? 0,
      stonesLeft: p.stonesLeft ?? 0,
    })),
  });
}

const face = (s: Session, at: number, id: string) => faces(s, S + at).find((f) => f.participantId === id)!;

test("the running clock counts down from the deadline; the other stands still", () => {
  const s = session({ deadlineIn: 60_000, participants: [{ id: "white", remaining: 60_000 }, { id: "black", remaining: 45_000 }] });
  assert.equal(face(s, 1_500, "white").ms, 58_500);
  assert.equal(face(s, 1_500, "white").running, true);
  assert.equal(face(s, 1_500, "black").ms, 45_000);
  assert.equal(face(s, 1_500, "black").running, false);
  // Past the deadline it waits at zero, and never flags by itself.
  assert.equal(face(s, 70_000, "white").ms, 0);
  assert.equal(face(s, 70_000, "white").flagged, false);
});

test("the deadline rules, not remaining_ms: a deadline later than remaining (a credit) is what is shown", () => {
  const s = session({ deadlineIn: 10_000, participants: [{ id: "white", remaining: 9_000 }, { id: "black", remaining: 1 }] });
  assert.equal(face(s, 0, "white").ms, 10_000);
});

test("paused: nothing runs, whatever the clock says", () => {
  const s = session({ status: Status.PAUSED, participants: [{ id: "white", remaining: 30_000 }, { id: "black", remaining: 20_000 }] });
  assert.equal(face(s, 5_000, "white").ms, 30_000);
  assert.equal(face(s, 5_000, "white").running, false);
  assert.equal(face(s, 5_000, "white").active, true);
});

test("byo-yomi: main time, then the periods one by one", () => {
  // 2 s of main time, then 3 periods of 1 s: the flag at +5 s.
  const s = session({
    deadlineIn: 5_000,
    tc: { byoyomiPeriods: 3, byoyomiPeriodMs: 1_000n },
    participants: [{ id: "white", remaining: 2_000, periodsLeft: 3 }, { id: "black", remaining: 2_000, periodsLeft: 3 }],
  });
  let f = face(s, 500, "white");
  assert.deepEqual([f.ms, f.inOvertime, f.periodsLeft], [1_500, false, 3]);
  f = face(s, 2_250, "white");
  assert.deepEqual([f.ms, f.inOvertime, f.periodsLeft], [750, true, 3]);
  f = face(s, 3_250, "white");
  assert.deepEqual([f.ms, f.inOvertime, f.periodsLeft], [750, true, 2]);
  f = face(s, 4_900, "white");
  assert.equal(f.periodsLeft, 1);
  assert.ok(Math.abs(f.ms - 100) < 1e-6);
  assert.equal(face(s, 0, "black").periodsLeft, 3);
});

test("byo-yomi already in overtime at server_time: periods_left counts the current one", () => {
  // In the 2nd of 3 periods with 400 ms of it left: the flag at 400 + 1000.
  const s = session({
    deadlineIn: 1_400,
    tc: { byoyomiPeriods: 3, byoyomiPeriodMs: 1_000n },
    participants: [{ id: "white", remaining: 400, inOvertime: true, periodsLeft: 2 }, { id: "black", remaining: 0 }],
  });
  let f = face(s, 100, "white");
  assert.deepEqual([f.ms, f.periodsLeft, f.inOvertime], [300, 2, true]);
  f = face(s, 900, "white");
  assert.deepEqual([f.ms, f.periodsLeft], [500, 1]);
});

test("Canadian: main time, then the block with all its stones", () => {
  const s = session({
    deadlineIn: 300 + 20_000,
    tc: { canadianStones: 3, canadianBlockMs: 20_000n },
    participants: [{ id: "white", remaining: 300, stonesLeft: 3 }, { id: "black", remaining: 300, stonesLeft: 3 }],
  });
  let f = face(s, 100, "white");
  assert.deepEqual([f.ms, f.inOvertime, f.stonesLeft], [200, false, 3]);
  f = face(s, 1_300, "white");
  assert.deepEqual([f.ms, f.inOvertime, f.stonesLeft], [19_000, true, 3]);
  // In the block, with 2 stones to play and 5 s left of it.
  const o = session({
    deadlineIn: 5_000,
    tc: { canadianStones: 3, canadianBlockMs: 20_000n },
    participants: [{ id: "white", remaining: 5_000, inOvertime: true, stonesLeft: 2 }, { id: "black", remaining: 300, stonesLeft: 3 }],
  });
  f = face(o, 1_000, "white");
  assert.deepEqual([f.ms, f.inOvertime, f.stonesLeft], [4_000, true, 2]);
});

test("simple delay: the free time runs first, the main time after", () => {
  const s = session({
    deadlineIn: 2_000 + 10_000,
    tc: { delayMs: 2_000n, delayKind: DelayKind.SIMPLE },
    participants: [{ id: "white", remaining: 10_000 }, { id: "black", remaining: 10_000 }],
  });
  assert.equal(face(s, 1_500, "white").ms, 10_000);
  assert.equal(face(s, 3_000, "white").ms, 9_000);
});

test("per group: every member of the active group shows the running group clock", () => {
  const s = session({
    mode: Mode.PER_GROUP,
    active: "a1",
    activeGroup: "a",
    deadlineIn: 30_000,
    participants: [
      { id: "a1", remaining: 30_000, group: "a" },
      { id: "b1", remaining: 25_000, group: "b" },
      { id: "a2", remaining: 30_000, group: "a" },
    ],
  });
  assert.equal(face(s, 1_000, "a1").ms, 29_000);
  assert.equal(face(s, 1_000, "a2").ms, 29_000);
  assert.equal(face(s, 1_000, "a2").active, false);
  assert.equal(face(s, 1_000, "b1").ms, 25_000);
});

test("count-up: the stopwatch adds the time since server_time, up to its cap", () => {
  const s = session({
    mode: Mode.COUNT_UP,
    maxTimeMs: 10_000,
    deadlineIn: 6_000,
    participants: [{ id: "white", remaining: 0, used: 4_000 }, { id: "black", remaining: 0, used: 1_000 }],
  });
  assert.equal(face(s, 2_500, "white").ms, 6_500);
  assert.equal(face(s, 9_000, "white").ms, 10_000);
  assert.equal(face(s, 2_500, "black").ms, 1_000);
});

test("a flagged clock is flagged because the server said so, and stops", () => {
  const s = session({
    status: Status.EXPIRED,
    participants: [{ id: "white", remaining: 0, expired: true }, { id: "black", remaining: 12_000 }],
  });
  assert.equal(face(s, 500, "white").flagged, true);
  assert.equal(face(s, 500, "white").ms, 0);
  assert.equal(face(s, 500, "black").running, false);
});

test("digits: tenths rounded down under an hour, h:mm:ss above; parseDigits reads them back", () => {
  assert.equal(formatMs(0), "0:00.0");
  assert.equal(formatMs(99.9), "0:00.0");
  assert.equal(formatMs(61_234), "1:01.2");
  assert.equal(formatMs(3_599_999), "59:59.9");
  assert.equal(formatMs(3_600_000), "1:00:00");
  assert.equal(formatMs(-5), "0:00.0");
  for (const ms of [0, 61_200, 3_599_900, 7_261_000]) assert.equal(parseDigits(formatMs(ms)), ms);
});
