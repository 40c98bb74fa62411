// The browser test of the web clock: headless Debian Chromium driven by
// Playwright (playwright-core, no browser download), run by the Rust test
// tests/api/browser.rs, which owns the servers.
//
// Line protocol with the Rust side (this script's stdin/stdout):
//   this script prints  `NEED <verb> <json>`  and reads one JSON line back
//   (`{"error": "..."}` when the Rust side failed);
//   `CHECK ok <name> <detail>` / `CHECK FAIL <name> <detail>` for each assertion,
//   `FIGURE <name> <value>` for measured figures, `SCREENSHOT <path>`, and
//   other lines are logs. The exit code is 0 only when every check passed;
//   the Rust side also requires every check name it expects to be reported ok.
//
// Verbs (answered by tests/api/browser.rs):
//   session {kind}         create a session (kind chess: started; flag, canadian: pending)
//                          -> {session, epoch, play_token, watch_token}
//   start {session}        StartSession -> {version, server_time_ms, deadline_ms}
//   get {session}          GetSession through the other replica -> state (see `state` there)
//   switch {session, from} SwitchCycle through the other replica -> {version, active, server_time_ms, answered_ms}
//   freeze {at_ms, for_ms} SIGSTOP both replicas at epoch ms at_ms for for_ms, then SIGCONT
//   restart {session}      SIGKILL the replica serving the page, make changes through the
//                          other one, start it again on the same port
//                          -> {before_version, missed: [versions], final: state}
//
// Env: WEB_CLOCK_PORT (serve the page there), SK_SERVER (the replica the page
// talks to), SK_DEAD_SERVER (an address nothing listens on), SK_OUT (where the
// screenshots go), CHROMIUM (default /usr/bin/chromium), SK_BENCH_SWITCHES (100).

import { mkdtemp, rm, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";
import { serve } from "../serve.mjs";

const env = (name, dflt) => {
  const v = process.env[name] ?? dflt;
  if (v === undefined) throw new Error(`browser.mjs: ${name} is not set`);
  return v;
};
const PORT = Number(env("WEB_CLOCK_PORT"));
const SERVER = env("SK_SERVER");
const DEAD_SERVER = env("SK_DEAD_SERVER");
const OUT = env("SK_OUT");
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const BENCH = Number(env("SK_BENCH_SWITCHES", "100"));
/** The tolerance of the issue: what the screen shows vs the server, and a remote switch to the screen. */
const TOLERANCE_MS = 100;

// --- the line protocol -------------------------------------------------------
const lines = createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (l) => {
  const w = waiting.shift();
  if (w) w(l);
});
// The Rust side went away: every question still open fails at once.
lines.on("close", () => {
  for (const w of waiting.splice(0)) w(JSON.stringify({ error: "the Rust side closed stdin" }));
});
async function ask(verb, arg = {}) {
  const answer = new Promise((resolve) => waiting.push(resolve));
  process.stdout.write(`NEED ${verb} ${JSON.stringify(arg)}\n`);
  const reply = JSON.parse(await answer);
  if (reply.error) throw new Error(`NEED ${verb}: ${reply.error}`);
  return reply;
}
const log = (...a) => process.stdout.write(`LOG ${a.join(" ")}\n`);

let failed = 0;
function check(name, ok, detail = "") {
  process.stdout.write(`CHECK ${ok ? "ok" : "FAIL"} ${name} ${detail}\n`);
  if (!ok) failed++;
  return ok;
}
const figure = (name, value) => process.stdout.write(`FIGURE ${name} ${value}\n`);

// --- helpers on the page -----------------------------------------------------
const origin = `http://127.0.0.1:${PORT}`;
const url = (q) => `${origin}/?${new URLSearchParams(q)}`;

/** What the screen shows now: each clock's data-* and digits, and the frame's time. */
function screen(page) {
  return page.evaluate(() => {
    const c = window.__clock;
    const clocks = {};
    for (const el of document.querySelectorAll("[data-participant]")) {
      clocks[el.dataset.participant] = {
        ms: Number(el.dataset.remainingMs),
        text: el.querySelector(".time").textContent,
        active: el.dataset.active === "true",
        running: el.dataset.running === "true",
        flagged: el.dataset.flagged === "true",
        overtime: el.dataset.overtime === "true",
        periods: el.dataset.periodsLeft,
        stones: el.dataset.stonesLeft,
      };
    }
    return { at: c.last?.at, version: c.last?.version, offset: c.offsetMs, clocks, conn: c.conn };
  });
}

/** m:ss.t or h:mm:ss -> ms (the lower end of what the digits stand for). */
function parseDigits(t) {
  let m = /^(\d+):(\d{2}):(\d{2})$/.exec(t.trim());
  if (m) return (Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3])) * 1000;
  m = /^(\d+):(\d{2})\.(\d)$/.exec(t.trim());
  if (m) return (Number(m[1]) * 60 + Number(m[2])) * 1000 + Number(m[3]) * 100;
  return NaN;
}

/** The server's value of each clock at local epoch ms `at` (this machine's clock is the server's: same host). */
function truthAt(state, at) {
  const out = {};
  for (const [id, p] of Object.entries(state.clocks)) {
    out[id] = p.running ? Math.max(0, p.remaining_ms - (at - state.server_time_ms)) : p.remaining_ms;
  }
  return out;
}

/** Compares the screen with the server `samples` times; returns the worst difference, ms. */
async function compareTimes(page, session, samples) {
  let worst = 0;
  let worstText = 0;
  const details = [];
  for (let i = 0; i < samples; i++) {
    const s = await screen(page);
    const state = await ask("get", { session });
    const truth = truthAt(state, s.at);
    for (const [id, shown] of Object.entries(s.clocks)) {
      const d = Math.abs(shown.ms - truth[id]);
      worst = Math.max(worst, d);
      // The digits floor to a tenth (h:mm:ss: a second): they stand for [v, v + step).
      const step = shown.text.split(":").length === 3 ? 1000 : 100;
      const dt = parseDigits(shown.text);
      worstText = Math.max(worstText, dt > shown.ms ? dt - shown.ms : Math.max(0, shown.ms - dt - step));
      details.push(`${id}:${Math.round(shown.ms - truth[id])}`);
    }
    await page.waitForTimeout(137);
  }
  return { worst, worstText, details: details.join(",") };
}

/** Waits until the page drew `version`; returns that drawn frame. */
async function drawn(page, version, timeout = 10000) {
  const h = await page.waitForFunction(
    (v) => window.__clock.drawn.find((d) => d.version >= v && (d.version === v || d.versions.includes(v))) ?? false,
    version,
    { polling: 5, timeout },
  );
  return h.jsonValue();
}

async function errorShown(page, timeout = 8000) {
  try {
    await page.waitForSelector("#error:not([hidden])", { timeout });
  } catch {
    return null;
  }
  return page.evaluate(() => ({
    code: document.getElementById("error").dataset.errorCode,
    text: document.getElementById("error").textContent,
    conn: window.__clock.conn,
  }));
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

// --- the scenario ------------------------------------------------------------
async function hostile(page, chess) {
  // No session: an error at once, not a blank page.
  await page.goto(url({ server: SERVER }));
  let e = await errorShown(page, 3000);
  check("bad_params_shown", e?.code === "bad_params", JSON.stringify(e));
  await page.goto(url({ server: "javascript:alert(1)", session: chess.session }));
  e = await errorShown(page, 3000);
  check("bad_server_param_shown", e?.code === "bad_params", JSON.stringify(e));
  await page.goto(url({ server: SERVER, session: chess.session, token: "" }));
  e = await errorShown(page, 3000);
  check("empty_token_shown", e?.code === "bad_params", JSON.stringify(e));
  // A token the server does not know: UNAUTHENTICATED, shown, and the page stops.
  await page.goto(url({ server: SERVER, session: chess.session, token: "garbage-not-a-key" }));
  e = await errorShown(page, 8000);
  check("garbage_token_shown", e?.code === "unauthenticated" && e?.conn === "error", JSON.stringify(e));
  // Something answers there, but not SyncKairos (the page's own static server: 404).
  await page.goto(url({ server: origin, session: chess.session, token: chess.watch_token }));
  e = await errorShown(page, 8000);
  check("not_synckairos_shown", e !== null && /SyncKairos server/.test(e.text) && e.conn === "reconnecting", JSON.stringify(e));
  // Nothing listens there: the page says it cannot reach it and keeps trying.
  await page.goto(url({ server: DEAD_SERVER, session: chess.session, token: chess.watch_token }));
  e = await errorShown(page, 8000);
  check(
    "unreachable_server_shown",
    e !== null && /cannot reach/.test(e.text) && e.conn === "reconnecting",
    JSON.stringify(e),
  );
}

async function chessGame(page, chess) {
  await page.goto(url({ server: SERVER, session: chess.session, token: chess.play_token }));
  await page.waitForFunction(() => window.__clock.conn === "live" && window.__clock.last !== null, null, { timeout: 10000 });
  const sync = await page.evaluate(() => ({ offset: window.__clock.offsetMs, rtt: window.__clock.rttMs }));
  figure("offset_ms", sync.offset.toFixed(3));
  figure("offset_rtt_ms", sync.rtt.toFixed(3));

  // 1. The displayed times match the server's.
  let cmp = await compareTimes(page, chess.session, 8);
  check("times_match_server", cmp.worst <= TOLERANCE_MS, `worst ${cmp.worst.toFixed(1)} ms (${cmp.details})`);
  check("digits_match_data", cmp.worstText <= 1, `worst ${cmp.worstText.toFixed(1)} ms beyond the digits' step`);

  // 2. The page's own button ends the player's (white's) turn.
  let before = await ask("get", { session: chess.session });
  if (!check("white_to_move_first", before.active === "white", before.active)) return;
  const disabledBefore = await page.isDisabled("#switch");
  await page.click("#switch");
  let after = await waitServer(chess.session, (s) => s.version > before.version);
  const flipped = await page.waitForFunction(
    () => document.querySelector('[data-participant="black"]')?.dataset.active === "true",
    null,
    { timeout: 5000 },
  ).then(() => true, () => false);
  check(
    "button_switches_turn",
    !disabledBefore && after.active === "black" && flipped && (await page.isDisabled("#switch")),
    `server ${after.active} v${after.version}, screen flipped ${flipped}`,
  );

  // 3. A SwitchCycle made elsewhere (the other replica) flips the screen within 100 ms.
  const r = await ask("switch", { session: chess.session, from: "black" });
  const d = await drawn(page, r.version);
  const lag = d.serverAt - r.server_time_ms;
  check("remote_switch_flips_within_100ms", d.active === "white" && lag <= TOLERANCE_MS, `drawn ${lag.toFixed(1)} ms after the commit, active ${d.active}`);

  // 4. The space bar does what the button does.
  before = await ask("get", { session: chess.session });
  // Space anywhere on the page (not a focused button's own Space).
  await page.evaluate(() => document.activeElement?.blur());
  await page.keyboard.press("Space");
  after = await waitServer(chess.session, (s) => s.version > before.version);
  const own = await page.evaluate(() => window.__clock.switches);
  check(
    "space_bar_switches_turn",
    after.active === "black" && after.version === before.version + 1 && own.length === 2 && own.every((x) => x.error === undefined),
    `server ${after.active} v${after.version}; the page's own switches: ${JSON.stringify(own)}`,
  );
  await drawn(page, after.version);
  await ask("switch", { session: chess.session, from: "black" });

  // 5. Switch -> repaint over BENCH switches made elsewhere.
  const fromCommit = [];
  let missing = 0;
  let wrongActive = 0;
  let active = (await ask("get", { session: chess.session })).active;
  for (let i = 0; i < BENCH; i++) {
    const sw = await ask("switch", { session: chess.session, from: active });
    active = sw.active;
    let f;
    try {
      f = await drawn(page, sw.version, 5000);
    } catch {
      missing++;
      continue;
    }
    if (f.version === sw.version && f.active !== sw.active) wrongActive++;
    // On the server's clock: the frame's instant through the page's own
    // offset (what the page believes the server's time is) against the
    // server's time in the switch's reply. The browser's own epoch clock
    // (timeOrigin + now) was seen ~10 ms off this host's, which made frames
    // look drawn before their switch was answered, so no figure uses it.
    fromCommit.push(f.serverAt - sw.server_time_ms);
  }
  fromCommit.sort((a, b) => a - b);
  const p = (xs, q) => (xs.length ? percentile(xs, q).toFixed(1) : "n/a");
  figure("repaint_after_commit_ms", `n=${fromCommit.length} p50=${p(fromCommit, 50)} p99=${p(fromCommit, 99)} max=${p(fromCommit, 100)}`);
  check("bench_every_switch_drawn", missing === 0 && wrongActive === 0, `${missing} never drawn, ${wrongActive} drawn with the wrong side to move, of ${BENCH}`);
  check("bench_p99_under_1s", fromCommit.length > 0 && percentile(fromCommit, 99) < 1000, `p99 ${p(fromCommit, 99)} ms`);

  // 6. The replica serving the page's stream dies; changes are made meanwhile.
  const caughtUp = await ask("get", { session: chess.session });
  await drawn(page, caughtUp.version);
  const subsBefore = await page.evaluate(() => window.__clock.subscribes.length);
  const rs = await ask("restart", { session: chess.session });
  log(`restart: page was at v${rs.before_version}, missed ${rs.missed.join(",")}, final v${rs.final.version}`);
  let resumed = true;
  try {
    await drawn(page, rs.final.version, 20000);
  } catch {
    resumed = false;
  }
  const rec = await page.evaluate((n) => {
    const c = window.__clock;
    return { subscribes: c.subscribes.slice(n), received: c.received, drawn: c.drawn, conn: c.conn };
  }, subsBefore);
  check("restart_page_caught_up", resumed, `conn ${rec.conn}, ${rec.subscribes.length} subscribe attempts since`);
  const resumedFrom = rec.subscribes.filter((s) => s.fromVersion === rs.before_version && s.epoch === chess.epoch);
  check(
    "restart_resubscribed_with_from_version",
    rec.subscribes.length > 0 && resumedFrom.length === rec.subscribes.length,
    JSON.stringify(rec.subscribes.map((s) => [s.fromVersion, s.epoch === chess.epoch])),
  );
  const replayed = rs.missed.filter((v) => rec.received.some((e) => e.version === v && e.type !== "SNAPSHOT"));
  check("restart_received_every_missed_event", replayed.length === rs.missed.length, `replayed ${replayed.join(",")} of ${rs.missed.join(",")}`);
  const drawnVersions = new Set(rec.drawn.flatMap((x) => x.versions));
  const shown = rs.missed.filter((v) => drawnVersions.has(v));
  check("restart_drew_every_missed_version", shown.length === rs.missed.length, `drew ${shown.join(",")} of ${rs.missed.join(",")}`);
  const s = await screen(page);
  const final = await ask("get", { session: chess.session });
  check(
    "restart_final_state_matches",
    s.version === final.version && s.clocks[final.active]?.active === true,
    `screen v${s.version} vs server v${final.version}, active ${final.active}`,
  );
  const gaps = await page.evaluate(() => window.__clock.gaps);
  check("no_version_skipped_on_the_stream", gaps.length === 0, JSON.stringify(gaps));
  cmp = await compareTimes(page, chess.session, 5);
  check("times_match_server_after_restart", cmp.worst <= TOLERANCE_MS, `worst ${cmp.worst.toFixed(1)} ms (${cmp.details})`);

  await page.waitForTimeout(300);
  const path = join(OUT, "clock.png");
  await page.screenshot({ path, fullPage: true });
  process.stdout.write(`SCREENSHOT ${path}\n`);
  check("screenshot_saved", true, path);
}

/** Polls the server (other replica) until `pred` holds. */
async function waitServer(session, pred, timeout = 5000) {
  const t0 = Date.now();
  for (;;) {
    const s = await ask("get", { session });
    if (pred(s) || Date.now() - t0 > timeout) return s;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function byoyomiFlag(page) {
  const g = await ask("session", { kind: "flag" });
  await page.goto(url({ server: SERVER, session: g.session, token: g.watch_token }));
  await page.waitForFunction(() => window.__clock.conn === "live" && window.__clock.last !== null, null, { timeout: 10000 });
  const watcher = await page.isHidden("#switch");
  check("watch_token_has_no_button", watcher, "");
  const started = await ask("start", { session: g.session });
  // The main second runs out, then the two byo-yomi periods, counted down
  // from the deadline; meanwhile both replicas are frozen from 300 ms before
  // the deadline to 1.2 s after it, so the flag comes late: the page must
  // wait at zero for the server's word.
  const seenP = page.evaluate(
    () =>
      new Promise((resolve) => {
        const seen = [];
        const step = () => {
          const el = document.querySelector('[data-participant="white"]');
          const zero = el.dataset.remainingMs === "0" ? "/zero" : "";
          const key = `${el.dataset.overtime}/${el.dataset.periodsLeft}/${el.dataset.flagged}${zero}`;
          if (seen[seen.length - 1] !== key) seen.push(key);
          if (el.dataset.flagged === "true") resolve(seen);
          else requestAnimationFrame(step);
        };
        step();
        setTimeout(() => resolve(seen), 10000);
      }),
  );
  await ask("freeze", { at_ms: started.deadline_ms - 300, for_ms: 1500 });
  const seen = await seenP;
  log(`white's clock went ${seen.join(" -> ")}`);
  check(
    "overtime_periods_shown",
    seen.includes("false/2/false") && seen.includes("true/2/false") && seen.includes("true/1/false"),
    seen.join(" -> "),
  );
  const rec = await page.evaluate(() => ({ received: window.__clock.received, drawn: window.__clock.drawn }));
  const expired = rec.received.find((e) => e.type === "EXPIRED");
  const firstFlag = rec.drawn.find((d) => d.flagged.includes("white"));
  const state = await ask("get", { session: g.session });
  check("flag_shown", expired !== undefined && firstFlag !== undefined && state.clocks.white.expired, `server status ${state.status}`);
  check("zero_without_a_flag_while_the_server_is_silent", seen.includes("true/1/false/zero"), seen.join(" -> "));
  if (expired && firstFlag) {
    check("flag_not_before_the_server", firstFlag.version >= expired.version && firstFlag.at >= expired.at, `drawn v${firstFlag.version}, event v${expired.version}`);
    const lag = firstFlag.serverAt - expired.serverTime;
    check("flag_drawn_within_100ms", lag >= 0 && lag <= TOLERANCE_MS, `${lag.toFixed(1)} ms after the server's EXPIRED`);
    figure("flag_after_deadline_ms", `${(expired.serverTime - started.deadline_ms).toFixed(1)} (both replicas frozen until 1200 ms after it, on purpose)`);
  }
  const s = await screen(page);
  check("flagged_clock_shows_zero", s.clocks.white.text === "0:00.0" && s.clocks.white.flagged, s.clocks.white.text);
  const path = join(OUT, "flag.png");
  await page.screenshot({ path, fullPage: true });
  process.stdout.write(`SCREENSHOT ${path}\n`);
}

async function canadian(page) {
  const g = await ask("session", { kind: "canadian" });
  await page.goto(url({ server: SERVER, session: g.session, token: g.play_token }));
  await page.waitForFunction(() => window.__clock.conn === "live" && window.__clock.last !== null, null, { timeout: 10000 });
  await ask("start", { session: g.session });
  // White's 300 ms of main time run out: the block starts with all its stones.
  const into = await page.waitForFunction(
    () => {
      const el = document.querySelector('[data-participant="white"]');
      return el.dataset.overtime === "true" ? { stones: el.dataset.stonesLeft, ms: Number(el.dataset.remainingMs) } : false;
    },
    null,
    { polling: "raf", timeout: 5000 },
  ).then((h) => h.jsonValue(), () => null);
  check("canadian_overtime_shown", into !== null && into.stones === "3", JSON.stringify(into));
  // A move in overtime plays a stone (a little after the main time ran out, so the
  // server, not only the page, is past it when the switch arrives).
  await page.waitForTimeout(100);
  await page.click("#switch");
  const after = await waitServer(g.session, (s) => s.active === "black");
  await drawn(page, after.version);
  const s = await screen(page);
  const truth = truthAt(after, s.at);
  check(
    "canadian_stone_played",
    s.clocks.white.stones === "2" && after.clocks.white.stones_left === 2 && Math.abs(s.clocks.white.ms - truth.white) <= TOLERANCE_MS,
    `screen ${s.clocks.white.stones} stones ${s.clocks.white.ms} ms, server ${after.clocks.white.stones_left} stones ${truth.white.toFixed(0)} ms`,
  );
}

async function main() {
  await mkdir(OUT, { recursive: true });
  const web = await serve({ port: PORT });
  const profile = await mkdtemp(join(tmpdir(), "web-clock-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 900, height: 420 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    // The browser's own console errors (CORS refusals, refused connections), each text once.
    const seen = new Set();
    page.on("console", (m) => {
      const text = `console.${m.type()}: ${m.text()}`;
      if ((m.type() === "error" || m.type() === "warning") && !seen.has(text)) {
        seen.add(text);
        log(text);
      }
    });
    page.on("pageerror", (e) => log(`pageerror: ${e.message}`));
    const chess = await ask("session", { kind: "chess" });
    await hostile(page, chess);
    await chessGame(page, chess);
    await byoyomiFlag(page);
    await canadian(page);
  } finally {
    await context.close();
    web.close();
    await rm(profile, { recursive: true, force: true });
  }
}

const overall = setTimeout(() => {
  process.stdout.write("CHECK FAIL finished_in_time the browser test took over 240 s\n");
  process.exit(1);
}, 240_000);
try {
  await main();
} catch (e) {
  check("no_exception", false, String(e?.stack ?? e).replace(/\n/g, " | "));
}
clearTimeout(overall);
lines.close();
process.stdout.write(`DONE ${failed} failed\n`);
process.exit(failed === 0 ? 0 : 1);
