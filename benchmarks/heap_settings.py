"""Per-image CPU and page faults of a model with glibc's default heap settings and with aeflow.pipeline.runtime's
(its mallopt settings, and in the process's environment ONE_ARENA, as the model actors get it), in a
process's main thread and in a worker thread (where the model actors run their calls). Each case runs in
a fresh process, alternating, `--rounds` times. Prints JSON.

    python benchmarks/heap_settings.py [--task decompress|compress|restore] [--images 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from aeflow.pipeline import runtime

ONE = """
import json, resource, sys, threading, time
import numpy as np, torch
from skimage import data
from aeflow import codec, images, modelstore, restoration
from aeflow.pipeline import runtime
task, where, settings, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if settings == "aeflow":
    runtime.keep_freed_memory()
torch.set_num_threads(1)
img = np.ascontiguousarray(data.astronaut()[:384, :512])
loaded = modelstore.load_model("denoise-default" if task == "restore" else "codec-default")
out = {}

def run():
    with torch.inference_mode():
        if task == "restore":
            x = images.to_tensor(img)[None]
            work = lambda: images.to_uint8(restoration.restore(loaded.module, x, 10.0)[0])
        elif task == "decompress":
            stream = codec.encode_images(loaded, [img])[0]
            work = lambda: codec.decode_bitstream(loaded, stream)
        else:
            work = lambda: codec.encode_images(loaded, [img])
        for _ in range(4):  # the heap reaches its working size
            work()
        faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.thread_time()
        for _ in range(n):
            work()
        out["cpu_ms"] = round((time.thread_time() - cpu) / n * 1e3, 1)
        out["faults"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n)

if where == "main":
    run()
else:
    t = threading.Thread(target=run)
    t.start()
    t.join()
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="decompress", choices=["decompress", "compress", "restore"])
    parser.add_argument("--images", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for where in ("main", "thread"):
            for settings in ("glibc", "aeflow") if r % 2 == 0 else ("aeflow", "glibc"):
                env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
                if settings == "aeflow":
                    env.update(runtime.ONE_ARENA)
                proc = subprocess.run([sys.executable, "-c", ONE, args.task, where, settings, str(args.images)],
                                      capture_output=True, text=True, check=True, env=env)
                results.setdefault(f"{where}/{settings}", []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps({"task": args.task, "image": "512x384", "torch_threads": 1, "images_per_run": args.images,
                      "cpu_ms_per_image": {k: [r["cpu_ms"] for r in runs] for k, runs in results.items()},
                      "faults_per_image": {k: [r["faults"] for r in runs] for k, runs in results.items()}},
                     indent=1))


if __name__ == "__main__":
    main()
