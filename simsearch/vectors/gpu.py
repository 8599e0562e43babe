"""GPU placement: how many GPUs FAISS sees, one resource object per GPU, copies to and from the GPU, CAGRA."""

from __future__ import annotations

from typing import Any

import faiss


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 with a CPU-only build or no GPU)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def on_cpu(index: Any) -> Any:
    """What is written to disk: the index itself, or a CPU copy of a GPU one (files are always CPU indexes)."""
    return faiss.index_gpu_to_cpu(index) if is_on_gpu(index) else index


_GPU_RESOURCES: dict[int, Any] = {}


def gpu_resources(device: int = 0) -> Any:
    """One ``StandardGpuResources`` per GPU for the whole process (FAISS's advice: they hold scratch memory,
    and they must outlive every index placed with them)."""
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[device]


def to_gpu(index: Any, device: int = 0, float16: bool = False) -> Any:
    """A GPU copy of ``index`` when FAISS sees a GPU, else ``index`` itself. ``float16``: flat and IVF-Flat
    vectors are held as float16 on the GPU (half the memory; distances rounded to about 3 digits).

    If FAISS cannot place this index on the GPU (no memory, an index type without a GPU version), the CPU
    index is returned: search still works, only slower.
    """
    if gpu_count() == 0:
        return index
    options = faiss.GpuClonerOptions()
    options.useFloat16 = float16
    try:
        copy: Any = faiss.index_cpu_to_gpu(gpu_resources(device), device, index, options)
    except RuntimeError:
        return index
    # A GPU CAGRA index reads its vectors from the CPU index it was copied from: that one must outlive it.
    copy.referenced_objects = [*getattr(copy, "referenced_objects", []), index]
    return copy


def cagra_available() -> bool:
    """True when this FAISS build has CAGRA (cuVS) and sees a GPU: the ``cagra`` index type can be built."""
    return gpu_count() > 0 and hasattr(faiss, "GpuIndexCagra")


def is_on_gpu(index: Any) -> bool:
    """True when the index, or the index an ``IndexIDMap`` wraps, lives on a GPU."""
    return any(type(part).__name__.startswith("Gpu") for part in _layers(index))


def _layers(index: Any) -> list[Any]:
    """The index and, for an ``IndexIDMap``, the index it wraps (downcast to its own class)."""
    inner = getattr(index, "index", None)
    return [index] if inner is None else [index, faiss.downcast_index(inner)]


def is_cagra_on_gpu(index: Any) -> bool:
    return any(type(part).__name__ == "GpuIndexCagra" for part in _layers(index))
