"""Run the network through OpenVINO on CPU, with the converted model cached on disk.

Why: on the 2-core AVX512 (no AMX) benchmark machine OpenVINO's CPU plugin runs a
STU-Net-S 96^3 patch in fp32 about 3.5x faster than PyTorch eager fp32 (1.64 s vs
5.68 s, argmax agreement 0.99995), more than our own ``optimize`` rewrites gain. We
keep PyTorch as the model format (bundles, training) and convert at inference time.

Conversion costs seconds to tens of seconds, so the converted IR (``.xml`` + ``.bin``)
is cached per (weights + architecture, input channels, patch, batch, OpenVINO version)
under ``$MEDPIPE_CACHE/openvino`` (default ``~/.cache/medpipe/openvino``); only the
first run of a bundle pays it. Entries are written through ``io.atomic.atomic_dir`` and
one that cannot be read is rebuilt. Compiled models are also kept in-process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.errors import ResourceError
from medpipe.io.atomic import atomic_dir

__all__ = ["openvino_available", "OpenVINONetwork", "load_openvino_network", "load_openvino_ir", "convert_to_openvino",
           "cache_root", "model_key"]

_RECIPE = "trace-v1"  # bump when the conversion recipe changes (invalidates old cache entries)
_XML = "model.xml"
_BIN = "model.bin"
_COMPILED: dict[tuple[str, int, int], Any] = {}
_LOCK = threading.Lock()


def openvino_available() -> bool:
    """True when ``import openvino`` works."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise ResourceError("the OpenVINO backend needs the 'openvino' package, which is not installed: "
                            "pip install openvino (or use backend='torch')") from exc
    return ov


def cache_root() -> Path:
    """``$MEDPIPE_CACHE/openvino``, else ``~/.cache/medpipe/openvino``."""
    base = os.environ.get("MEDPIPE_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "medpipe") / "openvino"


def model_key(model: torch.nn.Module, input_shape: Sequence[int], ov_version: str) -> str:
    """Hash of the architecture (module tree text), every parameter/buffer, the input shape
    ``(batch, channels, *patch)``, the OpenVINO version and the conversion recipe."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{_RECIPE}|{ov_version}|{tuple(int(s) for s in input_shape)}|{type(model).__qualname__}|{model}".encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.detach().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim: BN counters
    return h.hexdigest()


def convert_to_openvino(model: torch.nn.Module, example: torch.Tensor):
    """(``openvino.Model``, how) from OpenVINO's PyTorch frontend on the module itself (TorchScript tracing).

    Measured on STU-Net-S 96^3: converting a ``torch.export`` program is 4x quicker
    (5 s vs 21 s) but the resulting graph ran 2.5x slower (2.45 s vs 0.97 s per patch:
    InstanceNorm arrives decomposed instead of as one MVN op) and less exactly, so we trace
    once and cache the result."""
    ov = _import_openvino()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: fine,
        # the input shape is fixed; OpenVINO's frontend still uses torch.jit.trace, which torch now
        # flags as deprecated on every call - noise for a user watching a pipeline run
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.trace")
        return ov.convert_model(model, example_input=example), "trace"


def _read_cached(core, folder: Path):
    try:
        return core.read_model(str(folder / _XML), str(folder / _BIN))
    except Exception:  # noqa: BLE001 - a truncated/corrupt entry: rebuild it
        return None


@dataclass
class OpenVINONetwork:
    """A compiled OpenVINO model for one fixed input shape; call it like the torch module.

    The returned tensor is a view of OpenVINO's output buffer, valid until the next call
    (no copy of a ``classes x patch`` block per tile); ``reuses_output`` tells callers
    that keep an output across calls to copy it."""

    reuses_output = True
    compiled: Any
    input_shape: tuple[int, ...]
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._request = self.compiled.create_infer_request()
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.facts["streams"] = self.streams

    def _array(self, x: torch.Tensor) -> np.ndarray:
        arr = x.detach().cpu().float().numpy()
        if arr.shape[0] < self.input_shape[0]:  # a short last batch: pad with zeros, drop their outputs
            pad = np.zeros((self.input_shape[0] - arr.shape[0], *arr.shape[1:]), np.float32)
            arr = np.concatenate([arr, pad])
        return np.ascontiguousarray(arr)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self._request.infer({0: self._array(x)})[0]
        return torch.from_numpy(out[:x.shape[0]])

    def imap(self, items: Iterable[tuple[Any, torch.Tensor]]) -> Iterator[tuple[Any, torch.Tensor]]:
        """Run ``(tag, x)`` items with one request per stream (at least two) in flight; yields
        ``(tag, output)`` in input order. With one stream the second request queues behind the
        first, so the caller's work on one output overlaps the next computation. An output is
        the request's own buffer, valid until the next item is asked for (the request is then
        given new work)."""
        free = [self._request] + [self.compiled.create_infer_request() for _ in range(max(2, self.streams) - 1)]
        flight: deque[tuple[Any, Any, int]] = deque()

        def done() -> tuple[Any, torch.Tensor]:
            tag, req, n = flight.popleft()
            req.wait()
            free.append(req)
            return tag, torch.from_numpy(req.get_output_tensor(0).data[:n])

        for tag, x in items:
            if not free:
                yield done()
            req = free.pop()
            req.start_async({0: self._array(x)})
            flight.append((tag, req, x.shape[0]))
        while flight:
            yield done()


def load_openvino_network(model: torch.nn.Module, input_shape: Sequence[int], *,
                          num_threads: int | None = None, cache_dir: Path | None = None,
                          streams: int = 1) -> OpenVINONetwork:
    """The OpenVINO version of ``model`` for inputs of ``input_shape`` (batch, channels, *patch),
    compiled for the CPU in fp32: from the in-process cache, else the disk cache, else converted
    (and cached). ``facts`` says which, and how long conversion/compilation took. ``streams``
    > 1 compiles for throughput (the threads split between that many parallel requests; see
    ``imap``)."""
    ov = _import_openvino()
    shape = tuple(int(s) for s in input_shape)
    threads = int(num_threads or torch.get_num_threads())
    t0 = time.perf_counter()
    # hashed on every call (~0.1 s for STU-Net-S): weights edited in place, even through
    # ``.data``, must never reuse a stale compiled model
    key = model_key(model, shape, ov.__version__)
    hash_s = time.perf_counter() - t0
    folder = (cache_dir or cache_root()) / key
    facts: dict[str, Any] = {"openvino_version": ov.__version__, "cache_key": key, "cache_dir": str(folder),
                             "hash_seconds": round(hash_s, 3)}
    with _LOCK:
        hit = _COMPILED.get((key, threads, streams))
        if hit is not None:
            return OpenVINONetwork(hit, shape, {**facts, "cache": "memory", "convert_seconds": 0.0,
                                                "compile_seconds": 0.0})
        core = ov.Core()
        t1 = time.perf_counter()
        om = _read_cached(core, folder) if (folder / _XML).is_file() else None
        if om is not None:
            facts.update(cache="disk", convert_seconds=0.0, read_seconds=round(time.perf_counter() - t1, 3))
        else:
            was_corrupt = folder.exists()
            was_training = model.training
            model.eval()
            try:
                om, how = convert_to_openvino(model, torch.zeros(shape))
            finally:
                model.train(was_training)
            facts.update(cache="rebuilt" if was_corrupt else "converted", converted_via=how,
                         convert_seconds=round(time.perf_counter() - t1, 3))
            problem = _save(ov, om, folder)
            if problem:
                facts["cache_write_error"] = problem
        t2 = time.perf_counter()
        compiled = core.compile_model(om, "CPU", _cpu_config(threads, streams))
        facts["compile_seconds"] = round(time.perf_counter() - t2, 3)
        _COMPILED[(key, threads, streams)] = compiled
    return OpenVINONetwork(compiled, shape, facts)


def _save(ov, om, folder: Path) -> str | None:
    """Write the IR atomically (weights stay fp32). A cache that cannot be written only costs
    the next run the conversion again, so it is reported in the facts, not raised."""
    try:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        with atomic_dir(folder, overwrite=True) as tmp:
            ov.save_model(om, str(tmp / _XML), compress_to_fp16=False)
    except OSError as exc:
        return f"could not write the OpenVINO cache {folder}: {exc}"
    return None


def _cpu_config(threads: int, streams: int = 1) -> dict[str, Any]:
    """fp32 where the graph is fp32 (an int8 graph's FakeQuantize ops still run in int8):
    OpenVINO's bf16 mode was slower and less exact on the AVX512-BF16-without-AMX machine.
    One stream: latency mode, all threads on one request. Several: throughput mode, the
    threads split between parallel requests — an ad-hoc measurement on 2 cores (int8 STU-Net-S,
    96^3; not in RESULTS.md) gave 0.218 vs 0.251 s per patch in one run and 0.159 vs 0.149 s in
    another: no reliable difference per patch; it is steadier per volume (docs/inference.md)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    if streams > 1:
        return {**config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
    return {**config, "PERFORMANCE_HINT": "LATENCY"}


def load_openvino_ir(xml_path: str | Path, input_shape: Sequence[int], *,
                     num_threads: int | None = None, streams: int = 1) -> OpenVINONetwork:
    """A saved OpenVINO IR (e.g. a bundle's int8 model) compiled for inputs of ``input_shape``,
    reshaped when it was saved for another patch or batch size. Compiled models are kept
    in-process per (file, modification time, shape, threads)."""
    ov = _import_openvino()
    xml = Path(xml_path)
    shape = tuple(int(s) for s in input_shape)
    threads = int(num_threads or torch.get_num_threads())
    binf = xml.with_suffix(".bin")
    if not xml.is_file() or not binf.is_file():
        raise ResourceError(f"the OpenVINO model {xml} (or its .bin) does not exist")
    key = (f"{xml.resolve()}|{xml.stat().st_mtime_ns}|{binf.stat().st_mtime_ns}|{shape}", threads, streams)
    facts: dict[str, Any] = {"openvino_version": ov.__version__, "model": str(xml)}
    with _LOCK:
        hit = _COMPILED.get(key)
        if hit is not None:
            return OpenVINONetwork(hit, shape, {**facts, "cache": "memory", "compile_seconds": 0.0})
        core = ov.Core()
        t0 = time.perf_counter()
        try:
            om = core.read_model(str(xml), str(binf))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors
            raise ResourceError(f"cannot read the OpenVINO model {xml}: {str(exc).splitlines()[0]}") from exc
        saved = om.inputs[0].get_partial_shape()
        facts["saved_input_shape"] = str(saved)  # traced IRs keep dynamic dimensions ("?")
        if not saved.is_static or tuple(saved.to_shape()) != shape:  # static shapes compile to faster kernels
            om.reshape({om.inputs[0]: ov.PartialShape(list(shape))})
        facts["input_shape"] = list(shape)
        compiled = core.compile_model(om, "CPU", _cpu_config(threads, streams))
        facts["compile_seconds"] = round(time.perf_counter() - t0, 3)
        _COMPILED[key] = compiled
    return OpenVINONetwork(compiled, shape, facts)
