"""Cross-language check (issue 13): a Python grpcio client authenticates with
an API key and with a player token minted by PyJWT, as a game server and a
player's own client would.

Run by tests/api/auth_cross_language.rs:
    python3 auth_client.py ADDR API_KEY KID BASE64_SIGNER_SECRET
It generates the stubs from proto/ into a temp dir (grpcio-tools), then
prints one line per check and exits non-zero on the first that fails.
"""

import base64
import os
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import jwt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stubs():
    import grpc_tools
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    out = tempfile.mkdtemp(prefix="sk-py-")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}/proto", f"-I{well_known}",
         f"--python_out={out}", f"--grpc_python_out={out}",
         "synckairos/v1/sync.proto"],
        check=True,
    )
    sys.path.insert(0, out)
    from synckairos.v1 import sync_pb2, sync_pb2_grpc  # noqa: E402
    return sync_pb2, sync_pb2_grpc


def main():
    addr, api_key, kid, signer_b64 = sys.argv[1:5]
    pb, rpc = stubs()
    stub = rpc.SyncServiceStub(grpc.insecure_channel(addr))
    key = [("authorization", f"Bearer {api_key}")]
    sid = f"py-{uuid.uuid4().hex}"

    # No credential: UNAUTHENTICATED.
    try:
        stub.GetServerTime(pb.GetServerTimeRequest())
        sys.exit("a call without a credential was answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
    print("no credential: UNAUTHENTICATED")

    # The game server's API key creates and starts a chess clock.
    stub.CreateSession(pb.CreateSessionRequest(
        session_id=sid, mode=pb.MODE_PER_PARTICIPANT, initial_time_ms=60_000,
        participants=[pb.ParticipantSpec(participant_id="white"),
                      pb.ParticipantSpec(participant_id="black")]), metadata=key)
    s = stub.StartSession(pb.StartSessionRequest(session_id=sid), metadata=key)
    assert s.active_participant_id == "white", s
    print("API key: created and started", sid)

    # The player's own client, with a play token for white, ends its turn.
    secret = base64.b64decode(signer_b64)
    def token(sub):
        return jwt.encode({"sid": sid, "scope": "play", "sub": sub,
                           "exp": int(time.time()) + 600},
                          secret, algorithm="HS256", headers={"kid": kid})
    white = [("authorization", f"Bearer {token('white')}")]
    s = stub.SwitchCycle(pb.SwitchCycleRequest(session_id=sid), metadata=white)
    assert s.active_participant_id == "black", s
    print("play token (white): switched; black to move")

    # White's token cannot end black's turn.
    try:
        stub.SwitchCycle(pb.SwitchCycleRequest(session_id=sid), metadata=white)
        sys.exit("white's token ended black's turn")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
    try:
        stub.SwitchCycle(pb.SwitchCycleRequest(session_id=sid, from_participant_id="black"),
                         metadata=white)
        sys.exit("white's token switched as black")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
    print("play token (white) on black's turn: refused")

    # A token may watch its session: the stream's first message is the snapshot.
    stream = stub.Subscribe(pb.SubscribeRequest(session_id=sid), metadata=white, timeout=5)
    first = next(stream)
    assert first.session.session_id == sid, first
    stream.cancel()
    print("play token: subscribed")

    # An expired token: UNAUTHENTICATED, saying so.
    expired = jwt.encode({"sid": sid, "scope": "watch", "exp": int(time.time()) - 5},
                         secret, algorithm="HS256", headers={"kid": kid})
    try:
        stub.GetSession(pb.GetSessionRequest(session_id=sid),
                        metadata=[("authorization", f"Bearer {expired}")])
        sys.exit("an expired token was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in e.details(), e
    print("expired token: UNAUTHENTICATED (expired)")
    print("OK")


if __name__ == "__main__":
    main()
