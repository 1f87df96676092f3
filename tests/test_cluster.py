"""cluster.yaml passes Ray's own schema; jobs/*.py run under `ray job submit` on a real Ray head."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import ray
import yaml
from PIL import Image

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert any("g5" in t["node_config"]["InstanceType"] for t in types.values())
    assert any("pip install -e" in c for c in config["setup_commands"])


def test_ray_job_submit_compress(tmp_path, photos):
    src = tmp_path / "in"
    src.mkdir()
    for name, arr in photos.items():
        Image.fromarray(arr).save(src / f"{name}.png")
    bin_dir = Path(sys.executable).parent
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    temp = tempfile.mkdtemp(prefix="aej", dir="/tmp")
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         # its own agent port: a session Ray of other tests (ray_local) holds the default 52365
         f"--dashboard-agent-listen-port={free_port()}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except OSError:
                assert time.time() < deadline, "Ray head did not start"
                assert head.poll() is None, "ray start exited"
                time.sleep(1)
        out = tmp_path / "latents"
        while True:  # the job server answers before its agent registers: retry only that refusal
            result = subprocess.run(
                [str(bin_dir / "ray"), "job", "submit", f"--address={address}", "--working-dir", str(ROOT), "--",
                 "python", "jobs/compress.py", "--input", str(src), "--output", str(out)],
                env=env, capture_output=True, text=True, timeout=400)
            if "No available agent" not in result.stderr or time.time() > deadline:
                break
            time.sleep(2)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert re.search(r"Job '\S+' succeeded", re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)), result.stdout
        assert "compress: 3 written, 0 failed" in result.stdout
        assert pq.read_table(out / "latents-00000.parquet").num_rows == 3
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)


def test_two_node_cluster_spreads_model_actors_over_both_nodes(tmp_path, photos):
    """ray.cluster_utils.Cluster with two nodes (own process, own temp dir): the compress job's
    model actors run on both nodes and every image is written once."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        for name, arr in photos.items():
            Image.fromarray(arr).save(src / f"{name}-{i}.png")
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "two_node_job.py"), str(src), str(tmp_path / "lat"),
                           temp_dir], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2 and (result["written"], result["failed"]) == (9, 0)
    assert len(result["actor_nodes"]) == 2, result
    assert pq.read_table(tmp_path / "lat" / "latents-00000.parquet").num_rows == 9
