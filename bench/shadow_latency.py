"""Production latency with and without a shadow challenger, on one server process.

One `tunewise serve` app (in this process, uvicorn on 127.0.0.1) serves the base model to a
bounded client load; a random LoRA adapter on the same base is the challenger
(`--shadow challenger`, rate 1). The shadow is switched off and on in alternating blocks of
requests (off, on, off, on, ...), so both conditions share the process, the loaded weights and
the machine's drift; between blocks the challenger's queue is left to drain. Printed: production
p50/p95 per condition, the ratio of the p95s (issue #27 asks for at most 1.10), what the
challenger answered and dropped, the CPU's vector flags, the torch threads and the load average
before and after.

    .venv/bin/python bench/shadow_latency.py                      # SmolLM2-135M, 4 blocks of 24
    .venv/bin/python bench/shadow_latency.py --tiny --requests 6 --blocks 2 --max-tokens 4

``--tiny`` uses a random 2-layer model with the real tokenizer (a smoke test of the bench, not a
measurement). The clients wait ``--gap-ms`` between requests so that the server has idle time in
which the challenger may run: with no idle time it never runs (production first) and the ratio
says nothing; the printed answered/dropped counts show which case a run was.

Exit code 1 when the p95 ratio is over the target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

TARGET = 1.10  # production p95 with the shadow / without, at most
WORDS = [
    "invoice",
    "refund",
    "login",
    "parcel",
    "courier",
    "crash",
    "upload",
    "billing",
    "address",
    "card",
    "order",
    "late",
]


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx2|amx[a-z_0-9]*)\b", text)))
    model = re.search(r"model name\s*:\s*(.+)", text)
    return f"{model.group(1) if model else '?'}; {' '.join(found) or 'no avx2/avx512/amx'}"


def tiny_model(out: Path) -> Path:
    """A random 2-layer Llama with the embedded model's tokenizer (smoke tests only)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from _tiny_model import build_tiny_llama
    from tunewise.runtime.models import resolve

    return build_tiny_llama(out, resolve(None).path)


def start(app):
    """uvicorn on a free loopback port in a thread: (url, server, thread)."""
    import uvicorn

    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it
    # every response's body waits ~40 ms for the client's delayed ACK (uvicorn writes twice).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def block(url: str, n: int, clients: int, max_tokens: int, gap_s: float, seed: int) -> list[float]:
    """``n`` requests from ``clients`` threads; production latencies in ms (client side)."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    todo = iter(range(n))
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(n)]

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                body = {
                    "model": "base",
                    "messages": [{"role": "user", "content": f"Classify: {prompts[i]}"}],
                    "max_tokens": max_tokens,
                }
                t0 = time.perf_counter()
                r = http.post(f"{url}/v1/chat/completions", json=body)
                took = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise SystemExit(f"request failed: {r.status_code} {r.text[:200]}")
                with lock:
                    latencies.append(took)
                time.sleep(gap_s)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def drained(shadow, limit_s: float = 600) -> None:
    """Wait until the challenger has nothing queued or in flight (bounded)."""
    deadline = time.time() + limit_s
    while shadow.pending and time.time() < deadline:
        time.sleep(0.05)


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def measure(args: argparse.Namespace, work: Path) -> dict:
    import torch

    from serve_load import make_adapters
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve
    from tunewise.serve.app import ServeSettings, create_app
    from tunewise.serve.shadow import ShadowSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    base = str(tiny_model(work / "tiny")) if args.tiny else args.base
    ref = resolve(base)
    (challenger,) = make_adapters(ref, work / "adapters", 1)
    engine = Engine(ref, batch_size=8)
    settings = ServeSettings(
        batch_window_ms=5,
        adapters=[f"challenger={challenger}"],
        log_traffic=work / "traffic",
        shadow=ShadowSettings("challenger", rate=1.0, drain_s=5),
    )
    app = create_app(engine, settings=settings)
    shadow = app.state.server.shadow
    url, server, thread = start(app)
    load_before = os.getloadavg()
    try:
        shadow.settings.rate = 0.0  # warm-up without the challenger
        block(url, max(2, args.clients), args.clients, args.max_tokens, 0.0, seed=99)
        times: dict[str, list[float]] = {"off": [], "on": []}
        counts = {"answered": 0, "dropped": 0}
        for b in range(args.blocks):
            cond = "on" if b % 2 else "off"
            shadow.settings.rate = 1.0 if cond == "on" else 0.0
            before = (shadow.answered, shadow.dropped)
            times[cond] += block(
                url, args.requests, args.clients, args.max_tokens, args.gap_ms / 1000, seed=b
            )
            drained(shadow)
            counts["answered"] += shadow.answered - before[0]
            counts["dropped"] += shadow.dropped - before[1]
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    return {
        "base": ref.name,
        "torch_threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "p50_off": pct(times["off"], 50),
        "p95_off": pct(times["off"], 95),
        "p50_on": pct(times["on"], 50),
        "p95_on": pct(times["on"], 95),
        "n_off": len(times["off"]),
        "n_on": len(times["on"]),
        "shadow": counts,
    }


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--tiny", action="store_true", help="a random 2-layer model (smoke test)")
    ap.add_argument("--requests", type=int, default=24, help="requests per block")
    ap.add_argument("--blocks", type=int, default=4, help="alternating off/on blocks (even)")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--gap-ms", type=float, default=200, help="each client's pause")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.blocks < 2 or args.blocks % 2:
        ap.error("--blocks must be an even number >= 2")
    return args


def main() -> int:
    args = _args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as tmp:
        os.environ["TUNEWISE_HOME"] = str(Path(tmp) / "home")  # no trace in the user's home
        os.environ.setdefault("TUNEWISE_MODELS", str(Path.home() / ".tunewise" / "models"))
        fig = measure(args, Path(tmp))
    ratio = fig["p95_on"] / fig["p95_off"]
    fig["p95_ratio"] = ratio
    print(
        f"base {fig['base']}, torch threads {fig['torch_threads']}, load average "
        f"{' '.join(f'{x:.2f}' for x in fig['load_before'])} before, "
        f"{' '.join(f'{x:.2f}' for x in fig['load_after'])} after"
    )
    print(
        f"production without shadow: p50 {fig['p50_off']:.0f} ms, p95 {fig['p95_off']:.0f} ms "
        f"({fig['n_off']} requests)"
    )
    print(
        f"production with shadow:    p50 {fig['p50_on']:.0f} ms, p95 {fig['p95_on']:.0f} ms "
        f"({fig['n_on']} requests); the challenger answered {fig['shadow']['answered']}, "
        f"dropped {fig['shadow']['dropped']}"
    )
    ok = ratio <= TARGET
    print(f"p95 ratio with/without: {ratio:.3f} (target <= {TARGET}): {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
