"""tunewise's Engine against llama.cpp on the same CPU: the same greedy answers, and how fast.

People run small models on laptops through llama.cpp or Ollama, so its speed is the one a tunewise
user compares against. This bench loads ``tunewise export gguf`` output (f16, q8_0) of the demo's
fine-tune and the embedded base model's own GGUF into llama.cpp (``llama-cpp-python``), answers
the demo's validation tickets greedily with both llama.cpp and tunewise's Engine (the same prompt
token ids for both), counts equal answers, and times generation one request at a time, the two
interleaved prompt by prompt so that a noisy machine slows both alike. The Engine's batched
throughput (``batch_size`` 16) is printed beside it: a server batches, llama.cpp's single stream
does not.

``llama-cpp-python`` has no wheel for this platform; it is built once from its PyPI sdist (cmake
and a C++ compiler; ~15 min on 2 cores) and the wheel cached outside the repository. It is not a
tunewise dependency and ``make test`` never needs it::

    CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip wheel --no-deps --no-binary llama-cpp-python \\
        llama-cpp-python -w ~/.cache/tunewise-bench/wheels
    .venv/bin/pip install --no-deps --no-index --find-links ~/.cache/tunewise-bench/wheels \\
        llama-cpp-python && .venv/bin/pip install diskcache
    TUNEWISE_MODELS=/tmp/tw-test-models .venv/bin/python bench/llamacpp_compare.py --steps 30

Both sides use every core the machine has (torch's threads; llama.cpp ``n_threads``), fp32 in
torch. Greedy on both sides: llama.cpp with ``top_k=1``, no repetition penalty.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def _gguf_bench() -> Any:
    """bench/gguf_export.py as a module: its demo training and validation prompts."""
    spec = importlib.util.spec_from_file_location("gguf_export_bench", BENCH / "gguf_export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return " ".join(sorted(set(re.findall(r"avx512[a-z_]*|avx2|amx[a-z_]*", text))))


def llama_answer(llm: Any, prompt: list[int], eos: frozenset[int], max_new: int) -> list[int]:
    """Greedy tokens from llama.cpp for ``prompt``, its KV cache cleared first (no prefix reuse
    across requests: the Engine does not keep one either)."""
    llm.reset()
    out: list[int] = []
    for tok in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        out.append(int(tok))
        if tok in eos or len(out) >= max_new:
            break
    return out


def compare(
    engine: Any,
    adapter: str | None,
    gguf: Path,
    convs: list[list[dict[str, str]]],
    max_new: int,
    threads: int,
) -> dict[str, Any]:
    """Answers and timings of the Engine (``adapter`` on) and llama.cpp (``gguf``), per prompt."""
    from llama_cpp import Llama

    from tunewise.runtime.engine import GenRequest

    llm = Llama(
        model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    prompts = engine.encode([engine.render(c) for c in convs])
    eos = engine.eos_ids
    same, eng_s, eng_tok, lc_s, lc_tok, differ = 0, 0.0, 0, 0.0, 0, []
    for i, (conv, ids) in enumerate(zip(convs, prompts, strict=True)):
        req = GenRequest(messages=conv, adapter=adapter, max_new_tokens=max_new)
        order = ("engine", "llama") if i % 2 == 0 else ("llama", "engine")
        for side in order:
            t0 = time.perf_counter()
            if side == "engine":
                res = engine.generate([req])[0]
                eng_s += time.perf_counter() - t0
                eng_tok += res.completion_tokens
                eng_text = res.text
            else:
                toks = llama_answer(llm, ids, eos, max_new)
                lc_s += time.perf_counter() - t0
                lc_tok += len(toks)
                lc_text = engine.decode([t for t in toks if t not in eos])
        if lc_text == eng_text:
            same += 1
        elif len(differ) < 3:
            differ.append([eng_text, lc_text])
    t0 = time.perf_counter()
    batched = engine.generate(
        [GenRequest(messages=c, adapter=adapter, max_new_tokens=max_new) for c in convs]
    )
    batch_s = time.perf_counter() - t0
    del llm
    return {
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "n": len(convs),
        "same_answers": same,
        "engine_tok_s": eng_tok / eng_s,
        "llama_tok_s": lc_tok / lc_s,
        "engine_batch_tok_s": sum(r.completion_tokens for r in batched) / batch_s,
        "engine_tokens": eng_tok,
        "llama_tokens": lc_tok,
        "prompt_tokens_mean": sum(len(p) for p in prompts) / len(prompts),
        "differing": differ,
    }


def export(spec: str, work: Path, quants: list[str]) -> dict[str, Path]:
    from tunewise.export.gguf import export_gguf

    return {
        q: Path(export_gguf(spec, work / q / f"demo-{q}.gguf", quant=q, force=True)["out"])
        for q in quants
    }


def main() -> None:
    gb = _gguf_bench()
    ap = gb.demo_arguments(__doc__, quants="f16,q8_0", work=Path("/tmp/tw-llamacpp-bench"))
    args = ap.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        sys.exit("llama-cpp-python is not installed: see this script's docstring to build it")
    import torch

    from tunewise.registry.store import Registry
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import DEFAULT_MODEL, EMBEDDED, resolve

    started = time.time()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    if args.spec is None:
        os.environ["TUNEWISE_HOME"] = str(args.work / "home")
        spec = gb.train_demo(args.work, args.steps)
    else:
        spec = args.spec
    files = export(spec, args.work, args.quants.split(","))
    version = Registry().resolve(spec)
    threads = torch.get_num_threads()
    engine = Engine(resolve(), batch_size=16, cache=None)
    engine.load_adapter("demo", version.weights_dir, base_hash=version.base_weight_hash)
    convs, _ = gb.val_conversations(args.items)
    rows = []
    for quant, path in files.items():
        rows.append(
            {"model": f"fine-tune, GGUF {quant}"}
            | compare(engine, "demo", path, convs, args.max_new_tokens, threads)
        )
    embedded = EMBEDDED[DEFAULT_MODEL]
    base_gguf = Path(importlib.util.find_spec(embedded.package).origin).parent / embedded.gguf_file
    rows.append(
        {"model": f"base, {embedded.gguf_file}"}
        | compare(engine, None, base_gguf, convs, args.max_new_tokens, threads)
    )
    load = os.getloadavg()
    print(
        f"\n{spec}: {len(convs)} demo validation tickets, greedy, <= {args.max_new_tokens} new "
        f"tokens, {threads} threads each; CPU: {cpu_flags()}; load {load[0]:.1f}"
    )
    print(
        f"{'model':<44} {'same':>7} {'Engine tok/s':>13} {'llama.cpp tok/s':>16} "
        f"{'llama/Engine':>13} {'Engine batch16':>15}"
    )
    for r in rows:
        print(
            f"{r['model']:<44} {r['same_answers']:>3}/{r['n']:<3} {r['engine_tok_s']:>13.1f} "
            f"{r['llama_tok_s']:>16.1f} {r['llama_tok_s'] / r['engine_tok_s']:>12.2f}x "
            f"{r['engine_batch_tok_s']:>15.1f}"
        )
    print(f"wall {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"spec": spec, "cpu": cpu_flags(), "threads": threads, "load": load, "rows": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
