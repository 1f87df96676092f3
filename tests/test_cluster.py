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

from tests.conftest import free_port, write_photos

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert any("g5" in t["node_config"]["InstanceType"] for t in types.values())
    assert any("pip install -e" in c for c in config["setup_commands"])


def test_ray_job_submit_compress(tmp_path, photos):
    src = write_photos(tmp_path / "in", photos)
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
    """ray.cluster_utils.Cluster with two 2-CPU nodes (own process, own temp dir): with the default pool
    (one actor per CPU) the compress job finishes, its model actors run on both nodes and every image is
    written once; Ray Train with four workers finishes and writes its model. Actors and workers sized for
    one free CPU in all (4 x 0.75) left half a CPU on each node and both hung."""
    src = write_photos(tmp_path / "in", {f"{name}-{i}": arr for i in range(3) for name, arr in photos.items()})
    # Ray writes the cluster's address under $RAY_TMPDIR/ray: the test's own folder, not the machine's /tmp/ray
    # (absent on a fresh machine). Short, for the Unix socket paths beneath it.
    own_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    temp_dir = os.path.join(own_tmp, "ray")
    os.makedirs(temp_dir)
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT), "RAY_TMPDIR": own_tmp}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "two_node_job.py"), str(src), str(tmp_path / "lat"),
                           temp_dir, str(tmp_path / "model")], capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2 and (result["written"], result["failed"]) == (9, 0)
    assert result["actors"] == 4 and len(result["actor_nodes"]) == 2, result
    assert pq.read_table(tmp_path / "lat" / "latents-00000.parquet").num_rows == 9
    assert result["trained_steps"] > 0 and (tmp_path / "model" / "model.safetensors").stat().st_size > 0


def _on_one_cpu(code: str, *args) -> str:
    """Run `code` (sys imported, argv = args) in a fresh process on a fresh 1-CPU Ray; its stdout. A hang
    fails at 180 s instead of holding the suite."""
    start = "import ray, sys; ray.init(address='local', num_cpus=1, logging_level='warning', log_to_driver=False)\n"
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", start + code, *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_one_cpu_machine_finishes_a_job(tmp_path, photos):
    """On a 1-CPU Ray (a small container) the model actor cannot keep a CPU of its own: the job must still
    finish rather than wait for a CPU that never frees (it hung before: a 0.25-CPU actor left 0.75)."""
    src = write_photos(tmp_path / "in", photos)
    out = _on_one_cpu("from aeflow import pipeline\n"
                      "s = pipeline.compress(pipeline.JobConfig(input=sys.argv[1], output=sys.argv[2]))\n"
                      "print(s.written, s.failed)", src, tmp_path / "lat")
    assert out.split()[-2:] == [str(len(photos)), "0"]
    assert pq.read_table(tmp_path / "lat" / "latents-00000.parquet").num_rows == len(photos)


def test_training_on_a_one_cpu_machine_finishes(tmp_path, photos):
    """Ray Train on a 1-CPU Ray: its worker's bundle cannot be all zero (0.01 CPU), so the crops dataset's
    read and decode tasks must fit in the 0.99 CPU left; at 1 CPU each they waited forever (killed at 150 s)."""
    data = write_photos(tmp_path / "data", photos)
    out = _on_one_cpu("from aeflow.training import TrainConfig, train\n"
                      "r = train(TrainConfig(task='codec', data=sys.argv[1], out=sys.argv[2], storage=sys.argv[3],\n"
                      "          epochs=1, batch_size=2, crop=32, crops_per_image=4, channels=8, latent_channels=4))\n"
                      "print('steps', r['step'])", data, tmp_path / "model", tmp_path / "ckpt")
    assert int(out.split()[-1]) > 0
    assert (tmp_path / "model" / "model.safetensors").stat().st_size > 0
