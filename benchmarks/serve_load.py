"""Load test of `banglaslm serve` on loopback: latency percentiles and aggregate throughput.

    python benchmarks/serve_load.py RUN_DIR [--requests 300] [--max-tokens 32]

Starts the server in a subprocess on 127.0.0.1 (a free port), then:
1. aggregate generated tokens/s with 1, 4 and 16 concurrent clients (48 requests each);
2. a bounded load test: `--requests` completions, 16 at a time, counting status codes and
   lost requests, with p50 / p99 latency.
Every request is bounded (time-out 120 s) and the run stops by itself.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

PROMPTS = ["একদিন সকালে", "আজ বাজারে", "নদীর ধারে", "আমাদের গ্রামে", "বৃষ্টি নামল"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODEL = {"id": ""}


def request(port: int, i: int, max_tokens: int) -> tuple[int, float, int]:
    body = json.dumps({"model": MODEL["id"], "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
                       "temperature": 0.8, "seed": i}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            tokens = json.loads(r.read())["usage"]["completion_tokens"]
            return r.status, time.perf_counter() - start, tokens
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - start, 0
    except OSError:
        return -1, time.perf_counter() - start, 0  # connection failure: a lost request


def run_batch(port: int, n: int, concurrency: int, max_tokens: int):
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: request(port, i, max_tokens), range(n)))
    return results, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "banglaslm", "serve", args.run_dir, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("server did not start")
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            MODEL["id"] = json.loads(r.read())["data"][0]["id"]
        print(f"run {args.run_dir}, {args.max_tokens} new tokens per request, loopback")
        print(f"{'concurrency':>11} {'requests':>8} {'tokens/s (aggregate)':>21} {'p50 s':>7} {'p99 s':>7}")
        for c in (1, 4, 16):
            results, seconds = run_batch(port, 48, c, args.max_tokens)
            lat = sorted(r[1] for r in results)
            print(f"{c:>11} {48:>8} {sum(r[2] for r in results) / seconds:>21.1f} "
                  f"{statistics.median(lat):>7.3f} {lat[int(0.99 * (len(lat) - 1))]:>7.3f}")
        results, seconds = run_batch(port, args.requests, 16, args.max_tokens)
        codes: dict[int, int] = {}
        for code, _, _ in results:
            codes[code] = codes.get(code, 0) + 1
        lat = sorted(r[1] for r in results)
        print(f"\nload test: {args.requests} requests, 16 at a time, {seconds:.1f} s")
        print(f"status codes: {dict(sorted(codes.items()))}; 5xx: {sum(v for k, v in codes.items() if k >= 500)}; "
              f"lost: {codes.get(-1, 0)}")
        print(f"latency p50 {statistics.median(lat):.3f} s, p99 {lat[int(0.99 * (len(lat) - 1))]:.3f} s")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
