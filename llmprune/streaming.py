"""Calibrated pruning of a checkpoint on disk, one decoder layer resident (the engine of `engine.py`, streamed).

The model is a meta-device skeleton. Calibration inputs are captured once (`capture_streamed`: modules
outside the layer list load when first called, then are freed); then every layer is loaded from the shards,
pruned by `engine.prune_layer_`, rerun to feed the next one, and its tensors written to `<out>.partial` on a
background thread while the next layer computes. The activations live on the GPU, in memory or in a mapped
file (`activation_placement`). A killed run restarted with the same arguments resumes after the last
finished layer by replaying the finished, pruned layers (`replay_`); the output shards are assembled at the
end from the saved layers and the untouched tensors, in the checkpoint's order.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from .allocation import Allocation, reuse
from .arch import arch_for
from .calib import calibration_for, context_length, describe_batch
from .config import PruneConfig
from .engine import (LayerInputs, batch_size_for, capture_inputs, check_method, dense_outlier_ratios, find_layers,
                     forward_layer_, prune_layer_, resolve_device, selected_linears)
from .errors import LlmpruneError
from .memory import return_free_pages, reuse_freed_memory
from .profile import Phases
from .resume import WorkState
from .skeleton import NameMap, build_skeleton, free_, materialise_

log = logging.getLogger(__name__)


def capture_streamed(model, layers_path, layers, ckpt, name_of, ids, batch_size, device, place=None) -> LayerInputs:
    """`capture_inputs` on the skeleton: modules outside the layer list are loaded when first called (mapped
    from the checkpoint: of the embedding only the rows looked up become resident), then freed."""
    loaded = []

    def owns_tensors(mod):
        return any(t is not None for t in (*mod._parameters.values(), *mod._buffers.values()))

    def load_on_call(name):
        def hook(mod, args):
            if any(t is not None and t.is_meta for t in (*mod._parameters.values(), *mod._buffers.values())):
                materialise_(mod, name, ckpt, name_of, model, device, recurse=False, mapped=True)
                loaded.append(mod)
        return hook

    outside = [(n, m) for n, m in model.named_modules()
               if n != layers_path and not n.startswith(layers_path + ".") and owns_tensors(m)]
    handles = [m.register_forward_pre_hook(load_on_call(n)) for n, m in outside]
    try:
        try:
            return capture_inputs(model, layers, ids, batch_size, device, place)
        except (NotImplementedError, RuntimeError) as e:
            if "meta" not in str(e):
                raise
            # A parameter was used outside its module's forward: load everything outside the layers.
            log.info("lazy loading failed (%s); loading all non-layer weights", str(e).splitlines()[0])
            for n, m in outside:
                if any(t is not None and t.is_meta for t in (*m._parameters.values(), *m._buffers.values())):
                    materialise_(m, n, ckpt, name_of, model, device, recurse=False, mapped=True)
                    loaded.append(m)
            return capture_inputs(model, layers, ids, batch_size, device, place)
    finally:
        for h in handles:
            h.remove()
        for m in loaded:
            free_(m, recurse=False)


class _SavedLayer:
    """A finished layer's saved tensors, read like a checkpoint (for `materialise_`)."""

    def __init__(self, infos: dict):
        self.infos = infos

    def read(self, name: str) -> torch.Tensor:
        from .io import read_tensor

        return read_tensor(self.infos[name])


@torch.no_grad()
def replay_(inputs: LayerInputs, layers, layers_path: str, state: WorkState, start: int, skeleton, name_of,
            device) -> None:
    """Turn layer 0's inputs into layer `start`'s by running them through the finished, pruned layers
    0..start-1 read back from the work dir (the caller runs with the original run's thread count)."""
    for i in range(start):
        prefix = f"{layers_path}.{i}"
        materialise_(layers[i], prefix, _SavedLayer(state.read_layer(i)), name_of, skeleton, device)
        forward_layer_(layers[i], i, inputs, device)
        free_(layers[i])


ACTIVATIONS = ("auto", "memory", "disk")


def activation_placement(cfg: PruneConfig, path: Path, device: torch.device | None = None):
    """`place(shape, dtype, name=None)` for the calibration activations (and, named, other per-sample buffers
    such as the sequential engine's kept inputs): on the GPU the layers run on, in memory, or in a file mapped
    into memory (`disk`; `path`, or a scratch file beside it for a named buffer, unlinked once mapped).
    `auto` picks the first that leaves half of its free memory free."""
    import psutil

    choice = cfg.extra.get("activations") or "auto"
    if choice not in ACTIVATIONS:
        raise LlmpruneError(f"Unknown --activations '{choice}'. Available: {', '.join(ACTIVATIONS)}.")

    def place(shape, dtype, name: str | None = None):
        n = math.prod(shape)
        nbytes = n * dtype.itemsize
        what = name or "calibration activations"
        if choice == "auto" and device is not None and device.type == "cuda" and \
                nbytes < torch.cuda.mem_get_info(device)[0] // 2:
            log.info("%s (%.0f MB) kept on %s", what, nbytes / 1e6, device)
            return torch.empty(shape, dtype=dtype, device=device)
        on_disk = choice == "disk" or (choice == "auto" and nbytes >= psutil.virtual_memory().available // 2)
        file = path if name is None else path.with_name(f"{path.stem}-{name}.bin")
        log.log(logging.INFO if name is None else logging.DEBUG, "%s (%.0f MB) kept %s", what, nbytes / 1e6,
                f"in {file}" if on_disk else "in memory")
        if not on_disk:
            return torch.empty(shape, dtype=dtype)
        t = torch.from_file(str(file), shared=True, size=n, dtype=dtype).view(shape)
        if name is not None:
            file.unlink()  # (the mapping keeps its pages until the tensor is freed; a crash leaves nothing)
        return t
    return place


def fingerprint(src: Path, ckpt, cfg: PruneConfig, ids: torch.Tensor, dtype, device) -> str:
    files = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in ckpt.files]
    settings = cfg.to_json()
    settings["extra"] = {k: v for k, v in settings["extra"].items() if k != "activations"}  # placement only
    blob = json.dumps([str(src), files, settings, describe_batch(ids, cfg.seed), str(dtype), device.type,
                       torch.__version__], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def calibration_ids(src: Path, ckpt, cfg: PruneConfig) -> torch.Tensor:
    """The seeded calibration batch from `cfg.calib`: token ids (calib_samples, seqlen) from its train split,
    or images (calib_samples, 3, h, w) for a vision model."""
    from transformers import AutoTokenizer

    from .calib_images import calibration_images, is_vision

    if is_vision(ckpt.config):
        return calibration_images(src, ckpt.config, cfg.calib, cfg.calib_samples, cfg.seed)
    return calibration_for(AutoTokenizer.from_pretrained(src), cfg, context_length(ckpt.config))


def prune_calibrated(model: str, src: Path, ckpt, select, names: list[str], out, cfg: PruneConfig, *,
                     overwrite: bool = False, fmt: str = "dense", step=None, calib: torch.Tensor | None = None,
                     on_layer=None, outliers: Allocation | None = None) -> dict:
    """Stream the checkpoint `ckpt` (at `src`) through Wanda/SparseGPT into `out`; returns the run record.

    `calib` (n, seqlen) overrides the batch drawn from `cfg.calib`; `on_layer(i)` is called after layer i is
    saved (tests use it to simulate a kill); `outliers`: an earlier OWL allocation of this checkpoint (a
    sweep's previous level) whose outlier ratios are reused (no first pass).
    """
    from .io import atomic_dir

    check_method(cfg)
    reuse_freed_memory()
    phases = Phases()
    t0 = time.perf_counter()
    device = resolve_device(cfg.extra.get("device"))
    ids = calib if calib is not None else calibration_ids(src, ckpt, cfg)
    return_free_pages()  # (what the tokenizer held)
    dtype = ckpt.info(names[0]).dtype
    skeleton = build_skeleton(src, ckpt.config, dtype)
    layers_path, layers = find_layers(skeleton, arch_for(ckpt.config))
    name_of = NameMap(skeleton, ckpt.names)
    targets = set(names)
    is_target = lambda key, shape: name_of(key) in targets  # noqa: E731
    timings = {"setup": time.perf_counter() - t0}

    with atomic_dir(out, overwrite, keep_partial=True) as work:
        state = WorkState(work / "engine", fingerprint(src, ckpt, cfg, ids, dtype, device))
        threads = torch.get_num_threads()
        try:
            start = state.done + 1
            with phases("allocation"):
                alloc = reuse(outliers, cfg) or streamed_allocation(
                    state, skeleton, layers_path, layers, ckpt, name_of, ids, is_target, cfg, device,
                    activation_placement(cfg, work / "engine" / "owl-acts.bin", device))
            t1 = time.perf_counter()
            if start < len(layers):  # (a run killed while assembling has every layer done already)
                with phases("capture"):
                    place = activation_placement(cfg, work / "engine" / "acts.bin", device)
                    inputs = capture_streamed(skeleton, layers_path, layers, ckpt, name_of, ids,
                                              batch_size_for(ids.shape[1], cfg), device, place)
                if start:
                    # float sums depend on how work is split across threads: keep the original split
                    log.info("resuming after layer %d of %d with its %d threads: recomputing its inputs",
                             start - 1, len(layers), state.threads)
                    torch.set_num_threads(state.threads)
                    with phases("replay"):
                        replay_(inputs, layers, layers_path, state, start, skeleton, name_of, device)
            per_layer = []
            for i in range(start, len(layers)):
                t = time.perf_counter()
                layer, prefix = layers[i], f"{layers_path}.{i}"
                with phases("load"):
                    materialise_(layer, prefix, ckpt, name_of, skeleton, device)
                    linears = selected_linears(layer, prefix, is_target)
                    names = {leaf: name_of(f"{prefix}.{leaf}.weight") for leaf in linears}
                    zeros_before = {names[leaf]: m.weight.numel() - int(torch.count_nonzero(m.weight))
                                    for leaf, m in linears.items()}
                prune_layer_(layer, i, linears, names, inputs, cfg, device, step, phases, alloc.sparsity(i),
                             rerun=i < len(layers) - 1)
                with phases("save"):  # the write itself runs on a thread while the next layer computes
                    tensors = {}
                    for key, v in layer.state_dict().items():
                        name = name_of(f"{prefix}.{key}")
                        if name is not None:
                            tensors[name] = v.to("cpu", ckpt.info(name).dtype).contiguous()
                    state.save_layer(i, tensors, zeros_before)
                    del tensors
                    free_(layer)
                    return_free_pages()
                per_layer.append(time.perf_counter() - t)
                if on_layer:
                    on_layer(i)
            with phases("save"):
                state.wait()
        finally:
            state.close()
            torch.set_num_threads(threads)
        timings["layers"] = time.perf_counter() - t1
        timings["per_layer_mean"] = sum(per_layer) / len(per_layer) if per_layer else 0.0
        inputs = None
        (work / "engine" / "acts.bin").unlink(missing_ok=True)

        t2 = time.perf_counter()
        with phases("assemble"):
            stats, total = assemble(work, state, ckpt, targets, select, cfg, fmt, step)
        timings["write"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0
        timings["profile"] = phases.summary()
        for f in state.root.iterdir():
            f.unlink()
        state.root.rmdir()
        from .record import run_record, sizes

        record = run_record(model, src, cfg, stats, timings, format=fmt, **sizes(ckpt, total), device=device.type,
                            calibration={**describe_batch(ids, cfg.seed),
                                             "source": cfg.calib or ("digits" if ids.is_floating_point() else "pydoc")},
                            resumed_after_layer=start - 1 if start else None, allocation=alloc.to_json())
        (work / "run.json").write_text(json.dumps(record, indent=2))
    return record


def streamed_allocation(state: WorkState, skeleton, layers_path, layers, ckpt, name_of, ids, is_target,
                        cfg: PruneConfig, device, place=None) -> Allocation:
    """The run's layer sparsities: OWL's first streamed pass over the dense layers (see
    `dense_outlier_ratios`), kept in the work dir so that a resumed run reuses it; uniform costs nothing."""
    if cfg.allocation == "uniform":
        return Allocation()
    saved = state.root / "allocation.json"
    if saved.exists():
        return Allocation.from_json(json.loads(saved.read_text()))
    inputs = capture_streamed(skeleton, layers_path, layers, ckpt, name_of, ids, batch_size_for(ids.shape[1], cfg),
                              device, place)
    alloc = dense_outlier_ratios(
        layers, inputs, lambda i, layer: selected_linears(layer, f"{layers_path}.{i}", is_target), cfg, device,
        load=lambda i, layer: materialise_(layer, f"{layers_path}.{i}", ckpt, name_of, skeleton, device), unload=free_)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps(alloc.to_json()))
    tmp.replace(saved)
    return alloc


def assemble(work: Path, state: WorkState, ckpt, targets: set[str], select, cfg: PruneConfig, fmt: str, step=None):
    """Write the output shards (same files and order as the input) from the saved layers and the checkpoint.

    `step` is called for every tensor not pruned here (the pruned ones were reported layer by layer).
    """
    from .io import copy_aux_files, read_safetensors_header, read_tensor
    from .output import write_checkpoint
    from .record import output_metadata
    from .report import SparsityStats

    pruned, zeros_before = {}, {}  # name -> TensorInfo in the saved layer files; name -> zeros before pruning
    for f in sorted(state.root.glob("layer-*.safetensors")):
        infos, meta = read_safetensors_header(f)
        pruned.update(infos)
        zeros_before.update(json.loads(meta.get("zeros_before", "{}")))
    stats = SparsityStats()

    def produce(name: str) -> torch.Tensor:
        w = read_tensor(pruned[name])
        if name in targets:
            stats.add(name, w, *select.describe(name), zeros_before=zeros_before.get(name, 0))
        return w

    copy_aux_files(ckpt.path, work)
    total = write_checkpoint(ckpt, work, set(pruned), fmt, output_metadata(cfg), produce, cfg,
                             step=(lambda n: n in targets or step(n)) if step else None, packed=targets)
    return stats, total
