"""Load test of `tunewise serve` on loopback, and the memory of K adapters vs K merged copies.

Everything runs on 127.0.0.1 with a bounded number of requests and a bounded time:

1. Builds K small random LoRA adapters (r=8 on q/v) for the real SmolLM2-135M base, registers and
   promotes them in a throw-away registry.
2. Starts `tunewise serve` as a subprocess, fires concurrent clients across at least 4 adapters
   (plus the base) with about 10% malformed requests mixed in, and reports requests/s, p50/p95
   latency, status counts, the number of 5xx (must be 0) and the server's RSS.
3. In fresh subprocesses, measures resident memory of one base + K adapters (one Engine) against
   K merged copies (K standalone models), as ratios against one base model.
4. Mixed-adapter batches, in this process on one Engine behind the server's own MicroBatcher
   (no HTTP): 8 closed-loop clients spread over 8 adapters (one each) vs 8 clients on one
   adapter, in three variants: mixed batches with the prefix cache (the server today), mixed
   batches without it, and the old grouping per adapter without it (``Engine.mixed_adapters``
   off); requests/s, tokens/s, p50/p95 latency, the ratios spread/one (goal with mixing on:
   >= 0.8) and between variants, whether the three give the same answers; the CPU's SIMD flags
   and the load average before and after.

    .venv/bin/python bench/serve_load.py                # defaults: 160 requests, 8 clients, K=8
    .venv/bin/python bench/serve_load.py --requests 40 --clients 4 --max-seconds 60
    .venv/bin/python bench/serve_load.py --skip-load --skip-memory   # only the mixed batches

Exit code 1 when a 5xx was seen, the K-adapter target (<= 1.2x one base) is missed, mixed batches
answer differently from the old grouping, or spread/one with mixing on is below 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def make_adapters(base_ref, out: Path, k: int, r: int = 8) -> list[Path]:
    """K random LoRA runs on the base (small B so outputs stay fluent but differ)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    runs = []
    base = AutoModelForCausalLM.from_pretrained(base_ref.path)
    for i in range(k):
        torch.manual_seed(1000 + i)
        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(base, cfg, adapter_name="default")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.02)
        run = out / f"adapter{i}"
        model.save_pretrained(run)
        (run / "run.json").write_text(
            json.dumps(
                {
                    "status": "completed",
                    "method": "lora",
                    "config": {"name": f"adapter{i}"},
                    "base_model": {
                        "name": base_ref.name,
                        "path": str(base_ref.path),
                        "weight_hash": base_ref.weight_hash,
                    },
                    "data_hashes": {},
                    "metrics": [],
                }
            )
        )
        base = model.unload()  # strip the LoRA layers again for the next adapter
        runs.append(run)
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_BODIES: list[tuple[str, bytes]] = [
    ("bad json", b"{this is not json"),
    ("no messages", json.dumps({"model": "adapter0"}).encode()),
    (
        "unknown model",
        json.dumps(
            {"model": "no-such-adapter", "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
    ),
    (
        "bad role",
        json.dumps(
            {"model": "adapter1", "messages": [{"role": "robot", "content": "hi"}]}
        ).encode(),
    ),
    (
        "max_tokens 0",
        json.dumps(
            {"model": "adapter2", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
    ),
    (
        "escape",
        json.dumps(
            {"model": "../../etc/passwd", "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
    ),
]
PROMPTS = [
    "My order never arrived, what can I do?",
    "How do I reset my password?",
    "The app crashes when I upload a photo.",
    "Can I change the delivery address?",
    "I was charged twice this month.",
    "Where is my refund?",
]


def load_test(
    url: str,
    models: list[str],
    n_requests: int,
    clients: int,
    max_seconds: float,
    max_tokens: int,
    bad_fraction: float,
    seed: int = 0,
) -> dict:
    import httpx

    rng = random.Random(seed)
    plan = []
    for i in range(n_requests):
        if rng.random() < bad_fraction:
            plan.append(("bad", rng.choice(BAD_BODIES)[1]))
        else:
            body = {
                "model": models[i % len(models)],
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            }
            plan.append(("good", json.dumps(body).encode()))
    lock = threading.Lock()
    results: list[tuple[str, int, float]] = []
    next_i = [0]
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(timeout=max_seconds) as http:
            while time.monotonic() < deadline:
                with lock:
                    if next_i[0] >= len(plan):
                        return
                    kind, body = plan[next_i[0]]
                    next_i[0] += 1
                t0 = time.perf_counter()
                try:
                    status = http.post(
                        f"{url}/v1/chat/completions",
                        content=body,
                        headers={"content-type": "application/json"},
                    ).status_code
                except httpx.HTTPError:
                    status = -1  # connection failure: counted, and it would fail the run
                with lock:
                    results.append((kind, status, time.perf_counter() - t0))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    good_lat = sorted(lat for kind, st, lat in results if kind == "good" and st == 200)
    statuses: dict[str, int] = {}
    for _, st, _ in results:
        statuses[str(st)] = statuses.get(str(st), 0) + 1

    def pct(xs: list[float], q: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None

    return {
        "requests_done": len(results),
        "requests_planned": n_requests,
        "elapsed_s": round(elapsed, 1),
        "requests_per_s": round(len(results) / elapsed, 2),
        "ok_per_s": round(len(good_lat) / elapsed, 2),
        "p50_s": pct(good_lat, 0.5),
        "p95_s": pct(good_lat, 0.95),
        "mean_s": round(statistics.fmean(good_lat), 3) if good_lat else None,
        "malformed_sent": sum(1 for k, _, _ in results if k == "bad"),
        "malformed_answered_4xx": sum(1 for k, st, _ in results if k == "bad" and 400 <= st < 500),
        "statuses": statuses,
        "server_errors_5xx": sum(1 for _, st, _ in results if st >= 500 or st < 0),
    }


MEMORY_CHILD = r"""
import gc, json, sys
import psutil, torch
from pathlib import Path
sys.path.insert(0, sys.argv[4])
torch.set_num_threads(1)
mode, base_name, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
from tunewise.runtime.models import resolve
from tunewise.runtime.engine import Engine, GenRequest
from transformers import AutoModelForCausalLM
import peft  # noqa: F401  (import cost outside the measurement)
proc = psutil.Process()
ref = resolve(base_name)
msgs = [{"role": "user", "content": "hello"}]

def rss():
    gc.collect()
    return proc.memory_info().rss

def storage_bytes(model):
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total

r0 = rss()
out = {}
if mode == "adapters":
    eng = Engine(ref, max_loaded_adapters=len(payload))
    eng.generate([GenRequest(msgs, max_new_tokens=1)])  # touch every base weight
    r1 = rss()
    out["base_storage"] = storage_bytes(eng.model)
    for i, p in enumerate(payload):
        eng.load_adapter(f"a{i}", Path(p))
    for i in range(len(payload)):
        eng.generate([GenRequest(msgs, adapter=f"a{i}", max_new_tokens=1)])
    r2 = rss()
    out.update(base_bytes=r1 - r0, with_adapters_bytes=r2 - r0,
               with_adapters_storage=storage_bytes(eng.model), loaded=len(eng.loaded_adapters()))
else:
    models, ids = [], torch.tensor([[1, 2, 3]])
    for i in range(payload["k"]):
        m = AutoModelForCausalLM.from_pretrained(payload["dir"]).eval()
        # own memory per copy (not pages shared through the mmap of one file), as K merged
        # models in K deployments would have; parameters() keeps tied weights tied
        for p in m.parameters():
            p.data = p.data.clone()
        with torch.no_grad():
            m(input_ids=ids)
        models.append(m)
        if i == 0:
            out["one_copy_bytes"] = rss() - r0
            out["one_copy_storage"] = storage_bytes(m)
    out["k_copies_bytes"] = rss() - r0
print("RESULT " + json.dumps(out))
"""


def measure_memory(base_name: str, adapter_dirs: list[Path], merged_dir: Path, k: int) -> dict:
    def child(mode: str, payload) -> dict:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                MEMORY_CHILD,
                mode,
                base_name,
                json.dumps(payload),
                str(HERE.parent / "src"),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=os.environ.copy(),
        )
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
        return json.loads(line[0][7:])

    a = child("adapters", [str(p) for p in adapter_dirs[:k]])
    m = child("merged", {"dir": str(merged_dir), "k": k})
    base = a["base_bytes"]
    mb = 2**20
    return {
        "k": k,
        "one_base_rss_mb": round(base / 2**20, 1),
        "base_plus_k_adapters_rss_mb": round(a["with_adapters_bytes"] / 2**20, 1),
        "k_merged_copies_rss_mb": round(m["k_copies_bytes"] / 2**20, 1),
        "one_merged_copy_rss_mb": round(m["one_copy_bytes"] / 2**20, 1),
        "k_adapters_vs_one_base": round(a["with_adapters_bytes"] / base, 3),
        "k_adapters_vs_k_merged": round(a["with_adapters_bytes"] / m["k_copies_bytes"], 3),
        "base_weights_mb": round(a["base_storage"] / mb, 1),
        "base_plus_k_adapters_weights_mb": round(a["with_adapters_storage"] / mb, 1),
        "k_merged_weights_mb": round(k * m["one_copy_storage"] / mb, 1),
        "by_weights_k_adapters_vs_one_base": round(
            a["with_adapters_storage"] / a["base_storage"], 3
        ),
        "by_weights_k_adapters_vs_k_merged": round(
            a["with_adapters_storage"] / (k * m["one_copy_storage"]), 3
        ),
    }


def direct_reference(args, ref, runs: list[Path], n: int, seed: int = 1) -> dict:
    """Same kind of requests straight into one Engine.generate call: the no-HTTP, ideal-batch
    reference the server's throughput is compared against (same process, same threads)."""
    import torch

    from tunewise.runtime.engine import Engine, GenRequest

    if args.server_threads:
        torch.set_num_threads(args.server_threads)
    eng = Engine(ref, max_loaded_adapters=len(runs))
    names = [None]
    for i, run in enumerate(runs[: args.serve_adapters]):
        eng.load_adapter(f"adapter{i}", run)
        names.append(f"adapter{i}")
    eng.generate(
        [
            GenRequest([{"role": "user", "content": "hi"}], adapter=a, max_new_tokens=1)
            for a in names
        ]
    )  # warm-up
    rng = random.Random(seed)
    reqs = [
        GenRequest(
            [{"role": "user", "content": rng.choice(PROMPTS)}],
            adapter=names[i % len(names)],
            max_new_tokens=args.max_tokens,
        )
        for i in range(n)
    ]
    t0 = time.perf_counter()
    eng.generate(reqs)
    one_call = time.perf_counter() - t0
    # what a perfect server could do with the same number of closed-loop clients: batches of
    # `clients` mixed requests, back to back
    t0 = time.perf_counter()
    for i in range(0, n, args.clients):
        eng.generate(reqs[i : i + args.clients])
    chunked = time.perf_counter() - t0
    return {
        "requests": n,
        "one_call_ok_per_s": round(n / one_call, 2),
        "batches_of_clients_ok_per_s": round(n / chunked, 2),
    }


def cpu_flags() -> list[str]:
    """The SIMD flags the CPU kernels depend on (``grep -o 'avx512[a-z_]*|avx2|amx[a-z_]*'``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"avx512[a-z_]*|avx2|amx[a-z_]*", text)))


async def _closed_loop(batcher, plans: list[list]) -> tuple[float, list[float], list]:
    """One client per plan, each sending its next request when the last one is answered."""
    latencies: list[float] = []
    results: list = [None] * sum(len(p) for p in plans)

    async def client(plan: list) -> None:
        for pos, req in plan:
            t0 = time.perf_counter()
            results[pos] = await batcher.submit(req)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(p) for p in plans))
    return time.perf_counter() - t0, latencies, results


def _mixed_scenario(eng, batcher, args, adapters: list[str], mixed: bool) -> dict:
    """``args.clients`` clients, client c on ``adapters[c % len(adapters)]``, the same prompts
    whatever the adapters, on ``eng`` with mixed batches ``mixed``."""
    from tunewise.runtime.engine import GenRequest

    eng.mixed_adapters = mixed
    per_client = max(1, args.mixed_requests // args.clients)
    plans = [
        [
            (
                c * per_client + j,
                GenRequest(
                    [{"role": "user", "content": PROMPTS[(c + j) % len(PROMPTS)]}],
                    adapter=adapters[c % len(adapters)],
                    max_new_tokens=args.max_tokens,
                ),
            )
            for j in range(per_client)
        ]
        for c in range(args.clients)
    ]
    elapsed, lat, results = asyncio.run(_closed_loop(batcher, plans))
    lat.sort()
    tokens = sum(r.completion_tokens for r in results)
    return {
        "requests": len(results),
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(len(results) / elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "p50_s": round(lat[len(lat) // 2], 3),
        "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
        "texts": [r.text for r in results],
    }


def mixed_batches(args, ref, runs: list[Path]) -> dict:
    """Section 4 of the module docstring: one Engine, the server's batcher, four scenarios."""
    import torch

    from tunewise.runtime.engine import Engine, GenRequest
    from tunewise.serve.state import MicroBatcher

    if args.server_threads:
        torch.set_num_threads(args.server_threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    n = args.spread_adapters
    eng = Engine(ref, max_loaded_adapters=n, batch_size=args.batch_size)
    names = [f"adapter{i}" for i in range(n)]
    for name, run in zip(names, runs, strict=False):
        eng.load_adapter(name, run)
    hi = [{"role": "user", "content": "hi"}]
    eng.generate([GenRequest(hi, adapter=a, max_new_tokens=1) for a in [None, *names]])  # warm-up
    # as `tunewise serve` builds it: --batch-window-ms 10 (the load test's), max_batch 2 x batch
    batcher = MicroBatcher(eng, 0.010, 2 * args.batch_size)
    runs_ = {}
    cache = eng.prefix_cache
    # (name, mixed batches, prefix cache): today's server, the same without the prefix cache
    # (the previous state), and the old grouping per adapter without it (the first reference)
    variants = (("mixed", True, cache), ("mixed_nocache", True, None), ("grouped", False, None))
    try:
        for variant, mixed, prefix_cache in variants:
            for layout, ads in (("one", names[:1]), ("spread", names)):
                key = f"{layout}_{variant}"
                print(f"mixed batches: {key} ({args.clients} clients) ...", flush=True)
                eng.prefix_cache = prefix_cache
                if prefix_cache is not None:
                    prefix_cache.clear()  # each scenario warms its own
                r = runs_[key] = _mixed_scenario(eng, batcher, args, ads, mixed)
                print(
                    f"  {r['requests_per_s']} req/s, {r['tokens_per_s']} tok/s, "
                    f"p50 {r['p50_s']} s, p95 {r['p95_s']} s",
                    flush=True,
                )
    finally:
        batcher.close()
    return _mixed_summary(runs_, n, load_before)


def _mixed_summary(runs_: dict, n: int, load_before: list[float]) -> dict:
    """The scenarios' figures and the ratios the issue asks for."""
    texts = [runs_[f"spread_{v}"]["texts"] for v in ("mixed", "mixed_nocache", "grouped")]
    same = sum(len(set(answers)) == 1 for answers in zip(*texts, strict=True))
    for r in runs_.values():
        r.pop("texts")

    def ratio(a: str, b: str, key: str = "requests_per_s") -> float:
        return round(runs_[a][key] / runs_[b][key], 3)

    return {
        "adapters_spread_over": n,
        "cpu_flags": cpu_flags(),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "scenarios": runs_,
        "spread_vs_one_mixed": ratio("spread_mixed", "one_mixed"),
        "spread_vs_one_mixed_nocache": ratio("spread_mixed_nocache", "one_mixed_nocache"),
        "spread_vs_one_grouped": ratio("spread_grouped", "one_grouped"),
        "spread_mixed_vs_nocache": ratio("spread_mixed", "spread_mixed_nocache"),
        "one_mixed_vs_nocache": ratio("one_mixed", "one_mixed_nocache"),
        "spread_mixed_vs_grouped": ratio("spread_mixed", "spread_grouped"),
        "spread_mixed_vs_grouped_tokens": ratio("spread_mixed", "spread_grouped", "tokens_per_s"),
        "spread_p50_grouped_over_mixed": ratio("spread_grouped", "spread_mixed", "p50_s"),
        "one_mixed_vs_grouped": ratio("one_mixed", "one_grouped"),
        # the spread answers of the three variants, request by request
        "spread_answers_equal_cache_nocache_grouped": f"{same}/{runs_['spread_mixed']['requests']}",
        "spread_answers_all_equal": same == runs_["spread_mixed"]["requests"],
        "goal_spread_vs_one_mixed_ge_0_8": ratio("spread_mixed", "one_mixed") >= 0.8,
    }


def serve_and_load(args, n_adapters: int, work: Path) -> dict:
    """Start the server subprocess, warm it up, run the load test, always stop it."""
    import httpx
    import psutil

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "w")  # noqa: SIM115 (kept open for the subprocess)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunewise",
            "serve",
            "--base",
            args.base,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-loaded-adapters",
            str(n_adapters),
            "--batch-window-ms",
            "10",
            *(["--threads", str(args.server_threads)] if args.server_threads else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    try:
        t0 = time.time()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {(work / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - t0 > 180:
                raise RuntimeError("server did not start in 180 s")
            time.sleep(0.5)
        start_s = round(time.time() - t0, 1)
        models = [f"adapter{i}@production" for i in range(args.serve_adapters)] + ["base"]
        # warm-up: load every adapter once (lazy loading is not what we time)
        for m in models:
            httpx.post(
                f"{url}/v1/chat/completions",
                timeout=120,
                json={"model": m, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
            )
        print(
            f"load test: {args.requests} requests, {args.clients} clients, models {models}",
            flush=True,
        )
        load = load_test(
            url,
            models,
            args.requests,
            args.clients,
            args.max_seconds,
            args.max_tokens,
            args.bad_fraction,
        )
        load["server_rss_mb"] = round(psutil.Process(server.pid).memory_info().rss / 2**20, 1)
        load["server_alive_after"] = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    load["server_start_s"] = start_s
    return load


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=240)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument(
        "--serve-adapters", type=int, default=4, help="adapters hit by the load test (>= 4)"
    )
    ap.add_argument("--k", type=int, default=8, help="adapters for the memory comparison")
    ap.add_argument("--bad-fraction", type=float, default=0.1)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-mixed", action="store_true", help="skip the mixed-batch comparison")
    ap.add_argument(
        "--mixed-requests",
        type=int,
        default=96,
        help="requests per mixed-batch scenario (6 scenarios, split evenly over the clients)",
    )
    ap.add_argument(
        "--spread-adapters", type=int, default=8, help="adapters the spread clients use"
    )
    ap.add_argument("--batch-size", type=int, default=16, help="Engine batch size (serve's)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument(
        "--server-threads",
        type=int,
        default=1,
        help="torch threads in the server "
        "(1 avoids oversubscription on a shared CPU; 0 = torch default)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.serve_adapters < 4:
        ap.error("--serve-adapters must be at least 4")
    return args


def _load_figures(args: argparse.Namespace, ref, runs: list[Path], work: Path) -> dict:
    """The HTTP load test, and the same requests straight into one Engine for reference."""
    load = serve_and_load(args, len(runs), work)
    n_ref = min(64, args.requests)
    print(f"reference: {n_ref} requests straight into Engine.generate (no HTTP) ...", flush=True)
    direct = direct_reference(args, ref, runs, n_ref)
    return {
        "load": load,
        "direct_engine": direct,
        "server_vs_direct_same_concurrency": round(
            load["ok_per_s"] / direct["batches_of_clients_ok_per_s"], 3
        ),
        "server_vs_direct_one_big_batch": round(load["ok_per_s"] / direct["one_call_ok_per_s"], 3),
    }


def main() -> int:
    args = _args()
    from tunewise.export.vllm import export_merged
    from tunewise.registry.store import Registry
    from tunewise.runtime.models import resolve

    work = Path(tempfile.mkdtemp(prefix="tw-serve-load-"))
    os.environ["TUNEWISE_HOME"] = str(work / "home")  # a throw-away registry; models stay shared
    ref = resolve(args.base)
    n_adapters = max(args.k, args.serve_adapters, 0 if args.skip_mixed else args.spread_adapters)
    print(f"building {n_adapters} random LoRA adapters (r=8, q/v) on {ref.name} ...", flush=True)
    runs = make_adapters(ref, work / "runs", n_adapters)
    reg = Registry()
    for run in runs:
        v = reg.add(run)
        reg.promote(v.name, v.version, force=True, reason="load test")

    figures: dict = {
        "base": ref.name,
        "cpus": os.cpu_count(),
        "server_threads": args.server_threads,
        "load_average_at_start": round(os.getloadavg()[0], 1),
    }
    if not args.skip_load:
        figures.update(_load_figures(args, ref, runs, work))
    if not args.skip_mixed:
        figures["mixed_batches"] = mixed_batches(args, ref, runs)
    if not args.skip_memory:
        print(f"memory: one base + {args.k} adapters vs {args.k} merged copies ...", flush=True)
        merged = export_merged(f"{runs[0].name}:1", work / "merged")["out"]
        figures["memory"] = measure_memory(args.base, runs, Path(merged), args.k)

    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = True
    if "load" in figures:
        ok = figures["load"]["server_errors_5xx"] == 0 and figures["load"]["server_alive_after"]
    if "memory" in figures:
        ok = ok and figures["memory"]["k_adapters_vs_one_base"] <= 1.2
    if "mixed_batches" in figures:
        mixed = figures["mixed_batches"]
        ok = ok and mixed["spread_answers_all_equal"] and mixed["goal_spread_vs_one_mixed_ge_0_8"]
    print("PASS" if ok else "FAIL")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)  # adapters, registry and a 0.5 GB merged copy
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
