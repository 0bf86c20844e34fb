"""Data-parallel training: 2 local ranks over MLX's ring backend == one process.

1. Shards (no processes): ArraySource shards concatenate to the single-process batch;
   StreamSource / harvest shards are disjoint and cover the data.
2. Ring run: two processes on 127.0.0.1 (a hand-written ring hostfile with MLX_RANK /
   MLX_HOSTFILE, free ports; and ``mlx.launch --backend ring -n 2``) train a TopK SAE
   on the same global batches as an in-process single run; weights agree within
   ATOL (float32 summation order differs: all_sum of two half-batch means vs one mean).
   Skipped, with the reason, when the ring cannot start here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import sae  # noqa: F401  (loads the optimised BLAS before mlx)
from attribution import Site
from sae import ArraySource, StreamSource, TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
S = Site(0, "resid_post")
ATOL = 1e-5  # measured max |diff| 2.4e-7 (b_dec) after 12 steps
N, D, WIDTH, K, BATCH, STEPS = 2048, 32, 128, 8, 256, 12

WORKER = textwrap.dedent(f"""
    import json, sys
    sys.path.insert(0, {str(ROOT)!r})
    import sae  # before mlx: BLAS preload
    import mlx.core as mx
    import numpy as np
    from attribution import Site
    from sae import ArraySource, TrainConfig, train

    out = sys.argv[1]
    g = mx.distributed.init()
    ok = mx.distributed.all_sum(mx.array([1.0]), group=g).item()
    print("RING_OK", g.rank(), g.size(), ok, flush=True)
    x = np.random.default_rng(0).standard_normal(({N}, {D})).astype(np.float32)
    cfg = TrainConfig(kind="sae", arch="topk", sites=("L0.resid_post",), width={WIDTH}, k={K},
                      batch_tokens={BATCH}, total_tokens={BATCH * STEPS}, warmup_steps=2,
                      log_every=4, decoder="dense")
    res = train(ArraySource({{Site(0, "resid_post"): x}}), cfg, log_path=out + "/log.jsonl",
                checkpoint_dir=out + "/ckpt", checkpoint_every=6)
    d = res.dictionaries[0]
    mx.save_safetensors(out + f"/rank{{g.rank()}}.safetensors",
                        {{k: v for k, v in d.arrays().items()}})
    print("DONE", g.rank(), flush=True)
""")


def _data():
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)


def _cfg():
    return TrainConfig(kind="sae", arch="topk", sites=(S,), width=WIDTH, k=K, batch_tokens=BATCH,
                       total_tokens=BATCH * STEPS, warmup_steps=2, log_every=4, decoder="dense")


def test_array_shards_make_the_global_batch():
    src = ArraySource({S: _data()})
    glob = src.batches(64, 3)
    parts = [src.shard(r, 4).batches(16, 3) for r in range(4)]
    for _ in range(40):  # spans several epochs
        g = next(glob)[S]
        np.testing.assert_array_equal(np.concatenate([next(p)[S] for p in parts]), g)


def test_stream_shards_are_disjoint_and_cover():
    rows = np.arange(600, dtype=np.float32).reshape(-1, 1).repeat(2, 1)
    chunks = lambda: ({S: rows[i:i + 50]} for i in range(0, 600, 50))
    src = StreamSource(chunks, [S], {S: 2}, buffer_tokens=64, outlier_factor=None, max_passes=1)
    seen = []
    for r in range(3):
        for b in src.shard(r, 3).batches(10, 0):
            seen.append(b[S][:, 0])
    got = np.sort(np.concatenate(seen))
    assert len(np.unique(got)) == len(got)  # disjoint
    assert len(got) > 600 - 3 * 10  # each rank drops only its last partial batch
    assert src.shard(0, 1) is src


def test_cache_shards_by_file_then_by_row(tmp_path):
    from sae import ActivationCache, write_cache
    rows = np.arange(90, dtype=np.float32).reshape(-1, 1).repeat(2, 1)
    write_cache(tmp_path / "c", ({S: rows[i:i + 30]} for i in range(0, 90, 30)),
                model_id="m", model_hash="h", dims={S: 2})
    cache = ActivationCache(tmp_path / "c", outlier_factor=None)
    for world in (2, 4):  # 3 files: by file for 2 ranks, by row for 4
        parts = [np.concatenate([c[S][:, 0] for c in cache.shard(r, world).chunks()])
                 for r in range(world)]
        got = np.sort(np.concatenate(parts))
        np.testing.assert_array_equal(got, rows[:, 0])
        assert all(p.size for p in parts)
    first = next(iter(cache.shard(1, 2).chunks()))[S][:, 0]
    np.testing.assert_array_equal(first, rows[30:60, 0])  # rank 1 reads file 1 only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, how: str) -> list[subprocess.CompletedProcess] | str:
    """Run the worker on 2 ranks; returns the processes, or a skip reason."""
    (tmp_path / "worker.py").write_text(WORKER)
    py, env = sys.executable, dict(os.environ, PYTHONPATH=str(ROOT))
    cmd_tail = [py, str(tmp_path / "worker.py"), str(tmp_path)]
    try:
        if how == "hostfile":
            hosts = [[f"127.0.0.1:{_free_port()}"], [f"127.0.0.1:{_free_port()}"]]
            (tmp_path / "hosts.json").write_text(json.dumps(hosts))
            procs = [subprocess.Popen(cmd_tail, env=dict(env, MLX_RANK=str(r),
                                                         MLX_HOSTFILE=str(tmp_path / "hosts.json")),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for r in range(2)]
            outs = []
            for p in procs:
                o, e = p.communicate(timeout=600)
                outs.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
            return outs
        launcher = Path(py).with_name("mlx.launch")
        if not launcher.exists():
            return f"mlx.launch not found beside {py}"
        port = _free_port()  # the ring takes port and port+1
        r = subprocess.run([str(launcher), "--backend", "ring", "-n", "2", "-p", str(port),
                            "--", *cmd_tail], env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        return [r]
    except subprocess.TimeoutExpired:
        for p in locals().get("procs", []):
            p.kill()
        return "the 2-rank ring run did not finish within 600 s"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["hostfile", "mlx.launch"])
def test_two_ranks_match_single_process(tmp_path, how):
    runs = _launch(tmp_path, how)
    if isinstance(runs, str):
        pytest.skip(runs)
    text = "".join(r.stdout + r.stderr for r in runs)
    if text.count("RING_OK") < 2:
        pytest.skip(f"the MLX ring backend could not start here: {text[-800:]}")
    assert all(r.returncode == 0 for r in runs), text[-3000:]

    import mlx.core as mx
    single = train(ArraySource({S: _data()}), _cfg(), distributed=False).dictionaries[0]
    ref = {k: np.array(v) for k, v in single.arrays().items()}
    ranks = [mx.load(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    for k, v in ref.items():
        a0, a1 = np.array(ranks[0][k]), np.array(ranks[1][k])
        np.testing.assert_array_equal(a0, a1)  # ranks hold identical weights
        np.testing.assert_allclose(a0, v, rtol=0, atol=ATOL, err_msg=k)
    # rank 0 alone writes the log (3 intervals x 1 dictionary) and the checkpoint
    rows = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]
    meta = mx.load(str(tmp_path / "ckpt" / "checkpoint.safetensors"), return_metadata=True)[1]
    assert json.loads(meta["state"])["step"] == STEPS
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))
