"""Load on the local API: sustained requests/s, p50/p99 and errors at 1, 8 and 32 concurrent clients,
then a soak that watches the server's memory over many requests.

`slimserve serve` runs the demo bundle in its own process; each client thread keeps one HTTP/1.1
connection open and posts one row at a time, as fast as answers come back. The figures are of
the local server on this machine (one Python process in front of the real Lambda handler), not
of Lambda, whose concurrency is one request per execution environment.

Run: .venv/bin/python benchmarks/load.py [--seconds 20] [--soak-requests 200000]   (or `make load`)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_api import demo_bundle, local_api, rss_kib


class Connection:
    """One kept-alive connection posting the same request; answers read by Content-Length."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.address, self.request = (host, port), request
        self._open()

    def _open(self) -> None:
        self.sock = socket.create_connection(self.address, timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def post(self) -> int:
        """The status of one answer; 0 when the connection failed (it is reopened)."""
        try:
            self.sock.sendall(self.request)
            status = int(self.reader.readline().split(b" ", 2)[1])
            length = 0
            while (line := self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.reader.read(length)
            return status
        except (OSError, ValueError, IndexError):
            self.close()
            self._open()
            return 0

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def run(host: str, port: int, request: bytes, clients: int, *, seconds: float | None = None,
        requests: int | None = None) -> tuple[list[float], int, float]:
    """Latencies (s) of every answer, the number of errors, and the elapsed time, for `clients` connections
    running for `seconds` or until `requests` answers in all."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    remaining = [requests or 0]
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds if seconds else float("inf")

    def client(i: int) -> None:
        conn = Connection(host, port, request)
        mine = latencies[i]
        while True:
            if requests is not None:
                with lock:
                    if remaining[0] <= 0:
                        break
                    remaining[0] -= 1
            began = time.perf_counter()
            if began >= deadline:
                break
            status = conn.post()
            mine.append(time.perf_counter() - began)
            if status != 200:
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for per in latencies for x in per], sum(errors), time.perf_counter() - start


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="sustained run per concurrency level")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--soak-requests", type=int, default=200_000, help="requests in the memory soak")
    parser.add_argument("--soak-clients", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "slimserve-hardening")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = demo_bundle(args.workdir)
    names = [f["name"] for f in json.loads((bundle / "manifest.json").read_text())["features"]]
    body = json.dumps({"instances": [dict.fromkeys(names, 1.0)]}).encode()
    request = (b"POST /predict HTTP/1.1\r\nHost: local\r\nContent-Type: application/json\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    ok = True
    with local_api(bundle) as (base, pid):
        url = urlsplit(base)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        run(host, port, request, 4, requests=2000)  # warm-up: imports, first sessions, allocator pools
        print(f"load {dt.date.today()}: demo bundle (100-tree forest, 30 features), one row per request, "
              f"{os.cpu_count()} CPUs, server pid {pid}")
        print("| clients | requests | requests/s | p50 ms | p99 ms | errors |")
        print("|---:|---:|---:|---:|---:|---:|")
        for clients in (int(c) for c in args.levels.split(",")):
            latencies, errors, elapsed = run(host, port, request, clients, seconds=args.seconds)
            latencies.sort()
            ok &= errors == 0
            print(f"| {clients} | {len(latencies)} | {len(latencies) / elapsed:.0f} | "
                  f"{percentile(latencies, 0.5) * 1e3:.2f} | {percentile(latencies, 0.99) * 1e3:.2f} | {errors} |",
                  flush=True)
        step = max(1, args.soak_requests // 10)
        samples = [(0, rss_kib(pid))]
        soak_errors, started = 0, time.perf_counter()
        for done in range(step, args.soak_requests + 1, step):
            _, errors, _ = run(host, port, request, args.soak_clients, requests=step)
            soak_errors += errors
            samples.append((done, rss_kib(pid)))
        elapsed = time.perf_counter() - started
    ok &= soak_errors == 0
    middle = samples[len(samples) // 2]
    print(f"\nsoak: {samples[-1][0]} requests by {args.soak_clients} clients in {elapsed:.0f} s "
          f"({samples[-1][0] / elapsed:.0f}/s), {soak_errors} errors")
    mib = [kib / 1024 for _, kib in samples]
    print(f"server RSS: start {mib[0]:.1f} MiB, middle ({middle[0]} requests) {middle[1] / 1024:.1f} MiB, "
          f"end {mib[-1]:.1f} MiB, max {max(mib):.1f} MiB")
    print(f"RSS every {step} requests (MiB): " + ", ".join(f"{s[1] / 1024:.1f}" for s in samples))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
