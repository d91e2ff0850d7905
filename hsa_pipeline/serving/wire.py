"""What comes over the wire to `hsa serve`, and its checks before any work: openpi's
msgpack with numpy arrays as openpi's msgpack_numpy writes them ({"__ndarray__": True,
"data", "dtype", "shape"}; plain numeric dtypes only), and images sent as JPEG/PNG bytes,
their size checked from the header before a pixel is decoded."""

from __future__ import annotations

import contextlib
import io

import msgpack
import numpy as np

from ..errors import UserError


class ObservationError(UserError):
    """An observation the policy cannot take; the message goes back to that client."""


def _encode(obj):
    """msgpack hook: numpy arrays and scalars as openpi's msgpack_numpy writes them."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in "biuf":
        raise TypeError(f"cannot send an array of dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        obj = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def _decode(obj: dict):
    """msgpack hook, the inverse of _encode. Only plain numeric dtypes: an object dtype
    would turn the sender's bytes into pointers."""
    if b"__ndarray__" in obj or b"__npgeneric__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind not in "biuf":
            raise ObservationError(f"arrays of dtype {dtype} are not accepted (numbers only)")
        if b"__npgeneric__" in obj:
            return dtype.type(obj[b"data"])
        shape = tuple(int(n) for n in obj[b"shape"])
        if len(obj[b"data"]) != dtype.itemsize * int(np.prod(shape)):
            raise ObservationError(f"an array of shape {shape} and dtype {dtype} does not fit its {len(obj[b'data'])} bytes")
        return np.frombuffer(obj[b"data"], dtype=dtype).reshape(shape)
    return obj


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes):
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except ObservationError:
        raise
    except Exception as e:  # msgpack's own errors: not a message of this protocol
        raise ObservationError(f"not a msgpack message ({type(e).__name__}: {e})") from None


def decode_image(data: bytes, stream: str, size: tuple[int, int]) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8, refusing any other size from the header alone:
    a small file can claim a huge frame (a 419 KB PNG of 12000x12000 pixels), and decoding it
    first would cost hundreds of MB and seconds."""
    from PIL import Image

    h, w = size
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:  # PIL's own guard, from the header too (pixel_limit)
        raise ObservationError(f"stream '{stream}': expected an image of {w}x{h} pixels (the recorded size), "
                               f"the bytes claim far more ({e}); nothing was decoded") from None
    except Exception as e:  # PIL raises many kinds
        raise ObservationError(f"stream '{stream}': bytes that do not decode as an image ({e})") from None
    if image.size != (w, h):
        raise ObservationError(f"stream '{stream}': expected an image of {w}x{h} pixels (the recorded size), "
                               f"the bytes hold {image.size[0]}x{image.size[1]}; nothing was decoded")
    try:
        return np.asarray(image.convert("RGB"))
    except Exception as e:
        raise ObservationError(f"stream '{stream}': bytes that do not decode as an image ({e})") from None


@contextlib.contextmanager
def pixel_limit(sizes: dict[str, tuple[int, int]]):
    """PIL's decompression-bomb limit from the largest frame the policy takes (a second
    guard behind the header check; PIL warns at the limit and refuses at twice it), while
    the server runs: the limit is process-wide, so a server run inside another program
    puts the old one back when it stops."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(h * w for h, w in sizes.values())
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before
