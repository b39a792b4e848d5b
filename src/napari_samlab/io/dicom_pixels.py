"""DICOM pixel data: decoding (native, compressed, GDCM fallback), stored bits, output type after rescaling."""
from __future__ import annotations

import numpy as np

from ..errors import SamlabError


def damaged(path, err=None) -> SamlabError:
    why = f" ({type(err).__name__}: {err})" if err is not None else ""
    return SamlabError(
        f"{path} is a DICOM file that cannot be read{why}: it is probably truncated "
        "or damaged; copy it again or remove it from the folder"
    )


def pixel_bits(ds):
    return (int(ds.get("BitsAllocated", 16)), int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
            int(ds.get("PixelRepresentation", 0)), int(ds.get("SamplesPerPixel", 1)))


def _clean_bits(arr: np.ndarray, stored: int) -> np.ndarray:
    """Drop bits above BitsStored (overlay bits) and sign-extend, as GDCM does."""
    nbits = arr.dtype.itemsize * 8
    if stored >= nbits or arr.dtype.kind not in "iu":
        return arr
    if arr.dtype.kind == "i":
        shift = nbits - stored
        return (arr << shift) >> shift
    return arr & np.asarray((1 << stored) - 1, arr.dtype)


def decode(path, ds) -> tuple:
    """(frames array (n, rows, cols[, spp]) of stored values, already_rescaled)."""
    alloc, stored, signed, spp = pixel_bits(ds)
    rows, cols = int(ds.Rows), int(ds.Columns)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    native = ts is None or (not ts.is_compressed and ts.is_little_endian)
    try:
        if native and spp == 1 and alloc in (8, 16, 32) and "PixelData" in ds:
            raw = ds.PixelData
            dtype = np.dtype(f"{'i' if signed else 'u'}{alloc // 8}").newbyteorder("<")
            count = n * rows * cols
            if len(raw) < count * dtype.itemsize:
                raise SamlabError(
                    f"{path} is truncated (its pixel data holds {len(raw)} of "
                    f"{count * dtype.itemsize} bytes): copy the file again"
                )
            arr = np.frombuffer(raw, dtype, count=count).reshape(n, rows, cols)
            return _clean_bits(arr, stored), False
        arr = np.asarray(ds.pixel_array)
    except SamlabError:
        raise
    except Exception as err:
        # e.g. a transfer syntax pydicom has no decoder for: let GDCM try
        try:
            import SimpleITK as sitk

            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            return arr.reshape((n, rows, cols) + arr.shape[3:] if arr.ndim > 3 else (n, rows, cols)), True
        except Exception:
            raise SamlabError(
                f"cannot decode the pixel data of {path} "
                f"(transfer syntax {getattr(ts, 'name', ts)}: {err}): the file is "
                "damaged or uses a compression neither pydicom nor GDCM can read; "
                "convert it to uncompressed DICOM (e.g. gdcmconv --raw)"
            ) from None
    shape = (n, rows, cols) + ((spp,) if spp > 1 else ())
    if arr.size != int(np.prod(shape)):
        raise damaged(path, ValueError(f"pixel data has {arr.size} values, expected {np.prod(shape)}"))
    arr = arr.reshape(shape)
    return (_clean_bits(arr, stored) if spp == 1 else arr), False


def _int_fit(lo: float, hi: float):
    if lo >= 0:
        for t in (np.uint8, np.uint16, np.uint32, np.uint64):
            if hi <= np.iinfo(t).max:
                return np.dtype(t)
    else:
        for t in (np.int8, np.int16, np.int32, np.int64):
            if lo >= np.iinfo(t).min and hi <= np.iinfo(t).max:
                return np.dtype(t)
    return np.dtype(np.float64)


def output_dtype(ds, rescales) -> np.dtype:
    """The pixel type GDCM/ITK produce for these stored bits and rescale values.

    GDCM keeps the stored type without rescale, uses float64 for non-integer
    slope/intercept and otherwise the smallest integer type holding the full
    stored range after rescaling (so int16 stored + intercept -1024 is int32).
    """
    alloc, stored, signed, spp = pixel_bits(ds)
    if alloc not in (8, 16, 32, 64):
        alloc = 8 if alloc <= 8 else 16
    base = np.dtype(f"{'i' if signed else 'u'}{alloc // 8}")
    if spp > 1 or all(s == 1 and i == 0 for s, i in rescales):
        return base
    if any(s != int(s) or i != int(i) for s, i in rescales):
        return np.dtype(np.float64)
    lo_s, hi_s = ((-(2 ** (stored - 1)), 2 ** (stored - 1) - 1) if signed else (0, 2 ** stored - 1))
    lo = min(min(s * lo_s + i, s * hi_s + i) for s, i in rescales)
    hi = max(max(s * lo_s + i, s * hi_s + i) for s, i in rescales)
    return _int_fit(lo, hi)
