"""A minimal OTLP/gRPC trace collector for benchmarks (tests/bench.sh observe):
accepts opentelemetry.proto.collector.trace.v1.TraceService/Export, keeps
nothing, answers the empty ExportTraceServiceResponse, and prints how many
requests and bytes it took when it is stopped (SIGTERM). Prints its port.

    python3 tests/python/otlp_sink.py        # listens on a free port
"""
import signal
import sys
import threading
from concurrent import futures

import grpc

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
seen = {"requests": 0, "bytes": 0}
lock = threading.Lock()


def export(request: bytes, context) -> bytes:
    with lock:
        seen["requests"] += 1
        seen["bytes"] += len(request)
    return b""  # an empty ExportTraceServiceResponse


class Sink(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method == EXPORT:
            return grpc.unary_unary_rpc_method_handler(export)
        return None


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Sink(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    print(f"otlp sink: {seen['requests']} export requests, {seen['bytes']} bytes", file=sys.stderr, flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
