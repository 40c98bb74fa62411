#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (docs/fuzzing.md) into
fuzz/corpus/<target>/seed-*: valid requests encoded by protoc from text
format, so that the fuzzer starts past decoding. Run from anywhere; needs
the protoc that the build already uses (protoc-bin-vendored) or PROTOC.
The record layouts are the ones fuzz/src/lib.rs reads."""
import base64, glob, os, struct, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTOC = os.environ.get("PROTOC") or next(iter(sorted(glob.glob(os.path.expanduser(
    "~/.cargo/registry/src/*/protoc-bin-vendored-linux-x86_64-*/bin/protoc")))), None)
if not PROTOC:
    sys.exit("no protoc: set PROTOC")
INCLUDE = os.path.join(os.path.dirname(os.path.dirname(PROTOC)), "include")

def enc(message, text):
    return subprocess.run(
        [PROTOC, f"-I{ROOT}/proto", f"-I{INCLUDE}", f"--encode=synckairos.v1.{message}",
         "synckairos/v1/sync.proto"], input=text.encode(), capture_output=True, check=True).stdout

TAGS = {"start": (0, "StartSessionRequest"), "switch": (1, "SwitchCycleRequest"),
        "pause": (2, "PauseSessionRequest"), "resume": (3, "ResumeSessionRequest"),
        "complete": (4, "CompleteSessionRequest"), "cancel": (5, "CancelSessionRequest"),
        "adjust": (6, "AdjustTimeRequest"), "deadline": (7, None), "timeout": (8, None),
        "get": (9, None)}

def request_path(create, steps):
    out = bytearray()
    raw = enc("CreateSessionRequest", create)
    out += struct.pack("<H", len(raw)) + raw
    for name, dt_ms, text in steps:
        tag, message = TAGS[name]
        raw = enc(message, 'session_id: "s" ' + text) if message else b""
        out += struct.pack("<BiB", tag, dt_ms * 1000, len(raw)) + raw
    return bytes(out)

P2 = 'participants { participant_id: "a" } participants { participant_id: "b" } '
P3 = P2 + 'participants { participant_id: "c" } '
PLAY = [("start", 0, ""), ("switch", 800, 'from_participant_id: "a"'),
        ("switch", 1200, ""), ("pause", 100, ""), ("resume", 5000, ""),
        ("adjust", 10, 'participant_id: "a" delta_ms: 1500'), ("get", 300, ""),
        ("switch", 50, 'next_participant_id: "b" request_id: "r1"'),
        ("switch", 0, 'next_participant_id: "b" request_id: "r1"'),
        ("deadline", 0, ""), ("timeout", 1000, ""), ("complete", 10, ""), ("cancel", 0, "")]
REQUESTS = {
    "fischer": ('session_id: "s" mode: MODE_PER_PARTICIPANT initial_time_ms: 3000 '
                'time_control { increment_ms: 1000 max_remaining_ms: 5000 } ' + P2, PLAY),
    "bronstein_notify": ('session_id: "s" mode: MODE_PER_PARTICIPANT initial_time_ms: 2000 '
                         'timeout_action: TIMEOUT_ACTION_NOTIFY '
                         'time_control { delay_ms: 500 delay_kind: DELAY_KIND_BRONSTEIN } ' + P3, PLAY),
    "simple_skip": ('session_id: "s" mode: MODE_PER_PARTICIPANT initial_time_ms: 1000 '
                    'timeout_action: TIMEOUT_ACTION_SKIP '
                    'time_control { delay_ms: 300 delay_kind: DELAY_KIND_SIMPLE } ' + P3, PLAY),
    "byoyomi": ('session_id: "s" mode: MODE_PER_PARTICIPANT initial_time_ms: 1000 '
                'time_control { byoyomi_periods: 3 byoyomi_period_ms: 500 } ' + P2, PLAY),
    "canadian": ('session_id: "s" mode: MODE_PER_PARTICIPANT initial_time_ms: 1000 '
                 'time_control { canadian_stones: 2 canadian_block_ms: 800 } ' + P2, PLAY),
    "hourglass": ('session_id: "s" mode: MODE_PER_PARTICIPANT initial_time_ms: 2000 '
                  'time_control { hourglass: true } ' + P2, PLAY),
    "stages": ('session_id: "s" mode: MODE_PER_PARTICIPANT initial_time_ms: 2000 '
               'time_control { increment_ms: 100 stages { after_cycles: 1 add_ms: 1000 increment_ms: 50 } '
               'stages { after_cycles: 3 add_ms: 500 } } '
               'participants { participant_id: "a" index: 7 initial_time_ms: 1500 } '
               'participants { participant_id: "b" index: 3 } metadata { key: "k" value: "v" }', PLAY),
    "per_cycle_skip": ('session_id: "s" mode: MODE_PER_CYCLE cycle_time_ms: 250 '
                       'timeout_action: TIMEOUT_ACTION_SKIP ' + P3,
                       [("start", 0, ""), ("deadline", 0, ""), ("deadline", 0, ""),
                        ("switch", 100, ""), ("deadline", 0, ""), ("deadline", 0, ""),
                        ("deadline", 0, ""), ("get", 10, "")]),
    "per_group": ('session_id: "s" mode: MODE_PER_GROUP '
                  'groups { group_id: "g1" initial_time_ms: 2000 } groups { group_id: "g2" initial_time_ms: 1500 } '
                  'participants { participant_id: "a" group_id: "g1" } participants { participant_id: "b" group_id: "g2" } '
                  'participants { participant_id: "c" group_id: "g1" } time_control { increment_ms: 200 }',
                  [("start", 0, 'first_participant_id: "b"'), ("switch", 300, ""),
                   ("adjust", 10, 'group_id: "g2" delta_ms: -500'), ("switch", 700, 'expected_version: 3'),
                   ("deadline", 0, ""), ("get", 0, "")]),
    "global": ('session_id: "s" mode: MODE_GLOBAL global_time_ms: 5000 ' + P2,
               [("start", 0, ""), ("switch", 1000, ""), ("adjust", 0, 'participant_id: "b" delta_ms: 100'),
                ("pause", 10, ""), ("resume", 10, ""), ("deadline", 0, ""), ("get", 0, "")]),
    "count_up": ('session_id: "s" mode: MODE_COUNT_UP max_time_ms: 4000 timeout_action: TIMEOUT_ACTION_SKIP ' + P3,
                 [("start", 0, ""), ("switch", 500, ""), ("adjust", 0, 'participant_id: "b" delta_ms: 1000'),
                  ("deadline", 0, ""), ("deadline", 0, ""), ("get", 0, "")]),
}

T = 1_800_000_000_000_000
def participant(pid, index, remaining, used=0, **extra):
    clock = {"bounded": True, "initial": remaining + used, "remaining": remaining}
    if used:
        clock["used"] = used
    return dict({"id": pid, "index": index, "clock": clock}, **extra)

RUNNING = {"id": "s", "epoch": "e", "mode": "PerParticipant", "status": "Running", "version": 3,
           "participants": [participant("a", 0, 59000, 1000, cycle_count=1), participant("b", 1, 60000)],
           "active": 1, "cycle_count": 1, "cycle_started_at": T + 1000, "time_control": {"increment": 1000},
           "timeout_action": "EndSession", "metadata": {"k": "v"}, "created_at": T, "started_at": T,
           "updated_at": T + 1000, "recent_requests": ["r1"]}
CYCLE = {"id": "c", "epoch": "e", "mode": "PerCycle", "status": "Running", "version": 2,
         "participants": [{"id": "a", "index": 0, "clock": {}}, {"id": "b", "index": 1, "clock": {}}],
         "active": 0, "cycle_started_at": T, "time_control": {}, "cycle": {"bounded": True, "initial": 250000,
         "remaining": 250000}, "cycle_time": 250000, "timeout_action": "Skip", "created_at": T,
         "started_at": T, "updated_at": T}
GROUP = {"id": "g", "epoch": "e", "mode": "PerGroup", "status": "Paused", "version": 4,
         "participants": [{"id": "a", "index": 0, "group": "g1", "clock": {}},
                          {"id": "b", "index": 1, "group": "g2", "clock": {}}],
         "groups": [{"id": "g1", "clock": {"bounded": True, "initial": 1000, "remaining": 1000}},
                    {"id": "g2", "clock": {"bounded": True, "initial": 1000, "remaining": 1000}}],
         "active": 0, "time_control": {"byoyomi_periods": 2, "byoyomi_period": 250000},
         "timeout_action": "Notify", "created_at": T, "started_at": T, "updated_at": T}
import json
def event(version, kind, who, session):
    return {"version": version, "kind": kind, "participant": who, "at": session["updated_at"], "session": session}
STORED = {
    "state": RUNNING, "cycle_state": CYCLE, "group_state": GROUP,
    "event": event(3, "Switched", "a", RUNNING),
    "batch": [event(2, "Started", "a", CYCLE), event(4, "Paused", None, GROUP)],
}

def write(target, name, data):
    d = os.path.join(ROOT, "fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

for name, (create, steps) in REQUESTS.items():
    write("request_path", name, request_path(create, steps))
for name, value in STORED.items():
    write("stored_session", name, json.dumps(value, separators=(",", ":")).encode())
for name, token in {"issued": base64.urlsafe_b64encode(b"0123456789abcdef0123456789abcdef:42").rstrip(b"="),
                    "empty_epoch": base64.urlsafe_b64encode(b":1").rstrip(b"="), "garbage": b"a\xc3\xa9b"}.items():
    write("page_token", name, token)
