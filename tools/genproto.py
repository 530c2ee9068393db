"""Generate the Python gRPC code from protos/ (the only way it is made).

python tools/genproto.py          # write promptclimb/api/v1/*_pb2*.py
python tools/genproto.py --check  # fail if the committed code drifted from protos/
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE_DIR = Path("promptclimb/api/v1")


def generate(out: Path) -> list[Path]:
    """Run protoc for every .proto under protos/ into ``out``; return the written files."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out / PACKAGE_DIR).iterdir() if p.name.endswith((".py", ".pyi")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        drift = []
        for path in generated:
            target = ROOT / PACKAGE_DIR / path.name
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    drift.append(str(target.relative_to(ROOT)))
            else:
                target.write_bytes(path.read_bytes())
        if args.check:
            stale = {p.name for p in (ROOT / PACKAGE_DIR).glob("*_pb2*.py*")} - {p.name for p in generated}
            drift += sorted(str(PACKAGE_DIR / s) for s in stale)
            if drift:
                print("generated code drifted from protos/; run: python tools/genproto.py", file=sys.stderr)
                print("\n".join(drift), file=sys.stderr)
                return 1
            print(f"generated code matches protos/ ({len(generated)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
