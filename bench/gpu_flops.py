"""Achieved text-tower TFLOP/s of `promptclimb bench scorer --json` rows against the card's peak.

FLOPs are those of encoding each filled text's real tokens (no padding, no prefix sharing):
2 x (non-embedding parameters of the text tower) per token, plus attention 4 x L^2 x width per
layer (Q.K^T and attention x V) for a text of L tokens. Work that truncation or prefix sharing
skips is therefore *not* counted as achieved; the baseline row counts its 77-token padding too
(that is the work it really does).

Usage: python bench/gpu_flops.py ROWS.jsonl [GPU name]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "V100": 125.0}


def tower_flops(model_name: str, templates: list[str], classes: list[str]) -> tuple[float, float]:
    """(FLOPs of the real tokens, FLOPs at full 77-token context) for these templates x classes."""
    import open_clip

    cfg = open_clip.get_model_config(model_name)["text_cfg"]
    width, layers = cfg["width"], cfg["layers"]
    context = cfg.get("context_length", 77)
    params = layers * 12 * width * width  # attention 4 w^2 + MLP 8 w^2 per block
    tok = open_clip.get_tokenizer(model_name)
    lengths = (tok([t.replace("{}", c) for t in templates for c in classes]) != 0).sum(dim=1).tolist()

    def f(length: int) -> float:
        return 2 * params * length + 4 * length * length * width * layers

    return float(sum(f(n) for n in lengths)), float(len(lengths) * f(context))


def main() -> int:
    """Print TFLOP/s per row."""
    from promptclimb.bench.scorer import _classes, _templates

    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]
    gpu = sys.argv[2] if len(sys.argv) > 2 else ""
    peak = next((v for k, v in PEAKS.items() if k in gpu), None)
    print(f"GPU: {gpu or 'unknown'}  bf16 dense peak: {peak or '?'} TFLOP/s")
    for r in rows:
        real, _full = tower_flops(r["backbone"], _templates()[: r["fast_ran"]], _classes(r["classes"]))
        fast = real * r["fast_tps"] / r["fast_ran"] / 1e12
        _, base_full = tower_flops(r["backbone"], _templates()[:1], _classes(r["classes"]))
        base = base_full * r["baseline_tps"] / 1e12
        pct = f" = {100 * fast / peak:.1f}% of peak" if peak else ""
        print(
            f"{r['backbone']:9} {r['precision']} C={r['classes']} T={r['templates']}: "
            f"fast {r['fast_tps']:.1f} t/s, {fast:.1f} TFLOP/s useful{pct}; "
            f"baseline {r['baseline_tps']:.2f} t/s, {base:.1f} TFLOP/s incl. padding"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
