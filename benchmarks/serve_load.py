"""Load test of `banglaslm serve` on loopback: latency percentiles and aggregate throughput,
and one client's latency while other processes compete for the CPU.

    python benchmarks/serve_load.py RUN_DIR [--requests 300] [--max-tokens 32]
    python benchmarks/serve_load.py RUN_DIR --compete 2 [--tokens 500] [--rounds 5]
    python benchmarks/serve_load.py RUN_DIR --quantize none,int8 [--baseline-src DIR] [--rounds 5]

Without --compete it starts the server in a subprocess on 127.0.0.1 (a free port), then:
1. aggregate generated tokens/s with 1, 4 and 16 concurrent clients (48 requests each);
2. a bounded load test: `--requests` completions, 16 at a time, counting status codes and
   lost requests, with p50 / p99 latency.
With --compete N it starts one server per setting of `SETTINGS` (decode path × threads) and,
round after round, times one greedy completion of --tokens tokens on each, idle and with N
busy-looping processes beside it (the order of settings and of idle/loaded alternates), and
prints medians side by side: the figures are ratios from one run on a shared machine.
With --quantize it starts one server per `--quantize` kind and, round after round in turn,
sends each 48 requests from 16 concurrent clients: aggregate tokens/s, best and median of the
rounds, and each kind's ratio to the first. --baseline-src adds a float32 server running the
banglaslm package in DIR (e.g. a `git worktree` of an earlier commit's src/) in the same rounds.
Every request is bounded (time-out 120 s) and the run stops by itself.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
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


def start_server(run_dir: str, extra_args: tuple[str, ...] = (), env: dict | None = None):
    """(process, port) of a `banglaslm serve` subprocess answering /health (60 s at most)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "banglaslm", "serve", run_dir, "--port", str(port), *extra_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return server, port
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                sys.exit("server did not start")
            time.sleep(0.3)


# ---- one client's latency beside competing processes -----------------------------------------
# (label, environment, serve options): the decode path and the thread settings compared.
THREADS = [("threads = cores (torch default)", {}),
           ("1 thread", {"OMP_NUM_THREADS": "1"}),
           ("threads = cores, OMP_WAIT_POLICY=passive", {"OMP_WAIT_POLICY": "passive"}),
           ("1 thread, OMP_WAIT_POLICY=passive", {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"})]
SETTINGS = [(path, label, {**kernel, **env}, ())
            for path, kernel in (("C kernel", {}), ("PyTorch", {"BANGLASLM_KERNEL": "torch"}))
            for label, env in THREADS]
LATENCY_PROMPT = "একদিন সকালে"


def timed_completion(port: int, tokens: int) -> tuple[float, int]:
    """(seconds, completion tokens) of one greedy completion of at most `tokens` tokens."""
    body = json.dumps({"prompt": LATENCY_PROMPT, "max_tokens": tokens, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        used = json.loads(r.read())["usage"]["completion_tokens"]
    return time.perf_counter() - start, used


@contextlib.contextmanager
def competitors(n: int):
    """`n` processes that spin on the CPU until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them reach full speed
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def compete(run_dir: str, n: int, tokens: int, rounds: int) -> None:
    """Median latency of each setting idle and beside `n` busy processes, measured side by side."""
    load = os.getloadavg()[0]  # other work on the machine, which the idle figures include
    servers = [start_server(run_dir, extra, env) for _, _, env, extra in SETTINGS]
    times: dict[tuple[int, bool], list[float]] = {}
    counts: set[int] = set()
    try:
        for _, port in servers:
            timed_completion(port, tokens)  # warm-up
        for r in range(rounds):
            order = list(range(len(SETTINGS)))
            order = order[r % len(order):] + order[:r % len(order)]
            for loaded in ((False, True) if r % 2 == 0 else (True, False)):
                with competitors(n if loaded else 0):
                    for i in order:
                        seconds, used = timed_completion(servers[i][1], tokens)
                        times.setdefault((i, loaded), []).append(seconds)
                        counts.add(used)
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait(timeout=30)
    print(f"run {run_dir}; one client, greedy, {'/'.join(map(str, sorted(counts)))} new tokens per request; "
          f"{n} busy processes beside the server when loaded; medians of {rounds} rounds; {os.cpu_count()} CPUs; "
          f"load average before the run {load:.2f}")
    print(f"{'decode path':<10} {'threads':<42} {'idle s':>7} {'loaded s':>9} {'loaded/idle':>11} "
          f"{'loaded / default loaded':>23}")
    default: dict[str, float] = {}
    for i, (path, label, _, _) in enumerate(SETTINGS):
        idle, loaded = statistics.median(times[(i, False)]), statistics.median(times[(i, True)])
        default.setdefault(path, loaded)  # the first setting of each path is the default
        print(f"{path:<10} {label:<42} {idle:>7.2f} {loaded:>9.2f} {loaded / idle:>11.2f} "
              f"{loaded / default[path]:>23.2f}")


def compare_quantize(run_dir: str, kinds: list[str], rounds: int, max_tokens: int, baseline: str | None) -> None:
    servers = {kind: start_server(run_dir, ("--quantize", kind)) for kind in kinds}
    if baseline:  # the package found first on PYTHONPATH is the one that serves
        servers["baseline"] = start_server(run_dir, env={"PYTHONPATH": baseline})
        kinds = ["baseline", *kinds]
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{servers[kinds[0]][1]}/v1/models", timeout=10) as r:
            MODEL["id"] = json.loads(r.read())["data"][0]["id"]
        for kind in kinds:  # warm-up: the first requests build the kernel and allocate
            run_batch(servers[kind][1], 16, 16, max_tokens)
        for i in range(rounds):
            for kind in kinds if i % 2 == 0 else kinds[::-1]:
                results, seconds = run_batch(servers[kind][1], 48, 16, max_tokens)
                assert all(r[0] == 200 for r in results), [r[0] for r in results]
                rates[kind].append(sum(r[2] for r in results) / seconds)
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=30)
    print(f"run {run_dir}: 48 requests of {max_tokens} new tokens from 16 concurrent clients, {rounds} rounds")
    print(f"{'--quantize':>10} {'best tokens/s':>14} {'median':>8} {'best / ' + kinds[0]:>14}")
    for kind in kinds:
        print(f"{kind:>10} {max(rates[kind]):>14.1f} {statistics.median(rates[kind]):>8.1f} "
              f"{max(rates[kind]) / max(rates[kinds[0]]):>13.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--compete", type=int, default=0, metavar="N",
                    help="time one client beside N busy processes instead (see above)")
    ap.add_argument("--tokens", type=int, default=500, help="with --compete: new tokens per request")
    ap.add_argument("--rounds", type=int, default=5, help="with --compete: rounds (medians are reported)")
    ap.add_argument("--quantize", default=None, metavar="KINDS",
                    help="compare servers with these --quantize kinds, comma-separated (see above)")
    ap.add_argument("--baseline-src", default=None, metavar="DIR",
                    help="with --quantize: also a float32 server of the banglaslm package in DIR")
    args = ap.parse_args()
    if args.quantize:
        return compare_quantize(args.run_dir, args.quantize.split(","), args.rounds, args.max_tokens, args.baseline_src)
    if args.compete:
        return compete(args.run_dir, args.compete, args.tokens, args.rounds)
    server, port = start_server(args.run_dir)
    try:
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
