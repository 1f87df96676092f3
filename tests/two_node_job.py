"""Run by tests/test_cluster.py in its own process: on a two-node ray.cluster_utils.Cluster, a compress
job with the default pool (one actor per CPU), then Ray Train with one worker per CPU; prints JSON with
the job's counts, the nodes its model actors ran on and the model training wrote."""

import json
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_workers

from aeflow import pipeline
from aeflow.training import TrainConfig, train


def main(src: str, out: str, temp_dir: str, model_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "temp_dir": temp_dir})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        cluster.wait_for_nodes()
        # actor id -> the node Ray placed it on, read while the job runs. The state API names an actor's node
        # only once it is ALIVE, and a short job may finish on the first actor to start and kill the others
        # while they still import torch; their worker processes (pid -> node) say where they were placed.
        seen: dict[str, str] = {}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                pids = {a.pid: a.actor_id for a in list_actors(limit=1000) if "EncodeImages" in a.class_name and a.pid}
                for w in list_workers(limit=10000):
                    if w.pid in pids:
                        seen[pids[w.pid]] = w.node_id
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        summary = pipeline.compress(pipeline.JobConfig(input=src, output=out, batch_size=2))
        done.set()
        watcher.join()
        trained = train(TrainConfig(task="codec", data=src, out=model_dir, storage=model_dir + "-ckpt", name="t",
                                    epochs=1, batch_size=2, crop=32, crops_per_image=4, channels=8,
                                    latent_channels=4, workers=4))
        print(json.dumps({"nodes": len(ray.nodes()), "written": summary.written, "failed": summary.failed,
                          "actors": len(seen), "actor_nodes": sorted(set(seen.values())),
                          "trained_steps": trained.get("step")}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
