"""Soak of ``python -m engine.serve`` with faults injected (issue 20; not CI).

A real server (tiny preset, 64 px, 1 step) on 127.0.0.1 takes mixed work — offline jobs (2-6 driving
frames each) submitted at a steady pace and stream sessions (16 frames each) — while faults are
injected: SIGKILL of the server every ``--kill-every`` seconds (restarted at once on the same data
folder), and the data folder's filesystem filled and freed once (a tmpfs the script mounts: root).
Clients retry what a dead or full server refused (connection errors, 503, 507, 429), as a real
client would. At the end every accepted job must reach an end state:

- **lost**: a job the server accepted (202) that it no longer knows (404) — must be 0;
- **stuck**: a job still queued/running when the server has made no progress (no job finished, no
  job's stage or frame count moved) for ``--stall`` seconds after the load ended — must be 0
  (faults stop with the load; jobs still moving when ``--grace`` runs out are reported apart, as
  ``unfinished_still_moving``: on a loaded machine that is slowness, not a defect);
- RSS of the server per incarnation (first sample after ready -> last), and p50/p95 latencies
  (job submission -> done; stream frames, server-measured).

Default scale fits ~10 minutes on a shared 2-core machine; ``--full`` is the issue's scale (300 jobs,
50 sessions). Writes ``benchmarks/results/soak_serve.json``.

    python benchmarks/soak_serve.py                 # 60 jobs, 10 sessions, SIGKILL every 60 s
    python benchmarks/soak_serve.py --full          # 300 jobs, 50 sessions
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "serve"))
from serve_support import DRIVING, SOURCE, Server, clip_frames, jpeg  # noqa: E402

from engine.serve.protocol import pack_in, unpack_out  # noqa: E402

TERMINAL = ("done", "failed")


class Soak:
    def __init__(self, args: argparse.Namespace, data: Path, disk: Path | None) -> None:
        self.args, self.data, self.disk = args, data, disk
        self.server = Server(data, ["--size", "64", "--default-steps", "1", "--max-streams", "1",
                                    "--max-queue", "1000", "--max-frames", "20", "--max-attempts", "10",
                                    "--idle-timeout", "20"])
        self.lock = threading.Lock()
        self.accepted: dict[str, float] = {}  # job id -> submission time
        self.finished: dict[str, tuple[str, float, str | None]] = {}  # id -> (state, latency s, error)
        self.refusals: dict[str, int] = {}
        self.sessions: dict[str, int] = {}
        self.frame_latency_ms: list[float] = []
        self.rss: list[tuple[float, float]] = []  # per incarnation (first, last) MiB
        self.kills = 0
        self.disk_events: list[str] = []
        self.stop = threading.Event()
        self.load_done = threading.Event()  # no more faults once the load has ended
        self.up = threading.Event()

    # -- the server and its faults ----------------------------------------------------------
    def start_server(self) -> None:
        try:
            self.server.start()
        except TimeoutError:  # a loaded machine: loading the engines can take minutes
            self.server.wait_ready(900)
        self.rss.append((self.server.rss_mib(), self.server.rss_mib()))
        self.up.set()

    def faults(self, t0: float) -> None:
        filled = False
        next_kill = t0 + self.args.kill_every
        while not self.stop.wait(1.0):
            now = time.monotonic()
            with self.lock:
                first, _ = self.rss[-1]
                try:
                    self.rss[-1] = (first, self.server.rss_mib())
                except (OSError, RuntimeError):
                    pass
            if not filled and self.disk is not None and now - t0 > self.args.fill_at:
                filled = True
                self.fill_disk()
            if now >= next_kill and not self.load_done.is_set():
                self.up.clear()
                self.server.kill(signal.SIGKILL)
                self.kills += 1
                self.start_server()
                next_kill = time.monotonic() + self.args.kill_every

    def fill_disk(self) -> None:
        assert self.disk is not None
        filler = self.disk / "filler"
        with filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        self.disk_events.append(f"filled at {time.strftime('%H:%M:%S')}")
        self.stop.wait(self.args.fill_seconds)
        filler.unlink()
        self.disk_events.append(f"freed at {time.strftime('%H:%M:%S')}")

    def count(self, what: str) -> None:
        with self.lock:
            self.refusals[what] = self.refusals.get(what, 0) + 1

    # -- load -------------------------------------------------------------------------------
    def submit_jobs(self) -> None:
        files = {"source": (SOURCE.name, SOURCE.read_bytes(), "image/png"),
                 "driving": (DRIVING.name, DRIVING.read_bytes(), "video/mp4")}
        rng = np.random.default_rng(0)
        for i in range(self.args.jobs):
            data = {"max_frames": str(int(rng.integers(2, 7))), "seed": str(i)}
            while not self.stop.is_set():
                self.up.wait(120)
                try:
                    r = httpx.post(self.server.url + "/v1/jobs", files=files, data=data, timeout=60)
                except httpx.HTTPError:
                    self.count("connection")
                    time.sleep(0.5)
                    continue
                if r.status_code == 202:
                    with self.lock:
                        self.accepted[r.json()["id"]] = time.monotonic()
                    break
                self.count(str(r.status_code))
                time.sleep(float(r.headers.get("retry-after", 1)) if r.status_code != 507 else 2.0)
            time.sleep(self.args.job_gap)

    def run_sessions(self) -> None:
        from websockets.sync.client import connect

        frames = [jpeg(f) for f in clip_frames(16, 96)]
        start = json.dumps({"type": "start", "source": {"data": base64.b64encode(SOURCE.read_bytes()).decode()},
                            "options": {"steps": 1}, "queue": "block"})
        for _ in range(self.args.sessions):
            if self.stop.is_set():
                return
            self.up.wait(120)
            outcome = "error"
            try:
                with connect(self.server.ws_url, max_size=None, open_timeout=10, close_timeout=5) as ws:
                    ws.send(start)
                    ready = json.loads(ws.recv(timeout=60))
                    if ready.get("type") != "ready":
                        outcome = f"refused {ready.get('code')}"
                    else:
                        for i, f in enumerate(frames):
                            ws.send(pack_in(f, float(i)))
                        ws.send(json.dumps({"type": "end"}))
                        while True:
                            msg = ws.recv(timeout=120)
                            if isinstance(msg, str):
                                if json.loads(msg).get("type") == "done":
                                    outcome = "done"
                                    break
                                continue
                            with self.lock:
                                self.frame_latency_ms.append(unpack_out(msg)[2])
            except Exception as err:  # noqa: BLE001 - a killed server ends a session: counted
                outcome = f"ended by {type(err).__name__}"
            with self.lock:
                self.sessions[outcome] = self.sessions.get(outcome, 0) + 1
            time.sleep(self.args.session_gap)

    def poll(self) -> None:
        """Record end states (and latency) of accepted jobs as they finish."""
        while not self.stop.wait(1.0):
            self.check_jobs()

    def check_jobs(self) -> dict[str, str]:
        """-> job id -> "state stage done" for every accepted job not yet seen finished."""
        states: dict[str, str] = {}
        if not self.up.is_set():
            return states
        with self.lock:
            pending = [i for i in self.accepted if i not in self.finished]
        for job_id in pending:
            try:
                r = httpx.get(f"{self.server.url}/v1/jobs/{job_id}", timeout=10)
            except httpx.HTTPError:
                return states
            if r.status_code == 404:
                states[job_id] = "lost"
                continue
            job = r.json()
            states[job_id] = f"{job['state']} {job['stage']} {job['done']}"
            if job["state"] in TERMINAL:
                with self.lock:
                    self.finished[job_id] = (job["state"], time.monotonic() - self.accepted[job_id], job["error"])
        return states


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=60)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--full", action="store_true", help="the issue's scale: 300 jobs, 50 sessions")
    p.add_argument("--kill-every", type=float, default=60.0, help="seconds between SIGKILLs of the server")
    p.add_argument("--fill-at", type=float, default=90.0, help="seconds into the run the disk is filled (once)")
    p.add_argument("--fill-seconds", type=float, default=10.0, help="how long it stays full")
    p.add_argument("--disk-mb", type=int, default=256, help="size of the tmpfs holding the data folder")
    p.add_argument("--job-gap", type=float, default=1.0, help="seconds between job submissions")
    p.add_argument("--session-gap", type=float, default=5.0, help="seconds between stream sessions")
    p.add_argument("--grace", type=float, default=600.0, help="seconds after the load for jobs to finish")
    p.add_argument("--stall", type=float, default=120.0, help="seconds without progress that make jobs stuck")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak_serve.json")
    args = p.parse_args()
    if args.full:
        args.jobs, args.sessions = 300, 50

    root = Path(tempfile.mkdtemp(prefix="frvd-soak-"))
    disk: Path | None = root / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={args.disk_mb}m", "tmpfs", str(disk)], capture_output=True
    ).returncode == 0
    if not mounted:
        print("no tmpfs (needs root): the disk-full fault is skipped", file=sys.stderr)
        disk = None
    data = (disk or root) / "data"
    soak = Soak(args, data, disk)
    t0 = time.monotonic()
    try:
        soak.start_server()
        threads = [threading.Thread(target=soak.faults, args=(t0,), daemon=True),
                   threading.Thread(target=soak.poll, daemon=True)]
        load = [threading.Thread(target=soak.submit_jobs), threading.Thread(target=soak.run_sessions)]
        for t in threads + load:
            t.start()
        for t in load:
            t.join()
        load_seconds = time.monotonic() - t0
        soak.load_done.set()
        deadline, moved, last = time.monotonic() + args.grace, time.monotonic(), None
        stalled = False
        while time.monotonic() < deadline and len(soak.finished) < len(soak.accepted):
            time.sleep(5)
            if not soak.up.is_set():
                moved = time.monotonic()  # restarting after the last kill
                continue
            snapshot = (len(soak.finished), soak.check_jobs())
            if snapshot != last:
                last, moved = snapshot, time.monotonic()
            elif time.monotonic() - moved > args.stall:
                stalled = True
                break
        soak.stop.set()
        for t in threads:
            t.join(timeout=60)
        soak.up.wait(600)
        states = {i: s.split()[0] for i, s in soak.check_jobs().items()}
    finally:
        soak.stop.set()
        soak.server.kill(signal.SIGTERM)
        log_tail = soak.server.log_text()
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)
        shutil.rmtree(root, ignore_errors=True)

    lost = [i for i, s in states.items() if s == "lost"]
    unfinished = [i for i, s in states.items() if s not in TERMINAL and s != "lost"]
    stuck = unfinished if stalled else []
    moving = [] if stalled else unfinished
    done = [v for v in soak.finished.values() if v[0] == "done"]
    failed = [v for v in soak.finished.values() if v[0] == "failed"]
    reasons: dict[str, int] = {}
    for v in failed:
        key = (v[2] or "")[:60]
        reasons[key] = reasons.get(key, 0) + 1
    job_lat = np.array([v[1] for v in done]) if done else np.zeros(1)
    frame_lat = np.array(soak.frame_latency_ms) if soak.frame_latency_ms else np.zeros(1)
    drift = [last - first for first, last in soak.rss]
    report = {
        "scale": {"jobs": args.jobs, "sessions": args.sessions, "kill_every_s": args.kill_every,
                  "disk_fill": bool(disk), "preset": "tiny", "size": 64, "steps": 1,
                  "job_frames": "2-6", "session_frames": 16, "full": args.full},
        "seconds": {"load": round(load_seconds, 1), "total": round(time.monotonic() - t0, 1)},
        "faults": {"sigkills": soak.kills, "disk": soak.disk_events},
        "jobs": {"accepted": len(soak.accepted), "done": len(done), "failed": len(failed),
                 "failed_reasons": reasons, "lost": len(lost), "stuck": len(stuck), "lost_ids": lost,
                 "stuck_ids": stuck, "unfinished_still_moving": len(moving), "refusals_retried": soak.refusals},
        "sessions": soak.sessions,
        "latency": {"job_p50_s": round(float(np.percentile(job_lat, 50)), 2),
                    "job_p95_s": round(float(np.percentile(job_lat, 95)), 2),
                    "stream_frame_p50_ms": round(float(np.percentile(frame_lat, 50)), 1),
                    "stream_frame_p95_ms": round(float(np.percentile(frame_lat, 95)), 1),
                    "stream_frames": len(soak.frame_latency_ms)},
        "rss_mib": {"per_incarnation_first_last": [[round(a, 1), round(b, 1)] for a, b in soak.rss],
                    "max_drift": round(max(drift), 1), "max": round(max(b for _, b in soak.rss), 1)},
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if "Traceback" in log_tail:
        print("note: the last server log has a traceback:\n" + log_tail[-2000:], file=sys.stderr)
    return 0 if not lost and not stuck else 1


if __name__ == "__main__":
    sys.exit(main())
