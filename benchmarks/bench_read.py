"""Reading speed of napari-samlab against plain SimpleITK.

Builds, in a temporary folder, a 61-file DICOM series from the real lung2
chest CT (/work/shared/data/ct_chest_lung2/lung2_image.nrrd, 512×512×61) with
SimpleITK's ImageFileWriter, plus a NIfTI copy, then times interleaved runs:

- DICOM: ``napari_samlab.io.dicom.read_dicom_series`` (and ``read_image`` on the
  folder, if io/readers.py exists) vs SimpleITK ``ImageSeriesReader`` with
  ``GetGDCMSeriesFileNames``;
- NIfTI: ``napari_samlab.io.readers.read_image`` vs ``sitk.ReadImage``.

Prints the median times and ratios (target: <= 1.2× SimpleITK) and checks
that the arrays are identical.

Usage::

    python benchmarks/bench_read.py [--runs 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import dicom_helpers as h  # noqa: E402

from napari_samlab.io.dicom import read_dicom_series  # noqa: E402

try:
    from napari_samlab.io.readers import read_image
except ImportError:  # io/readers.py not written yet: DICOM reader only
    read_image = None


def sitk_dicom(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def sitk_file(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vol = sitk.ReadImage(str(h.LUNG2))
        t0 = time.perf_counter()
        files = h.write_sitk_series(vol, tmp / "dicom")
        print(f"wrote {len(files)} DICOM files ({vol.GetSize()}) in {time.perf_counter() - t0:.2f} s")
        nii = tmp / "lung2.nii.gz"
        sitk.WriteImage(vol, str(nii))

        cases = {
            "dicom: samlab read_dicom_series": lambda: read_dicom_series(tmp / "dicom")[0].array,
            "dicom: SimpleITK ImageSeriesReader": lambda: sitk_dicom(tmp / "dicom"),
        }
        if read_image is not None:
            cases["dicom: samlab read_image(folder)"] = lambda: read_image(tmp / "dicom").array
            cases["nifti: samlab read_image"] = lambda: read_image(nii).array
            cases["nifti: SimpleITK ReadImage"] = lambda: sitk_file(nii)

        # warm-up (page cache, imports) and correctness
        results = {name: fn() for name, fn in cases.items()}
        ref = results["dicom: SimpleITK ImageSeriesReader"]
        for name, arr in results.items():
            if name.startswith("dicom"):
                assert arr.dtype == ref.dtype and np.array_equal(arr, ref), name
        if read_image is not None:
            assert np.array_equal(results["nifti: samlab read_image"], results["nifti: SimpleITK ReadImage"])

        times = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved so that machine load hits all alike
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) for name, v in times.items()}
        for name, v in med.items():
            print(f"{name:40s} median {v * 1000:8.1f} ms  (min {min(times[name]) * 1000:.1f})")
        ratios = {"dicom read_dicom_series / SimpleITK": med["dicom: samlab read_dicom_series"]
                  / med["dicom: SimpleITK ImageSeriesReader"]}
        if read_image is not None:
            ratios["dicom read_image / SimpleITK"] = (med["dicom: samlab read_image(folder)"]
                                                      / med["dicom: SimpleITK ImageSeriesReader"])
            ratios["nifti read_image / SimpleITK"] = (med["nifti: samlab read_image"]
                                                      / med["nifti: SimpleITK ReadImage"])
        else:
            print("io/readers.py has no read_image yet: NIfTI not timed")
        ok = True
        for name, r in ratios.items():
            flag = "ok" if r <= 1.2 else "SLOWER than target 1.2x"
            ok &= r <= 1.2
            print(f"ratio {name:40s} {r:5.2f}x  {flag}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
