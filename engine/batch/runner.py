"""The batch driver: a manifest rendered by a pool of Ray actors, resumably and exactly once.

1. Read the manifest; hash every input; an item whose record (``NAME.batch.json``) carries the same key
   and whose video still has the recorded digest is skipped.
2. Connect to Ray (``address``, or a local cluster) and start ``actors`` render actors.
3. Hand items to free actors; inputs travel as object-store bytes (each distinct file once).
4. A finished item is committed by this process alone: the video and its ``.json`` sidecar are renamed
   into place, then the record. An item whose actor died is put back in the queue (preferably for
   another actor) and the actor replaced, up to ``max_attempts`` runs of that item.
5. ``results.jsonl`` (status, output, seconds, error per item) is rewritten atomically after every item.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.batch.actor import RenderWorker
from engine.batch.manifest import Item, file_digest, item_key, read_manifest
from engine.errors import EngineError, InputError

log = logging.getLogger("engine.batch")
RESULTS = "results.jsonl"
RECORD_SUFFIX = ".batch.json"


@dataclass(frozen=True)
class BatchConfig:
    out: Path
    preset: str = "tiny"
    weights: Path | None = None
    engine: dict[str, Any] = field(default_factory=dict)  # EngineOptions keyword arguments (device: auto)
    address: str | None = None  # an existing cluster; None: a local one
    actors: int | None = None  # None: one per GPU, else one per cpus_per_actor CPUs
    cpus_per_actor: int = 1
    gpus_per_actor: float = 0.0  # 0: CPU actors; 1: one GPU each; 0.5: two actors share a GPU
    max_attempts: int = 3  # runs of one item whose actor died, before it is failed
    local_cpus: int | None = None  # CPUs of a local cluster (None: all)


@dataclass
class Outcome:
    item: Item
    status: str = "pending"  # done | skipped | failed
    seconds: float = 0.0
    attempts: int = 0
    error: str | None = None
    key: str = ""
    actor: str = ""
    died_on: int | None = None  # actor slot whose death interrupted the last attempt

    def row(self, out: Path) -> dict[str, Any]:
        video = out / f"{self.item.name}.mp4"
        return {"index": self.item.index, "name": self.item.name, "status": self.status,
                "output": str(video) if self.status in ("done", "skipped") else None,
                "seconds": round(self.seconds, 3), "attempts": self.attempts, "error": self.error,
                "actor": self.actor or None, "key": self.key or None, **self.item.spec()}


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _engine_identity(config: BatchConfig) -> dict[str, Any]:
    """The engine part of an item's key. Float results differ between a GPU and the CPU and, on the CPU,
    between intra-op thread counts (reduction order), so both are part of it; the windows per call are
    not (the same bits at any batch: tests/test_window_batch.py)."""
    from engine.api import EngineOptions

    ignored = ("device", "window_batch")
    engine = {k: v for k, v in dataclasses.asdict(EngineOptions(**config.engine)).items() if k not in ignored}
    return {"preset": config.preset, "weights": str(config.weights) if config.weights else None,
            "gpu": config.gpus_per_actor > 0, "threads": config.cpus_per_actor, **engine}


class BatchRun:
    def __init__(self, manifest: Path, config: BatchConfig) -> None:
        self.config = config
        self.out = config.out
        self.outcomes = [Outcome(item) for item in read_manifest(manifest)]
        self.digests: dict[Path, str] = {}
        self.started = time.perf_counter()

    # -- 1. what is left to do -------------------------------------------------------------
    def plan(self) -> list[Outcome]:
        self.out.mkdir(parents=True, exist_ok=True)
        engine = _engine_identity(self.config)
        todo = []
        for o in self.outcomes:
            if o.item.error:
                o.status, o.error = "failed", o.item.error
                log.warning("item %s failed: %s", o.item.name, o.error)
                continue
            try:
                o.key = item_key(o.item, engine, self._digest(o.item.source), self._digest(o.item.driving))
            except OSError as err:
                o.status, o.error = "failed", f"cannot read an input: {err}"
                continue
            if self._recorded(o):
                o.status = "skipped"
                continue
            todo.append(o)
        return todo

    def _digest(self, path: Path) -> str:
        if path not in self.digests:
            self.digests[path] = file_digest(path)
        return self.digests[path]

    def _recorded(self, o: Outcome) -> bool:
        record, video = self.out / f"{o.item.name}{RECORD_SUFFIX}", self.out / f"{o.item.name}.mp4"
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(saved, dict) and saved.get("key") == o.key and video.is_file()
                and (self.out / f"{o.item.name}.json").is_file() and saved.get("video_sha256") == file_digest(video))

    # -- 2.-4. the actors ----------------------------------------------------------------------
    def run(self) -> list[Outcome]:
        todo = self.plan()
        skipped = sum(o.status == "skipped" for o in self.outcomes)
        log.info("batch: %d items, %d to render, %d skipped (recorded), %d failed before rendering",
                 len(self.outcomes), len(todo), skipped, sum(o.status == "failed" for o in self.outcomes))
        if todo:
            self._render(todo)
        self._write_results()
        return self.outcomes

    def _render(self, todo: list[Outcome]) -> None:
        import ray

        c = self.config
        if ray.is_initialized():
            self._render_on(ray, todo)
            return
        try:
            if c.address:
                ray.init(address=c.address, log_to_driver=False)
            else:
                ray.init(num_cpus=c.local_cpus, include_dashboard=False, log_to_driver=False)
            self._render_on(ray, todo)
        finally:
            ray.shutdown()  # a local cluster started here ends here; a remote one is only disconnected

    def _render_on(self, ray: Any, todo: list[Outcome]) -> None:
        c = self.config
        count = c.actors or _default_actors(ray.cluster_resources(), c)
        count = max(1, min(count, len(todo)))
        remote = ray.remote(RenderWorker).options(num_cpus=c.cpus_per_actor, num_gpus=c.gpus_per_actor,
                                                  max_restarts=0, max_task_retries=0)
        args = (c.preset, str(c.weights) if c.weights else None, {"device": "auto", **c.engine}, c.cpus_per_actor)
        pool: dict[int, Any] = {}  # slot -> actor (starting or ready)
        names: dict[int, str] = {}
        starting: dict[Any, int] = {}  # info() ref -> slot: an actor building its engine
        inflight: dict[Any, tuple[int, Outcome]] = {}  # render() ref -> (slot, item)
        refs: dict[Path, Any] = {}  # input file -> object ref (a source used by many items is sent once)
        queue = collections.deque(todo)
        deaths = 0

        def start(slot: int) -> None:  # does not wait: the engine builds while other actors render
            pool[slot] = remote.remote(*args)
            starting[pool[slot].info.remote()] = slot

        def submit(slot: int) -> None:
            o = next((x for x in queue if x.died_on != slot), queue[0])  # a retry prefers another actor
            queue.remove(o)
            o.attempts += 1
            o.actor = names[slot]
            item = {"options": o.item.options, "face": o.item.face, "max_frames": o.item.max_frames,
                    "source": str(o.item.source), "driving": str(o.item.driving),
                    "source_suffix": o.item.source.suffix, "driving_suffix": o.item.driving.suffix}
            for path in (o.item.source, o.item.driving):
                if path not in refs:
                    refs[path] = ray.put(path.read_bytes())
            inflight[pool[slot].render.remote(item, refs[o.item.source], refs[o.item.driving])] = (slot, o)
            log.info("batch: item %s -> %s (attempt %d)", o.item.name, names[slot], o.attempts)

        for slot in range(count):
            start(slot)
        try:
            while inflight or (queue and starting):
                [ref], _ = ray.wait([*inflight, *starting], num_returns=1)
                if ref in starting:
                    slot = starting.pop(ref)
                    try:
                        info = ray.get(ref)
                    except ray.exceptions.RayActorError as err:  # the engine could not be built there
                        raise EngineError(f"a render actor could not start: {_first_line(err)}") from None
                    names[slot] = f"actor {slot} (pid {info['pid']} on {info['host']}, {info['device']})"
                    log.info("batch: %s ready", names[slot])
                else:
                    slot, o = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                        self._actor_died(o, slot, names[slot], err, queue)
                        ray.kill(pool[slot], no_restart=True)
                        deaths += 1
                        if deaths > c.max_attempts * count:
                            raise EngineError(f"{deaths} render actors died; giving up (see the Ray logs)") from None
                        if queue or inflight:
                            start(slot)
                        continue
                    self._finish(o, result)
                    self._progress()
                    self._write_results()
                if queue:
                    submit(slot)
        finally:
            for actor in pool.values():
                ray.kill(actor, no_restart=True)

    def _actor_died(self, o: Outcome, slot: int, name: str, err: Exception, queue: collections.deque) -> None:
        if o.attempts >= self.config.max_attempts:
            o.status, o.error = "failed", f"its actor died {o.attempts} times (last: {_first_line(err)})"
            log.error("batch: item %s failed: %s", o.item.name, o.error)
            self._write_results()
            return
        o.died_on = slot
        queue.appendleft(o)
        log.warning("batch: %s died during item %s (%s); the item goes back to the queue", name, o.item.name,
                    type(err).__name__)

    def _finish(self, o: Outcome, result: dict[str, Any]) -> None:
        o.seconds = float(result.get("seconds", 0.0))
        if not result["ok"]:
            o.status, o.error = "failed", result["error"]
            log.warning("batch: item %s failed: %s", o.item.name, o.error)
            return
        video, sidecar = self.out / f"{o.item.name}.mp4", self.out / f"{o.item.name}.json"
        _atomic_write(video, result["video"])
        _atomic_write(sidecar, result["sidecar"])
        record = {"key": o.key, "name": o.item.name, "video_sha256": file_digest(video), "frames": result["frames"],
                  "seconds": o.seconds, "attempts": o.attempts, **o.item.spec()}
        _atomic_write(self.out / f"{o.item.name}{RECORD_SUFFIX}", json.dumps(record, indent=2).encode())
        o.status = "done"
        log.info("batch: item %s committed -> %s", o.item.name, video)

    def _progress(self) -> None:
        n = len(self.outcomes)
        done = sum(o.status == "done" for o in self.outcomes)
        failed = sum(o.status == "failed" for o in self.outcomes)
        skipped = sum(o.status == "skipped" for o in self.outcomes)
        left = sum(o.status == "pending" for o in self.outcomes)
        elapsed = time.perf_counter() - self.started
        finished = sum(o.status in ("done", "failed") and o.attempts > 0 for o in self.outcomes)
        eta = f"{elapsed / finished * left:.0f} s" if finished else "?"
        log.info("batch: %d/%d done, %d failed, %d skipped, %d left, elapsed %.0f s, eta %s",
                 done, n, failed, skipped, left, elapsed, eta)

    # -- 5. the results manifest ---------------------------------------------------------------
    def _write_results(self) -> None:
        lines = [json.dumps(o.row(self.out)) for o in self.outcomes]
        _atomic_write(self.out / RESULTS, ("\n".join(lines) + "\n").encode())


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _default_actors(resources: dict[str, float], config: BatchConfig) -> int:
    if config.gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) / config.gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // config.cpus_per_actor))


def run_batch(manifest: Path, config: BatchConfig) -> list[Outcome]:
    """Render a manifest (see the module's docstring); returns every item's outcome."""
    if config.max_attempts < 1:
        raise InputError("max_attempts must be >= 1")
    return BatchRun(manifest, config).run()
