"""What a container image costs at submit: hashing it once, then reading the cached digest.

    python benchmarks/bench_container.py [GiB]

Writes a GiB-sized stand-in image under $TMPDIR (real images are 1.5-13 GB), then times
hpcgen.pipeline.container.describe() cold (sha256 of the whole file, page cache dropped where
possible) and warm (cache hit: one stat and a small JSON read).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpcgen.config.schema import Container
from hpcgen.pipeline.container import describe


def main() -> None:
    gib = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        image = Path(tmp) / "hpcgen.sif"
        block = os.urandom(64 << 20)
        with open(image, "wb") as fh:
            for _ in range(int(gib * 16)):
                fh.write(block)
        size = image.stat().st_size
        dropped = subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"],
                                 capture_output=True).returncode == 0
        spec = Container(image=str(image))
        t0 = time.perf_counter()
        cold = describe(spec)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(100):
            warm = describe(spec)
        t_warm = (time.perf_counter() - t0) / 100
        assert warm["sha256"] == cold["sha256"]
        print(json.dumps({
            "image_bytes": size, "page_cache_dropped": dropped,
            "first_submit_s": round(t_cold, 2), "hash_MB_per_s": round(size / t_cold / 1e6),
            "later_submits_ms": round(t_warm * 1000, 2),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        }, indent=1))


if __name__ == "__main__":
    main()
