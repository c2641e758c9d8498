"""The session API: one engine, cached sources, offline renders and live streams.

    from engine import Reenactor
    r = Reenactor.from_preset("tiny")
    src = r.set_source("face.png")
    r.render(src, "drive.mp4", out="out.mp4")
    with r.stream(src) as s:
        s.push(frame); s.ready(); s.end(); s.results()

Thread-safety rule: a Reenactor runs one thing at a time. ``set_source``, ``render`` and ``stream``
take the engine's lock (a stream holds it until it is closed); a call from another thread waits for
it. Within a stream, ``push``/``end`` may be called from one thread while another reads ``results``.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.backends import BACKENDS, Backend, create_backend
from engine.backends.artifacts import built_student
from engine.config import presets
from engine.config.controls import MotionControls
from engine.config.knobs import check_knobs, knob
from engine.config.modes import RunConfig, RunOptions, RunPlan
from engine.config.settings import DTYPES, TIME_CONTEXTS, EngineConfig, WindowConfig
from engine.config.window_batch import auto_window_batch
from engine.errors import EngineError, InputError, lazy_import
from engine.face.align import METHODS as ALIGN_METHODS
from engine.face.align import CropTransform, PasteBack, crop_transform, detect_faces
from engine.face.align import crop as crop_image
from engine.face.several import CropStore, FacesResult, MultiPaste, prefixed, select_faces
from engine.io import check_output_path, fit_square, iter_video_frames, load_image, probe_video, read_rgb, write_video
from engine.io.image import side_by_side
from engine.models import networks, taesd
from engine.models.student import StudentInfo, check_run
from engine.models.student import load_into as load_student
from engine.models.student import mode_knobs as student_mode_knobs
from engine.runtime import ExactRun, Noise, RunControl, StageTimer, StreamFrame, StreamRunner
from engine.runtime.common import free_memory
from engine.runtime.control import prefetch
from engine.runtime.stages import SourceFeatures, Stages
from engine.runtime.stream import StreamError

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "resizing the driving frames beside the result")

SOURCE_CACHE = 8  # source images whose features are kept per engine


@dataclass(frozen=True)
class EngineOptions:
    """What an engine is built with (fixed for its lifetime), each option declared once here: CLIs
    derive their flags from these fields (engine.cli.args.add_knob_arguments)."""

    size: int | None = knob(None, "output side in pixels, a multiple of 64 (default: the preset's)",
                            lo=64, multiple_of=64)
    device: str = knob("cpu", "cpu, cuda, cuda:1, ...")
    dtype: str = knob("float32", "precision of the diffusion networks (LivePortrait stays float32)",
                      choices=DTYPES)
    backend: str = knob("torch", "what runs the networks (onnxruntime/tensorrt: graphs built by "
                                 "python -m engine.build)", choices=BACKENDS)
    engines: Path | None = knob(None, "folder written by python -m engine.build --out (non-torch backends)")
    time_context: str = knob("release", "temporal-context layout: the release's (diffusers 0.27.2) or "
                                        "PR #7268's", choices=TIME_CONTEXTS)
    window_batch: int | None = knob(None, "windows (each with its CFG pair) per denoiser call (default: as many as "
                                          "half the free memory holds, at most 7 on a CPU; engine.config.window_batch)",
                                    lo=1)
    init_seed: int = knob(0, "seeded weights of presets without a checkpoint (tiny)", lo=0, cli=False)
    vae_fp32: bool = knob(False, "float16/bfloat16 runs: keep the VAE in float32 (SVD's force_upcast; torch "
                                 "backend)")
    student: Path | None = knob(None, "a distilled student (python -m engine.distill): replaces the denoiser and "
                                      "HeadNet; runs the distilled sampler (mode ultra, or --sampler distilled)")
    tiny_decoder: Path | None = knob(None, "TAESD decoder weights (diffusers AutoencoderTiny, taesd_decoder.pth, "
                                           "or engine.distill's): the decoder=tiny knob")
    # TF32 is not an engine option: torch's flags are process-wide, so the process owner sets them
    # (the CLI's --tf32; in a program, ``set_tf32`` below)

    def check(self) -> None:
        try:
            check_knobs(self)
        except ValueError as err:
            raise InputError(str(err)) from None
        if self.backend != "torch" and self.engines is None:
            raise InputError(f"backend {self.backend} needs engines=DIR (built with python -m engine.build)")
        if self.vae_fp32 and self.backend != "torch":
            raise InputError("vae_fp32 keeps the torch VAE in float32: it applies to the torch backend only "
                             "(exported fp16 VAE graphs already run their normalisations in float32)")


@dataclass(frozen=True)
class SourceHandle:
    """A source image whose features are computed; pass it to any number of runs."""

    key: str  # content hash of the pixels the engine sees (and of the alignment)
    image: np.ndarray  # [size, size, 3] uint8: what the networks see (centre crop or aligned crop)
    features: SourceFeatures
    original: np.ndarray | None = None  # the whole source image, when aligned (for paste-back)
    crop: CropTransform | None = None  # original -> crop, when aligned
    note: str = ""  # e.g. which face detector alignment fell back to

    def paster(self) -> PasteBack:
        if self.crop is None or self.original is None:
            raise InputError("paste-back needs an aligned source: set_source(image, align='auto') "
                             "(on the CLI: --align auto --paste-back)")
        return PasteBack(self.original, self.crop)


@dataclass
class RenderResult:
    num_frames: int
    fps: float
    out: Path | None  # the written video, or None when frames are returned
    frames: np.ndarray | None  # [F, H, W, 3] uint8 when no ``out`` was given
    seconds: dict[str, float] = field(default_factory=dict)  # per stage and "total"


class Reenactor:
    """One engine (networks on a backend) and its cached sources. Build with ``from_preset`` /
    ``from_pretrained``; release with ``close()`` or a ``with`` block."""

    def __init__(self, backend: Backend, cfg: EngineConfig, preset: str, weights_dir: Path | None = None,
                 student: StudentInfo | None = None) -> None:
        self.backend, self.cfg, self.preset, self.weights_dir = backend, cfg, preset, weights_dir
        self.student = student  # the distilled student the denoiser carries, if any
        self.stages = Stages.build(backend, cfg)
        self._sources: OrderedDict[str, SourceHandle] = OrderedDict()
        # a plain lock, not reentrant: a stream's lock is released by close(), from whichever thread
        self._lock = threading.Lock()

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str = "tiny", options: EngineOptions | None = None,
                    weights: str | Path | None = None) -> Reenactor:
        """``tiny`` (seeded, embedded) or ``official`` (needs ``weights``: the release's pretrained_weights/)."""
        opts = options or EngineOptions()
        opts.check()
        if preset not in presets.PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of {sorted(presets.PRESETS)}")
        weights_dir = Path(weights) if weights is not None else None
        if opts.backend == "torch":  # exported graphs carry their weights
            presets.require_weights(preset, weights_dir, "weights=DIR")
            model, scheduler, nets = networks.load_preset(preset, weights_dir, opts.init_seed, opts.time_context)
            if opts.tiny_decoder is not None:
                nets.tiny_decoder = taesd.load(opts.tiny_decoder, model.latent_channels, taesd.width_for(model.vae))
            student = load_student(nets, opts.student) if opts.student is not None else None
            nets.to(opts.device, getattr(torch, opts.dtype))
            if opts.vae_fp32:
                nets.vae.to(torch.float32)  # the torch backend casts its inputs to the module's dtype
        else:
            model, scheduler = networks.preset_configs(preset, weights_dir)
            nets, student = None, None
        cfg = EngineConfig(
            model=model,
            size=opts.size or model.image_size,
            dtype=opts.dtype,
            device=opts.device,
            time_context=opts.time_context,
            windows=WindowConfig(batch=opts.window_batch or auto_window_batch(
                model, opts.size or model.image_size, opts.dtype, torch.device(opts.device).type,
                free_memory(opts.device))),
            scheduler=scheduler,
        )
        backend = create_backend(opts.backend, cfg, nets=nets, engines=opts.engines)
        if nets is None:  # built graphs carry the student and tiny decoder they were built from (engine.build)
            student = built_student(getattr(backend, "artifacts", {}), opts.student, opts.tiny_decoder, model)
        return cls(backend, cfg, preset, weights_dir, student)

    @classmethod
    def from_pretrained(cls, weights: str | Path, options: EngineOptions | None = None,
                        preset: str = "official") -> Reenactor:
        return cls.from_preset(preset, options, weights=weights)

    def close(self) -> None:
        """Drop cached sources and the backend's resources."""
        with self._lock:
            self._sources.clear()
            self.backend.close()

    def __enter__(self) -> Reenactor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        return self.cfg.size

    def sidecar(self, run: RunConfig) -> dict[str, Any]:
        """What a run used, as written next to its output: the engine's configuration and the run's."""
        return {"engine": asdict(self.cfg), "run": asdict(run)}

    # -- sources ------------------------------------------------------------------------------
    def set_source(self, image: str | Path | np.ndarray, align: str = "none",
                   face_index: int | None = None) -> SourceHandle:
        """A path (any image PIL reads) or an RGB uint8 array -> a cached handle.

        ``align``: ``none`` (centre crop, the release's default), ``auto`` / ``insightface`` / ``opencv``
        (the release's face crop: the detector box, then its landmarks, then a similarity transform;
        ``auto`` uses the release's ``facecropper/`` models when the weights folder has them, else
        OpenCV). ``face_index`` picks a face when there are several (0 = the largest).
        """
        with self._lock:
            return self._set_source(image, align, face_index)

    def _set_source(self, image: str | Path | np.ndarray, align: str = "none",
                    face_index: int | None = None) -> SourceHandle:
        """``set_source`` with the engine's lock held by the caller."""
        if align not in ("none", *ALIGN_METHODS):
            raise InputError(f"align {align!r} is not one of none, {', '.join(ALIGN_METHODS)}")
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InputError(f"a source array must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
        original = crop = None
        note = ""
        if align != "none":
            original = image if isinstance(image, np.ndarray) else read_rgb(image)
            crop = crop_transform(original, align, face_index, self.weights_dir)
            pixels, note = crop_image(original, crop, self.size), crop.note
        elif isinstance(image, np.ndarray):
            pixels = fit_square(image, self.size)
        else:
            pixels = load_image(image, self.size)
        key = hashlib.sha256(pixels.tobytes() + align.encode()).hexdigest()[:16]
        if key in self._sources:
            self._sources.move_to_end(key)
            return self._sources[key]
        handle = SourceHandle(key, pixels, self.stages.source.prepare(pixels), original, crop, note)
        self._sources[key] = handle
        while len(self._sources) > SOURCE_CACHE:
            self._sources.popitem(last=False)
        return handle

    def _source(self, source: SourceHandle | str | Path | np.ndarray) -> SourceHandle:
        """A handle, with the engine's lock held by the caller."""
        return source if isinstance(source, SourceHandle) else self._set_source(source)

    def run_config(self, options: RunOptions | RunConfig | None = None) -> RunConfig:
        """The run's configuration (``options`` resolved, once), checked against this engine."""
        return self._plan(options)[0]

    def _plan(self, options: RunOptions | RunConfig | None, mode: str | None = None) -> tuple[RunConfig, RunPlan]:
        """Resolve a run once: its RunConfig (a RunConfig given is taken as resolved) and its RunPlan,
        checked against this engine's graphs before anything runs."""
        if isinstance(options, RunConfig):
            if mode is not None and mode != options.mode:
                raise InputError(f"mode={mode!r} with a resolved RunConfig of mode {options.mode!r}: pass RunOptions")
            run = options
        else:
            options = options or RunOptions()
            options = options if mode is None else options.replace(mode=mode)
            # on an engine carrying a student, fast and turbo run it (engine.models.student.mode_knobs)
            run = options.replace(**student_mode_knobs(options.mode, self.student, options.knobs())).resolve()
        plan = RunPlan.of(run, self.cfg.scheduler)
        missing = [g for g in plan.graphs if g not in self.backend]
        if missing:
            raise InputError(f"mode {run.mode!r} (wfm_every {run.wfm_every}) needs the graphs {missing}, "
                             f"which this {self.backend.name} engine lacks: build them (engine.cli.build --graphs) or "
                             "run it on the torch backend")
        if run.kv_downsample > 1 and self.backend.nets is None:
            raise InputError("kv_downsample changes the networks' attention: it runs on the torch backend only")
        try:
            check_run(run, self.student, "tiny_decoder" in self.backend)
        except ValueError as err:
            raise InputError(str(err)) from None
        return run, plan

    def _noise(self, run: RunConfig) -> Noise:
        return Noise.draw(run.seed, self.cfg.size, self.cfg.windows.size)

    # -- offline ------------------------------------------------------------------------------
    def render(self, source: SourceHandle | str | Path | np.ndarray,
               driving: str | Path | np.ndarray | Iterable[np.ndarray], out: str | Path | None = None, *,
               options: RunOptions | RunConfig | None = None, control: RunControl | None = None,
               max_frames: int | None = None, fps: float | Fraction | None = None,
               side_by_side_with_inputs: bool = False, paste_back: bool = False, mode: str | None = None
               ) -> RenderResult:
        """A whole clip in ``options.mode`` (``mode=`` overrides it; exact by default). ``driving``: a
        video path, a uint8 [F, H, W, 3] array or an iterable of frames. With ``out`` the video (and
        ``out.json``, the resolved configuration) appear together or not at all; without, the frames
        are returned. ``paste_back`` (aligned sources) warps each frame back into the whole source
        image, at its own size."""
        start = time.perf_counter()
        run_cfg, plan = self._plan(options, mode)
        control = control or RunControl()
        path = check_output_path(out) if out is not None else None
        frames, rate, audio = self._driving(driving, max_frames, fps)
        with self._lock:
            handle = self._source(source)
            timer = StageTimer(self.backend.device)
            run = ExactRun(self.stages, run_cfg, handle.features, frames(), self._noise(run_cfg), control, timer,
                           plan=plan)
            produced = prefetch(run.frames(), control, depth=2 * self.stages.decode.per_call)
            produced = compose(produced, handle, frames() if side_by_side_with_inputs else None, paste_back)
            if path is None:
                result = np.stack(list(produced))
            else:
                _write_with_sidecar(path, produced, rate, audio, self.sidecar(run_cfg), timer)
                result = None
        seconds = dict(timer.seconds, total=time.perf_counter() - start)
        return RenderResult(run.num_frames, float(rate), path, result, seconds)

    def render_faces(self, image: str | Path | np.ndarray, driving: str | Path | np.ndarray | Iterable[np.ndarray],
                     out: str | Path | None = None, *, faces: str | int | Iterable[int] = "all", align: str = "auto",
                     options: RunOptions | RunConfig | None = None, control: RunControl | None = None,
                     max_frames: int | None = None, fps: float | Fraction | None = None) -> FacesResult:
        """Several faces of one photo (``faces``: "all" or indices, 0 = the largest), each aligned and
        reenacted by ``driving`` in turn (progress per face), pasted back into one video of the photo
        (engine.face.several). No face, or an index beyond those found: one FaceError before any run."""
        if align not in ALIGN_METHODS:
            raise InputError(f"several faces need face alignment: align must be one of {', '.join(ALIGN_METHODS)}")
        photo = image if isinstance(image, np.ndarray) else read_rgb(image)
        wanted = faces if isinstance(faces, str | int) else tuple(faces)
        indices = select_faces(len(detect_faces(photo, align, self.weights_dir)), wanted)
        path = check_output_path(out) if out is not None else None
        control = control or RunControl()
        crops: list[CropTransform] = []
        rate = Fraction(25)
        with CropStore() as store:
            for k, index in enumerate(indices):
                handle = self.set_source(photo, align, index)
                each = replace(control, progress=prefixed(control.progress, f"face {k + 1}/{len(indices)}"))
                result = self.render(handle, driving, options=options, control=each, max_frames=max_frames, fps=fps)
                assert result.frames is not None and handle.crop is not None
                store.add(result.frames)  # on disk: one face's frames in memory at a time
                crops.append(handle.crop)
                rate = Fraction(result.fps).limit_denominator(10_000)
            frames = store.composed(MultiPaste(photo, crops), control.report)
            if path is None:
                return FacesResult(indices, len(store.faces[0]), float(rate), None, np.stack(list(frames)))
            self.write_output(path, frames, rate, driving, options)
            return FacesResult(indices, len(store.faces[0]), float(rate), path, None)

    def write_output(self, path: Path, frames: Iterator[np.ndarray], rate: Fraction, driving: Any,
                     options: RunOptions | RunConfig | None) -> None:
        """Frames of a run with ``options`` written as a video (with the driving clip's audio) and its sidecar."""
        audio = Path(driving) if isinstance(driving, str | Path) and probe_video(driving).has_audio else None
        _write_with_sidecar(path, frames, rate, audio, self.sidecar(self.run_config(options)), StageTimer())

    def _driving(self, driving: Any, max_frames: int | None, fps: float | Fraction | None):
        """-> (a function returning a fresh frame iterator, frame rate, audio source or None)."""
        if max_frames is not None and max_frames < 1:
            raise InputError(f"max_frames must be >= 1, got {max_frames}")
        if isinstance(driving, str | Path):
            info = probe_video(driving)
            return (lambda: iter_video_frames(driving, self.size, max_frames),
                    info.rate, Path(driving) if info.has_audio else None)
        rate = Fraction(fps).limit_denominator(10_000) if fps is not None else Fraction(25)
        if isinstance(driving, np.ndarray):
            if driving.dtype != np.uint8 or driving.ndim != 4 or driving.shape[-1] != 3:
                raise InputError(f"driving frames must be uint8 [F, H, W, 3], got {driving.dtype} {driving.shape}")
            clip = driving[:max_frames]
            return (lambda: (fit_square(f, self.size) for f in clip)), rate, None
        items = list(driving)[:max_frames]  # an iterable can be read once: keep it for side-by-side
        return (lambda: (fit_square(np.asarray(f), self.size) for f in items)), rate, None

    # -- live ----------------------------------------------------------------------------------
    def stream(self, source: SourceHandle | str | Path | np.ndarray, options: RunOptions | RunConfig | None = None,
               control: RunControl | None = None, queue_frames: int = 32, paste_back: bool = False,
               mode: str | None = None) -> ReenactStream:
        """A causal stream: push driving frames, read finished frames (see ``ReenactStream``);
        ``paste_back`` (aligned sources) returns frames pasted into the whole source image;
        ``mode=`` overrides ``options.mode``."""
        run_cfg, plan = self._plan(options, mode)
        self._lock.acquire()
        try:
            handle = self._source(source)
            paster = handle.paster() if paste_back else None
            runner = StreamRunner(self.stages, run_cfg, handle.features, self._noise(run_cfg), control, queue_frames,
                                  plan)
        except BaseException:
            self._lock.release()
            raise
        return ReenactStream(runner, self.size, self._lock, paster, self._set_source)


class ReenactStream:
    """Live reenactment. ``push`` blocks while the input queue is full (backpressure); a caller on a
    single thread must read ``ready()`` between pushes, or ``push`` reports a stalled stream instead
    of blocking forever. ``lookahead``: driving frames needed after an output frame before it is
    emitted (worst case, frame 0); ``steady_lookahead``: the same after the first window."""

    def __init__(self, runner: StreamRunner, size: int, lock: threading.Lock, paster: PasteBack | None = None,
                 prepare: Callable[..., SourceHandle] | None = None) -> None:
        self.runner, self.size, self._lock, self.paster = runner, size, lock, paster
        self._prepare = prepare  # the engine's set_source, called with its lock held (by this stream)
        self._pasters: list[tuple[int, PasteBack | None]] = [(0, paster)]  # from frame index on
        self.controls = runner.run.controls
        self.lookahead = runner.plan.lookahead
        self.steady_lookahead = runner.plan.steady_lookahead
        self.pushed = 0
        self._ended = self._closed = self._finished = False

    def push(self, frame: np.ndarray, timestamp: float | None = None, timeout: float | None = None) -> None:
        """One RGB uint8 [H, W, 3] driving frame (centre-cropped and resized to the engine's size)."""
        if self._ended or self._closed:
            raise StreamError("push after end() or close()")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(f"a driving frame must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
        self.runner.push(self.pushed, fit_square(frame, self.size), timestamp, timeout)
        self.pushed += 1

    def set_controls(self, controls: MotionControls | None = None, **changes: Any) -> MotionControls:
        """New motion controls (``controls``, or the current ones with ``changes``) from the next pushed
        frame on; a bad value is one InputError and changes nothing. Returns the controls now set."""
        if self._ended or self._closed:
            raise StreamError("set_controls after end() or close()")
        new = (controls or self.controls).updated(**changes)
        new.check(self.runner.motion.relative)
        self.runner.set_controls(new)
        self.controls = new
        return new

    def switch_source(self, source: SourceHandle | str | Path | np.ndarray, align: str = "none",
                      face_index: int | None = None) -> SourceHandle:
        """The next pushed frames reenact ``source`` (cached features reused); frames already pushed
        keep the old one and come out exactly as without the switch. A source that cannot be read is
        one InputError and changes nothing. With paste-back the new source must be aligned too."""
        if self._ended or self._closed:
            raise StreamError("switch_source after end() or close()")
        if self._prepare is None:
            raise StreamError("this stream cannot switch sources")
        handle = source if isinstance(source, SourceHandle) else self._prepare(source, align, face_index)
        paster = handle.paster() if self.paster is not None else None
        self.runner.switch_source(handle.features)
        self._pasters.append((self.pushed, paster))
        return handle

    def end(self) -> None:
        """No more driving frames: the rest is flushed (the last window ends at the last frame)."""
        if not self._ended:
            self._ended = True
            self.runner.end()

    def ready(self) -> list[StreamFrame]:
        """Every frame finished so far, without blocking."""
        out: list[StreamFrame] = []
        while not self._finished:
            try:
                item = self.runner.outputs.get_nowait()
            except queue.Empty:
                break
            if self._take(item, out):
                break
        self.runner.raise_error()
        return out

    def get(self, timeout: float | None = None) -> StreamFrame | None:
        """The next finished frame, waiting up to ``timeout`` seconds (None: until one is ready);
        None after the last frame or on timeout."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self._finished:
            self.runner.raise_error()
            try:
                item = self.runner.outputs.get(timeout=0.05)
            except queue.Empty:
                if deadline is not None and time.perf_counter() > deadline:
                    return None
                continue
            out: list[StreamFrame] = []
            if not self._take(item, out):
                return out[0]
        self.runner.raise_error()
        return None

    def results(self) -> Iterator[StreamFrame]:
        """Blocks for each next frame; ends after the last one (call ``end()`` first, or from another thread)."""
        while (frame := self.get()) is not None:
            yield frame

    def _take(self, item: object, out: list[StreamFrame]) -> bool:
        if isinstance(item, StreamFrame):
            while len(self._pasters) > 1 and self._pasters[1][0] <= item.index:
                self._pasters.pop(0)
            paster = self._pasters[0][1]
            out.append(item if paster is None else replace(item, frame=paster(item.frame)))
            return False
        self._finished = True  # the end marker
        return True

    def stage_seconds(self) -> dict[str, float]:
        return dict(self.runner.timer.seconds)

    def state_sizes(self) -> dict[str, int]:
        return self.runner.state_sizes()

    @property
    def windows_done(self) -> int:
        return self.runner.windows_done

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.runner.stop()
        finally:
            self._lock.release()

    def __enter__(self) -> ReenactStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def set_tf32(enabled: bool) -> None:
    """Both TF32 switches, either way: cuDNN convolutions default to TF32 even for float32 tensors, so a
    float32 CUDA run must turn them off explicitly to be float32. Process-wide torch flags: the process
    that owns them sets them once (the CLIs do, from --tf32), never an engine per call."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def compose(frames: Iterable[np.ndarray], handle: SourceHandle, driving: Iterable[np.ndarray] | None,
            paste_back: bool) -> Iterator[np.ndarray]:
    """Result frames as written: pasted back into the whole source, and/or beside the inputs
    (source | driving | result, the driving frame scaled to the result's height)."""
    paster = handle.paster() if paste_back else None
    source = handle.original if paster is not None and handle.original is not None else handle.image
    drive = iter(driving) if driving is not None else None
    for frame in frames:
        if paster is not None:
            frame = paster(frame)
        if drive is not None:
            d = next(drive)
            if d.shape[0] != frame.shape[0]:
                d = cv2.resize(d, (frame.shape[0], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
            frame = side_by_side(source, d, frame)
        yield frame


def _write_with_sidecar(path: Path, frames: Iterator[np.ndarray], rate: Fraction, audio: Path | None,
                        config: dict[str, Any], timer: StageTimer) -> None:
    """The video and its ``.json`` sidecar appear together or not at all."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_dir():
        raise InputError(f"'{sidecar}' is a directory; the run's configuration is written there: choose another --out")
    tmp = sidecar.with_name(f".{sidecar.name}.partial")
    waited = 0.0

    def timed() -> Iterator[np.ndarray]:  # time spent waiting for frames is not the writer's
        nonlocal waited
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            waited += time.perf_counter() - t0
            if frame is None:
                return
            yield frame

    try:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        t0 = time.perf_counter()
        write_video(path, timed(), rate, audio_from=audio)
        timer.add("write", time.perf_counter() - t0 - waited)
        try:
            os.replace(tmp, sidecar)
        except OSError:
            path.unlink(missing_ok=True)
            raise
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["EngineError", "EngineOptions", "ReenactStream", "Reenactor", "RenderResult", "RunControl",
           "RunOptions", "SourceHandle", "StreamFrame"]
