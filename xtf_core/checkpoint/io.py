"""Move tensor bytes between files: raw range copies, range reads, and torch <-> bytes (torch imported lazily)."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

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
    view = memoryview(buffer)
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"unexpected end of file at offset {offset + done}")
        done += got
    return buffer


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
