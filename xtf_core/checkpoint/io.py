"""Move tensor bytes between files: raw range copies, range reads, and torch <-> bytes (torch imported lazily).

Reading for `load` has two paths: a memory map whose pages become the tensors (no copy at all; with a
lockfile, the hasher reads the same map once), and a staged copy to an accelerator through pinned buffers
that a hasher sees on the way (the host never holds the model).
"""

from __future__ import annotations

import ctypes
import errno
import math
import mmap
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xtf_core.checkpoint.header import DTYPE_SIZES

if TYPE_CHECKING:
    import torch

COPY_CHUNK = 64 * 1024 * 1024
_KERNEL_COPY_UNAVAILABLE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_range(fd: int, offset: int, nbytes: int) -> bytearray:
    """Exactly `nbytes` bytes at `offset` (a short file is an error, not a short read)."""
    buffer = bytearray(nbytes)
    read_into(fd, offset, memoryview(buffer))
    return buffer


def read_into(fd: int, offset: int, view: memoryview) -> None:
    """Fill `view` with the bytes at `offset` (the kernel copies straight into it; the GIL is released)."""
    done, nbytes = 0, len(view)
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"unexpected end of file at offset {offset + done}")
        done += got


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux), or None where the platform has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing `fd`'s dirty pages now (asynchronously), so the final fsync that
    makes the output durable overlaps the copy instead of following it. A no-op where unsupported."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def copy_range(src_fd: int, offset: int, nbytes: int, dst_fd: int) -> None:
    """Append `nbytes` of `src_fd` starting at `offset` to `dst_fd` without decoding them.

    Uses copy_file_range (reflinks or in-kernel copies where the filesystem allows), then sendfile, then a
    buffered copy; the destination's file position advances by `nbytes`.
    """
    done = 0
    for kernel_copy in (_copy_file_range, _sendfile):
        try:
            while done < nbytes:
                moved = kernel_copy(src_fd, offset + done, min(nbytes - done, COPY_CHUNK), dst_fd)
                if moved == 0:
                    break
                done += moved
                start_writeback(dst_fd)
            if done == nbytes:
                return
        except OSError as exc:
            if exc.errno not in _KERNEL_COPY_UNAVAILABLE:
                raise
    while done < nbytes:
        chunk = read_range(src_fd, offset + done, min(nbytes - done, COPY_CHUNK))
        write_all(dst_fd, chunk)
        done += len(chunk)
        start_writeback(dst_fd)


def _copy_file_range(src_fd: int, offset: int, count: int, dst_fd: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise OSError(errno.ENOSYS, "copy_file_range unavailable")
    return os.copy_file_range(src_fd, dst_fd, count, offset)


def _sendfile(src_fd: int, offset: int, count: int, dst_fd: int) -> int:
    return os.sendfile(dst_fd, src_fd, offset, count)


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype for a safetensors dtype code."""
    import torch

    return {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "I16": torch.int16,
        "U16": torch.uint16,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I32": torch.int32,
        "U32": torch.uint32,
        "F32": torch.float32,
        "I64": torch.int64,
        "U64": torch.uint64,
        "F64": torch.float64,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
    }[code]


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors dtype code for a torch dtype."""
    import torch

    codes = {
        torch.bool: "BOOL",
        torch.uint8: "U8",
        torch.int8: "I8",
        torch.int16: "I16",
        torch.uint16: "U16",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int32: "I32",
        torch.uint32: "U32",
        torch.float32: "F32",
        torch.int64: "I64",
        torch.uint64: "U64",
        torch.float64: "F64",
        torch.float8_e4m3fn: "F8_E4M3",
        torch.float8_e5m2: "F8_E5M2",
    }
    if dtype not in codes:
        raise TypeError(f"dtype {dtype} cannot be stored in safetensors")
    return codes[dtype]


def tensor_from_bytes(buffer: bytearray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    if not buffer:
        return torch.empty(shape, dtype=torch_dtype(dtype))
    return torch.frombuffer(buffer, dtype=torch_dtype(dtype)).reshape(shape)


def tensor_memory(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory (no copy, and no numpy needed).

    The view keeps the tensor alive for as long as it exists.
    """
    import torch

    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("tensor_memory needs a contiguous CPU tensor")
    if tensor.numel() == 0:
        return memoryview(bytearray())
    raw = tensor.detach().reshape(-1).view(torch.uint8)
    array = (ctypes.c_char * raw.numel()).from_address(raw.data_ptr())
    array._tensor = raw  # the memory belongs to the tensor: keep it alive with the view
    return memoryview(array).cast("B")


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The little-endian bytes of a tensor in C order (a view where the tensor is already contiguous)."""
    return tensor_memory(tensor.detach().to("cpu").contiguous())


def map_file(fd: int, size: int) -> mmap.mmap | None:
    """A private (copy-on-write) map of a whole file: its pages are the page cache's until written to, so
    tensors made from it cost no copy. None for an empty file (nothing to map)."""
    if size == 0:
        return None
    mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    if hasattr(mmap, "MADV_WILLNEED"):
        mapping.madvise(mmap.MADV_WILLNEED)  # start read-ahead now for the pages not yet cached
    return mapping


def tensor_in_map(mapping: mmap.mmap | None, offset: int, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor whose bytes sit at `offset` of a mapped file, as a view of the map (no copy).

    A tensor whose offset is not a multiple of its item size (legal in safetensors, never written by xtf) is
    copied instead, so no kernel ever sees a misaligned pointer. The tensor keeps the map alive.
    """
    import torch

    code = torch_dtype(dtype)
    count = math.prod(shape)
    if count == 0 or mapping is None:
        return torch.empty(shape, dtype=code)
    itemsize = DTYPE_SIZES[dtype]
    if offset % itemsize:
        raw = torch.frombuffer(mapping, dtype=torch.uint8, count=count * itemsize, offset=offset)
        return raw.clone().view(code).reshape(shape)
    return torch.frombuffer(mapping, dtype=code, count=count, offset=offset).reshape(shape)


def hash_map(mapping: mmap.mmap | None, hasher: Any) -> None:
    """Feed a mapped file's bytes to `hasher`, in order, as views of the map (no copy; a hasher on another
    thread may keep them)."""
    if mapping is None:
        return
    view = memoryview(mapping)
    for start in range(0, len(view), COPY_CHUNK):
        hasher.update(view[start : start + COPY_CHUNK])


class DeviceStager:
    """Copy file byte ranges into accelerator tensors through pinned host buffers, one window at a time.

    The file is read window by window (`preadv` straight into a pinned buffer, GIL released) while the
    previous window's asynchronous copies run, so reading and the host-to-device transfer overlap; a hasher
    sees every byte of every window in file order, so a locked file is hashed in the same pass.
    """

    WINDOW = 64 * 2**20

    def __init__(self, device: torch.device, buffers: int = 2):
        import torch

        self.device = device
        self.torch = torch
        self.buffers = [torch.empty(self.WINDOW, dtype=torch.uint8, pin_memory=True) for _ in range(buffers)]
        self.events: list[Any] = [None] * buffers
        self.turn = 0

    def copy_file(
        self, fd: int, start: int, end: int, targets: list[tuple[int, torch.Tensor]], hasher: Any = None
    ) -> None:
        """Fill every (file offset, device tensor) of `targets` (sorted by offset, inside [start, end)) from
        the file; the hasher (if any) sees every byte of [start, end)."""
        targets = [(offset, tensor.reshape(-1).view(self.torch.uint8)) for offset, tensor in targets]
        first = 0
        for window in range(start, end, self.WINDOW):
            length = min(self.WINDOW, end - window)
            slot = self.turn % len(self.buffers)
            self.turn += 1
            if self.events[slot] is not None:
                self.events[slot].synchronize()  # its previous copies are done: the buffer may be refilled
            if hasher is not None and hasattr(hasher, "flush"):
                hasher.flush()  # a hasher on another thread has finished with the buffer too
            buffer = self.buffers[slot]
            view = tensor_memory(buffer)[:length]
            read_into(fd, window, view)
            if hasher is not None:
                hasher.update(view)
            while first < len(targets) and targets[first][0] + targets[first][1].numel() <= window:
                first += 1
            for offset, raw in targets[first:]:
                if offset >= window + length:
                    break
                lo, hi = max(offset, window), min(offset + raw.numel(), window + length)
                if hi > lo:
                    raw[lo - offset : hi - offset].copy_(buffer[lo - window : hi - window], non_blocking=True)
            event = self.torch.cuda.Event() if self.device.type == "cuda" else None
            if event is not None:
                event.record()
            self.events[slot] = event

    def finish(self) -> None:
        for event in self.events:
            if event is not None:
                event.synchronize()
        if self.device.type == "cuda":
            self.torch.cuda.current_stream(self.device).synchronize()
