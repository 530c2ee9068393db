"""``promptclimb bench scorer`` and ``bench concurrency``: the scorer's speed against the paper's way.

``bench scorer`` runs, in one process on the same random-weight model and the same image
features, (a) the paper's computation written out here independently (one template at a time,
every text padded to the 77-token context, ``encode_text``, L2-normalise, argmax) and (b) the
:class:`~services.scorer.engine.ScoringEngine` exactly as the service uses it; it asserts the same
correct count per template and prints templates per second, their ratio and peak memory.

``bench concurrency`` starts a real in-process gRPC scorer and measures throughput with 1, 4 and
16 concurrent clients.

Random weights have the same FLOPs as pretrained ones; random image features are fine because
only the text side is timed, while the accuracy computation (argmax, correct counts) is real.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def add_parsers(commands: Any, services: Any) -> None:
    """Register the ``bench`` group with its ``scorer``, ``concurrency`` and ``search`` subcommands."""
    bench = commands.add_parser("bench", help="benchmarks (scorer speed against the paper's way, ...)")
    sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")

    p = sub.add_parser("scorer", help="fast path vs the paper's one-template-at-a-time scoring")
    p.add_argument("--backbones", nargs="+", default=["ViT-B-32", "ViT-B-16", "RN50"])
    p.add_argument("--classes", nargs="+", type=int, default=[10, 100, 1000])
    p.add_argument("--templates", nargs="+", type=int, default=[1, 64], help="templates per request")
    p.add_argument(
        "--baseline-texts",
        type=int,
        default=200,
        help="cap on texts the baseline encodes per (backbone, classes): it runs "
        "max(1, this // classes) templates (its per-template speed does not depend on the request)",
    )
    p.add_argument(
        "--fast-texts",
        type=int,
        default=6400,
        help="cap on texts per fast-path request: a row of T templates runs min(T, max(1, this // classes))",
    )
    p.add_argument("--images", type=int, default=1000, help="image features per dataset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--prefix", choices=["on", "off", "both"], default="both", help="prefix sharing in the fast path"
    )
    p.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each path once on other templates before timing it (steady state, not first-call costs)",
    )
    p.add_argument("--quick", action="store_true", help="small grid: ViT-B-32, 10 and 100 classes")
    p.add_argument("--json", help="append one JSON line per row to this file")
    p.set_defaults(func=run_scorer)

    c = sub.add_parser("concurrency", help="scorer throughput at 1, 4 and 16 concurrent gRPC clients")
    c.add_argument("--model", default="tiny", help="'tiny' (random test config) or an open_clip name")
    c.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    c.add_argument("--classes", type=int, default=10)
    c.add_argument("--templates-per-request", type=int, default=1)
    c.add_argument("--seconds", type=float, default=8.0, help="duration of each measurement")
    c.add_argument("--batch-wait-ms", type=float, help="engine batch wait (default: the service's)")
    c.add_argument("--threads", type=int)
    c.set_defaults(func=run_concurrency)

    from promptclimb.bench.search import add_parser as add_search_bench

    add_search_bench(sub)


# ---- memory ------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak extra memory of a block: sampled RSS on CPU, the allocator's peak on CUDA.

    tracemalloc would see only Python objects, not torch's tensors, so RSS is sampled every
    2 ms from a thread (torch releases the GIL while it computes) and the peak above the RSS at
    entry is reported.
    """

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self._base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._base = _rss_bytes()
            self._max = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss_bytes()) - self._base


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---- the paper's way -----------------------------------------------------------------------------
def paper_counts(
    model: Any,
    tokenizer: Any,
    templates: Sequence[str],
    class_names: Sequence[str],
    image_features: Any,
    labels: Any,
    device: str,
) -> list[int]:
    """Correct counts per template, computed as the paper's code does.

    One template at a time: fill the slot with every class name, tokenize at the full 77-token
    context, ``encode_text``, L2-normalise, cosine similarity with the normalised image features,
    argmax.
    """
    import torch

    counts = []
    with torch.no_grad():
        for template in templates:
            texts = [template.replace("{}", c) for c in class_names]
            emb = model.encode_text(tokenizer(texts).to(device)).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            pred = (image_features @ emb.T).argmax(dim=-1)
            counts.append(int((pred == labels).sum()))
    return counts


# ---- the grid ------------------------------------------------------------------------------------
@dataclass
class Row:
    """One measured row of the grid."""

    backbone: str
    classes: int
    templates: int  # templates per request in the grid
    fast_ran: int  # templates the fast-path request actually held
    baseline_ran: int
    baseline_tps: float
    baseline_mem: int
    fast_tps: float
    fast_mem: int
    cached_tps: float
    fast_noprefix_tps: float | None = None
    compared: int = 0
    mismatches: list[int] = field(default_factory=list)

    def line(self) -> str:
        """The printed row."""
        mb = 2**20
        noprefix = "" if self.fast_noprefix_tps is None else f"{self.fast_noprefix_tps:9.2f}"
        return (
            f"{self.backbone:9} {self.classes:5} {self.templates:3} "
            f"({self.fast_ran:2}/{self.baseline_ran:2}) "
            f"{self.baseline_tps:9.3f} {self.fast_tps:9.2f} {noprefix:>9} {self.cached_tps:10.1f} "
            f"{self.fast_tps / self.baseline_tps:7.1f}x {self.cached_tps / self.baseline_tps:9.0f}x "
            f"{self.baseline_mem / mb:7.0f} {self.fast_mem / mb:7.0f}  "
            f"{'same' if not self.mismatches else 'DIFF ' + str(self.mismatches)} ({self.compared})"
        )


HEADER = (
    "backbone  class   T (ran fast/base) base t/s  fast t/s  noprefix  cached t/s   fast/b  cached/b"
    "  baseMB  fastMB  counts (templates compared)"
)


def _templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [f("{}") for f in OPENAI_IMAGENET_TEMPLATES]


def _classes(n: int) -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    return names[:: max(1, len(names) // n)][:n]


async def bench_scorer(args: argparse.Namespace) -> list[Row]:
    """Run the grid; returns the rows (also printed as they finish)."""
    import json
    from pathlib import Path

    import open_clip
    import torch

    from services.scorer.engine import ScoringEngine
    from services.scorer.settings import ScorerSettings

    if args.quick:
        args.backbones, args.classes = ["ViT-B-32"], [10, 100]
        args.baseline_texts, args.fast_texts = min(args.baseline_texts, 100), min(args.fast_texts, 1600)
    pool = _templates()
    rows: list[Row] = []
    print(
        f"device={args.device} precision={args.precision} threads={torch.get_num_threads()} "
        f"images={args.images} prefix={args.prefix}",
        flush=True,
    )
    print(HEADER, flush=True)
    for backbone in args.backbones:
        settings = ScorerSettings(
            model=backbone,
            device=args.device,
            precision=args.precision,
            threads=args.threads,
            prefix_sharing="off" if args.prefix == "off" else "on",
        )
        engine = ScoringEngine(settings)
        engine.load_model()
        clip = engine.model
        assert clip is not None
        tokenizer = open_clip.get_tokenizer(backbone)
        gen = torch.Generator().manual_seed(0)
        for n_classes in args.classes:
            names = _classes(n_classes)
            feats = torch.randn(args.images, clip.embed_dim, generator=gen)
            labels = torch.randint(0, n_classes, (args.images,), generator=gen)
            dataset = f"bench-{n_classes}"
            engine.register_features(dataset, names, "train", feats, labels)
            img = torch.nn.functional.normalize(feats, dim=-1).to(args.device)
            lab = labels.to(args.device)
            n_base = max(1, min(max(args.templates), args.baseline_texts // n_classes, len(pool)))
            if args.warmup:
                # Both paths pay one-time costs (kernel selection, first allocations) on a call
                # of their own, on templates outside the measured ones, before they are timed.
                paper_counts(clip.model, tokenizer, pool[-1:], names, img, lab, args.device)
                await engine.evaluate(dataset, "train", pool[-max(1, min(8, len(pool) - 1)) :])
                engine.cache.clear()
            with PeakMemory(args.device) as base_mem:
                start = time.perf_counter()
                base_counts = paper_counts(clip.model, tokenizer, pool[:n_base], names, img, lab, args.device)
                _sync(args.device)
                base_s = time.perf_counter() - start
            for n_templates in args.templates:
                n_fast = min(n_templates, max(1, args.fast_texts // n_classes), len(pool))
                templates = pool[:n_fast]
                noprefix_tps = None
                if args.prefix == "both" and clip.share_prefix:
                    clip.share_prefix = False
                    engine.cache.clear()
                    start = time.perf_counter()
                    await engine.evaluate(dataset, "train", templates)
                    _sync(args.device)
                    noprefix_tps = n_fast / (time.perf_counter() - start)
                    clip.share_prefix = True
                engine.cache.clear()  # first-time templates: nothing cached
                with PeakMemory(args.device) as fast_mem:
                    start = time.perf_counter()
                    result = await engine.evaluate(dataset, "train", templates)
                    _sync(args.device)
                    fast_s = time.perf_counter() - start
                start = time.perf_counter()
                cached = await engine.evaluate(dataset, "train", templates)  # every text cached now
                cached_s = time.perf_counter() - start
                fast_counts = [s.correct for s in result.scores]
                assert fast_counts == [s.correct for s in cached.scores]
                k = min(n_base, n_fast)
                mismatches = [i for i in range(k) if fast_counts[i] != base_counts[i]]
                row = Row(
                    backbone,
                    n_classes,
                    n_templates,
                    n_fast,
                    n_base,
                    n_base / base_s,
                    base_mem.peak,
                    n_fast / fast_s,
                    fast_mem.peak,
                    n_fast / cached_s,
                    noprefix_tps,
                    k,
                    mismatches,
                )
                rows.append(row)
                print(row.line(), flush=True)
                if args.json:
                    line = json.dumps(row.__dict__ | {"device": args.device, "precision": args.precision})
                    with Path(args.json).open("a") as f:  # noqa: ASYNC230 (one line, between runs)
                        f.write(line + "\n")
        await engine.close()
        del engine, clip
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS (getrusage maxrss): {maxrss:.0f} MiB")
    return rows


def run_scorer(args: argparse.Namespace) -> int:
    """Entry point of ``bench scorer``: 0 when every row's counts match the baseline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = asyncio.run(bench_scorer(args))
    bad = [r for r in rows if r.mismatches]
    if bad and args.precision == "fp32":
        print(f"FAILED: {len(bad)} rows differ from the baseline's correct counts")
        return 1
    if bad:
        # bf16/fp16 kernels round differently at different sequence lengths: near-ties may flip.
        print(f"note: {len(bad)} rows differ in {args.precision} (rounding at near-ties)")
    return 0


# ---- concurrency ----------------------------------------------------------------------------------
async def bench_concurrency(args: argparse.Namespace) -> dict[int, float]:
    """Templates/s through a real in-process gRPC scorer at each client count."""
    import tempfile
    from pathlib import Path

    import torch

    from promptclimb.client import ScorerClient
    from services.scorer.engine import ScoringEngine
    from services.scorer.main import build_server
    from services.scorer.settings import ScorerSettings

    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model == "tiny":
        from promptclimb.testing.tiny_clip import make_tiny_model_dir

        model = f"local-dir:{make_tiny_model_dir(Path(tmp.name))}"
    overrides: dict[str, Any] = {"metrics_port": None}
    if args.batch_wait_ms is not None:
        overrides["batch_wait_ms"] = args.batch_wait_ms
    settings = ScorerSettings(model=model, threads=args.threads, **overrides)
    engine = ScoringEngine(settings)
    engine.load_model()
    assert engine.model is not None
    names = _classes(args.classes)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(500, engine.model.embed_dim, generator=gen)
    engine.register_features(
        "bench", names, "train", feats, torch.randint(0, len(names), (500,), generator=gen)
    )
    server = build_server(settings, engine)
    port = await server.start()
    await server.set_ready(True)
    pool = _templates()
    counter = 0
    results: dict[int, float] = {}
    print(
        f"model={args.model} classes={args.classes} templates/request={args.templates_per_request} "
        f"batch_wait_ms={settings.batch_wait_ms} threads={torch.get_num_threads()}",
        flush=True,
    )
    async with ScorerClient(f"127.0.0.1:{port}") as scorer:

        def fresh() -> list[str]:
            # Never-seen templates: every request pays text encoding (no cache hits).
            nonlocal counter
            out = []
            for _ in range(args.templates_per_request):
                counter += 1
                out.append(f"{pool[counter % len(pool)]} ({counter})")
            return out

        async def client(stop: float) -> int:
            done = 0
            while time.perf_counter() < stop:
                resp = await scorer.evaluate("bench", "train", fresh(), timeout=60)
                assert all(not s.HasField("error") for s in resp.scores)
                done += len(resp.scores)
            return done

        await client(time.perf_counter() + 1.0)  # warm-up
        for n in args.clients:
            batches = engine.batches
            start = time.perf_counter()
            counts = await asyncio.gather(*(client(start + args.seconds) for _ in range(n)))
            elapsed = time.perf_counter() - start
            results[n] = sum(counts) / elapsed
            print(
                f"clients={n:3}  templates/s={results[n]:9.1f}  text passes={engine.batches - batches:5}  "
                f"templates/pass={sum(counts) / max(1, engine.batches - batches):6.1f}",
                flush=True,
            )
    await engine.close()
    await server.stop(0)
    tmp.cleanup()
    lo, hi = min(args.clients), max(args.clients)
    print(f"ratio {hi} vs {lo} clients: {results[hi] / results[lo]:.2f}x", flush=True)
    return results


def run_concurrency(args: argparse.Namespace) -> int:
    """Entry point of ``bench concurrency``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(bench_concurrency(args))
    return 0
