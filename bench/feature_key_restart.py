"""What a scorer restart spends finding a split's feature-cache key: every file hashed vs the memo.

Writes an ImageFolder of ``--files`` files of ``--kb`` KiB each (random bytes under .png names:
the key hashes bytes, it never decodes them; 110 KiB is ImageNet's mean JPEG size), then times in
one process

- **hash all**: ``split.fingerprint()`` with no memo, what every start did before;
- **memo, first start**: with an empty :class:`~services.scorer.datasets.FileDigests` (reads every
  file once and records its digest);
- **memo, restart**: the same again (stats every file, reads none),

and checks that all three give the same key. Without ``--cold`` the files are in the page cache
after writing, so this measures hashing and system calls; with ``--cold`` (root) the page cache
is dropped before each timing, so the full hash also pays for reading every byte from the disk.

    python bench/feature_key_restart.py --files 10000 --kb 110 [--cold]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.scorer.datasets import FileDigests, load_image_folder


def main() -> int:
    """Build the folder, time the three ways, print seconds and ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--kb", type=int, default=110, help="KiB per file")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--cold", action="store_true", help="drop the page cache before each timing (root; Linux)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        for i in range(args.files):
            folder = root / "test" / f"class_{i % args.classes:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:07d}.png").write_bytes(os.urandom(args.kb * 1024))
        split = load_image_folder("bench", root).splits["test"]
        memo_file = Path(tmp) / "cache" / "file-digests.sqlite"

        def timed(memo_path: Path | None) -> tuple[float, str, int]:
            if args.cold:
                os.sync()
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            start = time.perf_counter()
            if memo_path is None:
                key, read = split.fingerprint(None), args.files
            else:
                with FileDigests(memo_path) as memo:
                    key = split.fingerprint(memo)
                read = memo.read
            return time.perf_counter() - start, key, read

        full, key_full, _ = timed(None)
        first, key_first, read_first = timed(memo_file)
        again, key_again, read_again = timed(memo_file)
    assert key_full == key_first == key_again, "the memo changed the key"
    size_gb = args.files * args.kb / 1024 / 1024
    print(f"{args.files} files x {args.kb} KiB = {size_gb:.2f} GiB, same key all three ways")
    print(f"hash all (every start before):  {full:7.2f} s  ({args.files} files read)")
    print(f"memo, first start:              {first:7.2f} s  ({read_first} files read)")
    print(f"memo, restart:                  {again:7.2f} s  ({read_again} files read)")
    print(f"restart speed-up: {full / again:.1f}x; first-start overhead: {first / full:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
