"""Storage benchmark: activation write/read throughput, measured side by side in one run.

    python bench/bench_storage.py [--rows 20000] [--hidden 576] [--layers 4]

Prints MB/s for float32 vs float16 and uncompressed vs zstd, and the ratios between them.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from storage import ActivationReader, ActivationWriter


def run(
    root: str, rows: int, hidden: int, layers: int, dtype: str, compression: str | None
) -> tuple[float, float, int]:
    rng = np.random.default_rng(0)
    block = rng.standard_normal((1000, hidden)).astype(np.float32) * 60
    uri = f"{root}/act-{dtype}-{compression}.parquet"
    t0 = time.perf_counter()
    with ActivationWriter(None, uri, dtype=dtype, row_group_rows=2048, compression=compression) as w:
        for start in range(0, rows, 1000):
            n = min(1000, rows - start)
            ids = [f"p{start + i}" for i in range(n)]
            for layer in range(layers):
                w.write(layer, block[:n], ids, "chosen", 32)
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ActivationReader(None, uri) as r:
        loaded = sum(r.load_layer(layer).values.shape[0] for layer in r.layers)
    assert loaded == rows * layers
    t_read = time.perf_counter() - t0
    assert w.result is not None
    return t_write, t_read, w.result.size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    raw_mb = a.rows * a.hidden * a.layers * 4 / 1e6
    with tempfile.TemporaryDirectory() as root:
        results = {}
        for dtype in ("float32", "float16"):
            for comp in (None, "zstd"):
                results[(dtype, comp)] = run(root, a.rows, a.hidden, a.layers, dtype, comp)
    print(f"{a.rows} rows x {a.layers} layers x hidden {a.hidden} ({raw_mb:.0f} MB as float32)")
    for (dtype, comp), (tw, tr, size) in results.items():
        print(
            f"{dtype:8s} {str(comp):5s} write {raw_mb / tw:7.1f} MB/s  read {raw_mb / tr:7.1f} MB/s  file {size / 1e6:7.1f} MB"
        )
    base = results[("float32", None)]
    for key, (tw, tr, size) in results.items():
        if key != ("float32", None):
            print(
                f"{key} vs float32/none: write x{base[0] / tw:.2f}, read x{base[1] / tr:.2f}, size x{size / base[2]:.2f}"
            )


if __name__ == "__main__":
    main()
