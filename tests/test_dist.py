"""Data-parallel training over MPI: N ranks train the model of 1 process × N-fold accumulation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from anetrain import dist
from anetrain.cli import Stopped
from anetrain.formats import checkpoint
from anetrain.formats.data import WindowSampler

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--quiet", "--threads", "1", "--seed", "3"]
LAUNCH_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _env() -> dict[str, str]:
    """This checkout's package first; mpirun may run as root in CI containers."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _mpirun_or_skip() -> str:
    """mpirun and mpi4py ('anetrain[mpi]', which .ci/run installs: CI fails without them)."""
    mpirun = shutil.which("mpirun")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpirun = None
    if mpirun is None:
        if os.environ.get("CI"):
            pytest.fail("mpirun or mpi4py missing: pip install 'anetrain[mpi]'")
        pytest.skip("needs mpirun and mpi4py (pip install 'anetrain[mpi]')")
    return mpirun


def _cmd(n: int, *args: str) -> list[str]:
    return [_mpirun_or_skip(), "-n", str(n), "--oversubscribe", sys.executable, "-m", "anetrain",
            "train", *args]  # fmt: skip


def _train(*args: str, n: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = _cmd(n, *args) if n > 1 else [sys.executable, "-m", "anetrain", "train", *args]
    return subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=timeout)


def _metrics(d: Path) -> list[dict]:
    return [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]


def _same_losses(one: list[dict], two: list[dict]) -> None:
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert (a["step"], a["tokens"], a["lr"]) == (b["step"], b["tokens"], b["lr"])
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(a["loss"]), (a, b)


# --- without MPI ---------------------------------------------------------------------------------


def test_a_single_process_never_imports_mpi4py(tmp_path):
    code = ("import sys; from anetrain.train import main\n"
            f"assert main(['--model', 'tiny', '--quiet', '--steps', '2', '--out', {str(tmp_path)!r}"
            "]) == 0\nassert 'mpi4py' not in sys.modules, 'mpi4py imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True, timeout=120)


def test_a_launcher_without_mpi4py_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None; from anetrain.train import main\n"
            f"sys.exit(main(['--model', 'tiny', '--out', {str(tmp_path)!r}]))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], env={**_env(), "OMPI_COMM_WORLD_SIZE": "2"},
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "pip install 'anetrain[mpi]'" in r.stderr, r.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_ranks_share_one_global_window_sequence():
    tokens = np.arange(10_000, dtype=np.uint16)
    one = WindowSampler(tokens, 8, seed=5)
    ranks = [WindowSampler(tokens, 8, seed=5, rank=r, ranks=3) for r in range(3)]
    for _ in range(4):  # rank r takes windows r, r + 3, ...
        for s in ranks:
            np.testing.assert_array_equal(s.next()[0], one.next()[0])
    assert all(s.state() == one.state() for s in ranks)  # the same global position


class _FakeComm:
    """Two ranks' allgather, seen from rank 0: the peer's values come from a list."""

    def __init__(self, peer: list) -> None:
        self.peer = peer

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 2

    def allgather(self, value):
        return [value, self.peer.pop(0)]


def test_diverged_parameters_stop_the_run():
    flat = np.arange(16, dtype=np.float32)  # [n_params]
    same = int(__import__("zlib").crc32(flat.tobytes()))
    dist.World(_FakeComm([same])).check_same(flat, 5, "RUN")  # equal: nothing happens
    with pytest.raises(dist.DistError, match=r"RUN: the ranks' parameters diverged by step 5"):
        dist.World(_FakeComm([same ^ 1])).check_same(flat, 5, "RUN")


def test_an_error_on_another_rank_stops_this_one_with_it():
    world = dist.World(_FakeComm(["/x: no such file or dataset directory"]))
    with pytest.raises(dist.DistError, match=r"^rank 1 of 2: /x: no such file"):
        world.agree(lambda: 1)
    assert world.stopping_together  # every rank leaves here: no MPI_Abort


def test_the_ranks_meet_on_a_peer_error_or_stop_signal():
    world = dist.World(_FakeComm([((1.5, 1.0), 0, None)]))
    assert world.meet([], (2.0, 1.0)) == (3.5, 2.0)  # the global loss sum and weight
    world = dist.World(_FakeComm([((1.5, 1.0), 0, "x.bin: disk full")]))
    world.fail(dist.DistError("/y: loss is nan"))  # waits for the meeting, where rank 0's wins
    with pytest.raises(dist.DistError, match=r"^/y: loss is nan$"):
        world.meet([])
    world = dist.World(_FakeComm([((), 0, "x.bin: disk full")]))
    with pytest.raises(dist.DistError, match=r"^rank 1 of 2: x.bin: disk full$"):
        world.meet([])
    world = dist.World(_FakeComm([((), 15, None)]))
    with pytest.raises(Stopped) as stop:
        world.meet([2])  # the highest signal number: every rank exits with the same code
    assert stop.value.signum == 15 and world.stopping_together


def test_more_ane_ranks_than_anes_on_one_machine_are_refused():
    world = dist.World(_FakeComm([]))
    world.check_backend("ane")  # one rank on this machine
    world.local_size = 2
    world.check_backend("cpu")
    with pytest.raises(dist.DistError, match=r"--backend ane: 2 ranks on one machine share"):
        world.check_backend("ane")


# --- under mpirun -n 2 (loopback) ----------------------------------------------------------------


def test_two_ranks_train_like_one_process_with_double_accum(tmp_path):
    one, two, part = tmp_path / "one", tmp_path / "two", tmp_path / "part"
    common = [*TINY, "--backend", "cpu", "--lr-decay-steps", "20", "--warmup", "2"]
    r = _train(*common, "--accum", "4", "--steps", "20", "--out", str(one), n=1)
    assert r.returncode == 0, r.stderr
    # --ckpt-every 5: every rank's parameter checksum is compared 4 times (bit-identical ranks)
    r = _train(*common, "--accum", "2", "--steps", "20", "--ckpt-every", "5", "--out", str(two))
    assert r.returncode == 0, r.stderr
    _same_losses(_metrics(one), _metrics(two))
    assert checkpoint.load(two / "checkpoint.bin").state.ranks == 2
    # resumed with the same N: bit-identical to the uninterrupted run
    r = _train(*common, "--accum", "2", "--steps", "10", "--out", str(part))
    assert r.returncode == 0, r.stderr
    r = _train("--quiet", "--threads", "1", "--resume", str(part), "--steps", "20")
    assert r.returncode == 0, r.stderr
    a, b = checkpoint.load(two / "checkpoint.bin"), checkpoint.load(part / "checkpoint.bin")
    np.testing.assert_array_equal(a.params.flat, b.params.flat)
    np.testing.assert_array_equal(a.v.flat, b.v.flat)
    def same(m: dict) -> dict:  # a run's last step has a val_loss: the cut run's 10th too
        timing = ("ms", "phase_ms", "tok_s", "rss_mb", "ckpt_ms")  # measured, not computed
        return {k: v for k, v in m.items() if k not in ("val_loss", *timing)}

    assert [same(m) for m in _metrics(two)] == [same(m) for m in _metrics(part)]


def test_another_number_of_ranks_continues_and_says_so(tmp_path):
    r = _train(*TINY, "--backend", "cpu", "--steps", "3", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    r = _train("--threads", "1", "--resume", str(tmp_path), "--steps", "5", n=1)
    assert r.returncode == 0, r.stderr
    assert "trained by 2 ranks, continuing with 1" in r.stdout, r.stdout
    st = checkpoint.load(tmp_path / "checkpoint.bin").state
    assert (st.step, st.ranks, st.tokens) == (5, None, (3 * 2 + 2) * 64)


def test_two_ranks_on_the_simulator(tmp_path):
    """sim, 3 steps: 2 ranks x accum 1 train like 1 process x accum 2, the ranks' parameters
    agree at every step's checkpoint, and a resume is bit-identical."""
    one, two, part = tmp_path / "one", tmp_path / "two", tmp_path / "part"
    common = [*TINY, "--backend", "sim", "--lr-decay-steps", "3"]
    assert _train(*common, "--steps", "3", "--accum", "2", "--out", str(one), n=1).returncode == 0
    r = _train(*common, "--steps", "3", "--accum", "1", "--ckpt-every", "1", "--out", str(two))
    assert r.returncode == 0, r.stderr
    _same_losses(_metrics(one), _metrics(two))
    assert _train(*common, "--steps", "2", "--accum", "1", "--out", str(part)).returncode == 0
    r = _train("--quiet", "--threads", "1", "--resume", str(part), "--steps", "3")
    assert r.returncode == 0, r.stderr
    a, b = checkpoint.load(two / "checkpoint.bin"), checkpoint.load(part / "checkpoint.bin")
    np.testing.assert_array_equal(a.params.flat, b.params.flat)


def test_an_input_error_on_one_rank_stops_every_rank(tmp_path):
    args = [*TINY, "--backend", "cpu", "--steps", "3", "--out", str(tmp_path)]
    cmd = _cmd(1, *args)
    cmd += [":", "-n", "1", sys.executable, "-m", "anetrain", "train", *args, "--data", "/nope"]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "anetrain.train: error: rank 1 of 2: /nope: no such file" in r.stderr, r.stderr
    assert r.stderr.count("error:") == 1 and "MPI_ABORT" not in r.stderr, r.stderr  # rank 0's
    assert not (tmp_path / "checkpoint.bin").exists()


def _rank_pid(tag: str, rank: int) -> int | None:
    """The pid of a rank whose environment holds ANETRAIN_TEST_TAG=tag (Linux: from /proc)."""
    want = {f"OMPI_COMM_WORLD_RANK={rank}".encode(), f"ANETRAIN_TEST_TAG={tag}".encode()}
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and want <= set((p / "environ").read_bytes().split(b"\0")):
                return int(p.name)
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks in /proc")
def test_a_killed_rank_ends_the_run_with_the_checkpoint_intact(tmp_path):
    out, tag = tmp_path / "run", str(tmp_path)
    args = [*TINY, "--backend", "cpu", "--steps", "100000", "--ckpt-every", "20", "--out", str(out)]
    p = subprocess.Popen(_cmd(2, *args), env={**_env(), "ANETRAIN_TEST_TAG": tag},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.bin").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = _rank_pid(tag, 1)
        assert pid is not None and (out / "checkpoint.bin").exists(), "not training after 60 s"
        os.kill(pid, 9)
        t0 = time.monotonic()
        p.wait(timeout=60)
        assert p.returncode != 0 and time.monotonic() - t0 < 60
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    ck = checkpoint.load(out / "checkpoint.bin")  # intact: size and CRC checked
    assert ck.state.step % 20 == 0 and ck.state.step > 0
    r = _train("--quiet", "--threads", "1", "--resume", str(out), "--steps", str(ck.state.step + 2))
    assert r.returncode == 0, r.stderr


def _start(tag: str, *args: str, n: int = 2) -> subprocess.Popen:
    env = {**_env(), "ANETRAIN_TEST_TAG": tag}
    return subprocess.Popen(_cmd(n, *args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for_lines(p: subprocess.Popen, path: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"not training after 60 s: {p.poll()}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks in /proc")
def test_sigterm_stops_every_rank_at_one_step_and_resumes_bit_identically(tmp_path):
    out, whole, tag = tmp_path / "run", tmp_path / "whole", str(tmp_path)
    common = [*TINY, "--backend", "cpu", "--lr-decay-steps", "1000", "--warmup", "2"]
    p = _start(tag, *common, "--steps", "100000", "--ckpt-every", "1000", "--out", str(out))
    try:
        _wait_for_lines(p, out / "metrics.jsonl", 3)
        pids = [_rank_pid(tag, r) for r in range(2)]
        assert None not in pids
        for pid in pids:  # what mpirun does on a SIGTERM of its own (then it kills them)
            os.kill(pid, 15)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143, err  # mpirun passes on the ranks' 128 + SIGTERM
    assert err.count("interrupted (SIGTERM): saving the checkpoint") == 1, err  # rank 0's
    assert "MPI_ABORT" not in err and "error" not in err, err
    step = _metrics(out)[-1]["step"]
    assert checkpoint.load(out / "checkpoint.bin").state.step == step
    r = _train("--quiet", "--threads", "1", "--resume", str(out), "--steps", str(step + 2))
    assert r.returncode == 0, r.stderr
    r = _train(*common, "--steps", str(step + 2), "--out", str(whole))
    assert r.returncode == 0, r.stderr
    a, b = checkpoint.load(whole / "checkpoint.bin"), checkpoint.load(out / "checkpoint.bin")
    np.testing.assert_array_equal(a.params.flat, b.params.flat)
    np.testing.assert_array_equal(a.m.flat, b.m.flat)
    assert [m["loss"] for m in _metrics(whole)] == [m["loss"] for m in _metrics(out)]


def test_bench_dist_under_two_ranks():
    cmd = [_mpirun_or_skip(), "-n", "2", "--oversubscribe", sys.executable, "-m", "anetrain.bench",
           "dist", "--buffers", "tiny", "--model", "tiny", "--accum", "1", "--reps", "1",
           "--threads", "1"]  # fmt: skip
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("all-reduce of the fp32 gradient buffer over 2 ranks") == 1, r.stdout
    assert "2 ranks x --accum 1" in r.stdout and "1 rank  x --accum 2" in r.stdout, r.stdout
    for link in ("10 GbE", "Thunderbolt 5"):
        assert link in r.stdout and "8 Macs" in r.stdout, r.stdout


def test_ring_allreduce_cost_model():
    from anetrain.bench.dist import ring_allreduce_s

    assert ring_allreduce_s(2, 10**9, 1e9, 0.0) == 1.0  # half the buffer each way
    assert ring_allreduce_s(4, 4 * 10**9, 1e9, 1e-3) == pytest.approx(6.0 + 6e-3)


def test_ranks_on_one_machine_share_its_cores(monkeypatch):
    """Under mpirun each rank's default threads (BLAS, C ops, dW workers) are its share of the
    machine's cores, not all of them: two ranks on 2 cores would otherwise run 4 BLAS threads."""
    from anetrain import dist
    from anetrain.config import default_threads

    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_SIZE", raising=False)
    monkeypatch.delenv("MPI_LOCALNRANKS", raising=False)
    assert dist.cores_per_rank() == default_threads()
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")
    assert dist.cores_per_rank() == max(1, default_threads() // 2)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", str(4 * default_threads()))
    assert dist.cores_per_rank() == 1


def test_two_ranks_train_lora_with_dropout_like_one_process(tmp_path):
    """LoRA over a frozen base, with dropout: 2 ranks x accum 1 train like 1 process x accum 2
    (the adapter gradients are all-reduced; a window's dropout masks do not depend on the rank
    that trains it), the ranks' adapters agree at every checkpoint, the base stays frozen."""
    base, one, two = tmp_path / "base", tmp_path / "one", tmp_path / "two"
    assert _train(*TINY, "--backend", "cpu", "--steps", "2", "--out", str(base), n=1)\
        .returncode == 0  # fmt: skip
    common = [*TINY, "--backend", "cpu", "--init", str(base), "--lora-rank", "4",
              "--lora-targets", "q,v,down", "--lora-dropout", "0.1", "--lr", "1e-2"]  # fmt: skip
    r = _train(*common, "--steps", "4", "--accum", "2", "--out", str(one), n=1)
    assert r.returncode == 0, r.stderr
    r = _train(*common, "--steps", "4", "--accum", "1", "--ckpt-every", "1", "--out", str(two))
    assert r.returncode == 0, r.stderr
    _same_losses(_metrics(one), _metrics(two))
    a, b = checkpoint.load(one / "checkpoint.bin"), checkpoint.load(two / "checkpoint.bin")
    np.testing.assert_allclose(a.lora.flat, b.lora.flat, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(a.params.flat, b.params.flat)  # the frozen base
