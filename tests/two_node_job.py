"""Run by tests/test_cluster.py in its own process: a compress job on a two-node
ray.cluster_utils.Cluster; prints JSON with the job's counts and the nodes its model actors ran on."""

import json
import sys
import time

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from aeflow import pipeline


def main(src: str, out: str, temp_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "temp_dir": temp_dir})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        cluster.wait_for_nodes()
        summary = pipeline.compress(pipeline.JobConfig(input=src, output=out, concurrency=2, batch_size=2))
        for _ in range(20):  # the state API fills in an actor's node shortly after it starts
            actors = [a for a in list_actors(limit=1000) if "EncodeImages" in a.class_name]
            if actors and all(a.node_id for a in actors):
                break
            time.sleep(0.5)
        print(json.dumps({"nodes": len(ray.nodes()), "written": summary.written, "failed": summary.failed,
                          "actor_nodes": sorted({a.node_id for a in actors if a.node_id}),
                          "actors": [(a.state, (a.node_id or "")[:6], a.pid) for a in actors]}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
