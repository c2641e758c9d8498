"""The Ray actor that renders batch items: one ``Reenactor`` per actor, kept for its lifetime.

An actor holds one GPU (``device`` cuda) or N CPUs (torch runs N intra-op threads). Its engine and
its source cache (keyed by pixels, so the same portrait in many items is prepared once) are reused
across items. Inputs arrive as bytes from the driver's object store and the output goes back as
bytes: no file system is shared between the driver and the actors, so a node of a cluster needs
nothing but the package. The actor never writes into the output folder: the driver alone commits
an output, once, which is what makes a retried item impossible to write twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.errors import EngineError


class RenderWorker:
    """Plain class; ``engine.batch.runner`` wraps it with ``ray.remote``."""

    def __init__(self, preset: str, weights: str | None, engine: dict[str, Any], threads: int) -> None:
        import torch

        from engine.api import EngineOptions, Reenactor

        torch.set_grad_enabled(False)
        torch.set_num_threads(max(1, threads))
        opts = EngineOptions(**engine)
        if torch.cuda.is_available() and opts.device == "auto":
            opts = EngineOptions(**{**engine, "device": "cuda"})  # Ray sets CUDA_VISIBLE_DEVICES to our GPU
        elif opts.device == "auto":
            opts = EngineOptions(**{**engine, "device": "cpu"})
        self.engine = Reenactor.from_preset(preset, opts, weights=weights)
        self.work = Path(tempfile.mkdtemp(prefix="frvd-batch-"))
        self.threads = threads
        self.items = 0

    def info(self) -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "device": self.engine.cfg.device,
                "threads": self.threads}

    def render(self, item: dict[str, Any], source: bytes, driving: bytes) -> dict[str, Any]:
        """One item -> {"ok", "video", "sidecar", "frames", "seconds"} or {"ok": False, "error"}.

        A bad input (``EngineError``) or any other exception of the render is the item's failure, reported
        to the driver; only the death of this process makes the driver retry the item elsewhere."""
        from engine.api import RunOptions

        start = time.perf_counter()
        folder = Path(tempfile.mkdtemp(dir=self.work))
        try:
            src = folder / f"source{item['source_suffix']}"
            drv = folder / f"driving{item['driving_suffix']}"
            src.write_bytes(source)
            drv.write_bytes(driving)
            out = folder / "out.mp4"
            face = item.get("face", {})  # as engine.reenact: set_source (centre or face crop), then render
            handle = self.engine.set_source(src, face.get("align", "none"), face.get("face_index"))
            result = self.engine.render(handle, drv, out, options=RunOptions(**item["options"]),
                                        max_frames=item["max_frames"], paste_back=face.get("paste_back", False))
            self.items += 1
            return {"ok": True, "video": out.read_bytes(), "sidecar": out.with_suffix(".json").read_bytes(),
                    "frames": result.num_frames, "seconds": time.perf_counter() - start,
                    "stages": result.seconds}
        except Exception as err:  # noqa: BLE001 - the item fails with its error; the actor stays up
            text = str(err) if isinstance(err, EngineError) else f"{type(err).__name__}: {err}"
            for local, given in ((src, item["source"]), (drv, item["driving"])):  # name the user's files
                text = text.replace(str(local), given)
            return {"ok": False, "error": text, "seconds": time.perf_counter() - start}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self.work, ignore_errors=True)
