"""predict from 4 threads on one model: per-thread replicas (what neuronet does) against one lock.

Each setting runs in its own process, alternating, ROUNDS times; prints predictions/s per setting.

    python benchmarks/bench_predict_threads.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

THREADS, CALLS, BATCH, ROUNDS = 4, 30, 256, 2
SRC = Path(__file__).resolve().parents[1] / "src"


def measure(setting: str) -> float:
    import numpy as np

    import neuronet as nn

    model = nn.Sequential(nn.Dense(784, 512, activation="relu"), nn.Dense(512, 256, activation="relu"),
                          nn.Dense(256, 10))
    model.build((784,))
    x = np.random.default_rng(0).random((BATCH, 784), dtype=np.float32)
    lock = threading.Lock()

    def predict():
        if setting == "lock":
            with lock:
                return model.predict(x, batch_size=BATCH)
        return model.predict(x, batch_size=BATCH)

    def work():
        for _ in range(CALLS):
            predict()

    for _ in range(3):  # warm-up, and make each thread's replica
        threads = [threading.Thread(target=predict) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    start = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return THREADS * CALLS / (time.perf_counter() - start)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(measure(sys.argv[2]))
        return
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    results: dict[str, list[float]] = {"replicas": [], "lock": []}
    for _ in range(ROUNDS):
        for setting in results:
            out = subprocess.run([sys.executable, __file__, "--child", setting], env=env, capture_output=True,
                                 text=True, timeout=600, check=True)
            results[setting].append(float(out.stdout.split()[-1]))
    for setting, values in results.items():
        print(f"{setting:9} predict calls/s: " + ", ".join(f"{v:.0f}" for v in values))
    ratios = [a / b for a, b in zip(results["replicas"], results["lock"], strict=True)]
    print("replicas / lock: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
