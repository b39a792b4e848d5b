"""Cases for the propagation robustness suite (``eval_propagation.py --suite``).

Three kinds, each a ``Case(name, kind, volume, truth, modality)``:

* **real** objects from ``sample_data/`` (in the repository): the Colin27
  brain (its mask), the whole head, one lateral ventricle (dark CSF deep
  inside the brain mask: the largest dark 3D component near the centre, one
  side of the midline),
  the lung2 tumour and the right lung (air inside the body on CT);
* **perturbed** copies of the real ones (and of the public lesions on
  thick slices: noise, bias field, half resolution, every 2nd slice of the
  7-slice tumour), made harder as real data is:
  every 2nd / 3rd slice only (5 mm CT becomes 10 / 15 mm, like the 6.5 mm
  MRI of brain tumours), Gaussian noise, a bias field, contrast inversion
  (MRI), MRI normalised to zero mean or with NaN outside the head, CT stored
  unsigned (HU + 1024) and half the in-plane resolution; noise, bias field
  and resampling are TorchIO's transforms (``pip install .[bench]``), seeded;
* **synthetic** volumes with known truth: bright / dark ellipsoids, a small
  object on thick slices, a lobulated "tumour" on 7 thick slices inside a
  brain-like background, soft borders, an object touching a neighbour of
  the same intensity, and small low-contrast "deep grey" structures
  embedded in similar tissue (hippocampus / thalamus / putamen-like), thin
  and thick slices.

Every generator is deterministic (fixed seeds), so the table is
reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
DATA = Path(__file__).resolve().parent / "data"  # evaluation-only volumes (benchmarks/data/README.md)


@dataclass
class Case:
    name: str
    kind: str  # "real", "perturbed", "synthetic"
    volume: np.ndarray  # (Z, Y, X)
    truth: np.ndarray  # bool (Z, Y, X)
    modality: str  # "CT" or "MR"
    spacing: tuple = None  # (slice, row, column) mm, as propagation takes it; None: isotropic
    group: str = ""  # the kind of data, as issue 11's 2D check groups cases ("" = the case alone)


def _read(name, folder=SAMPLES):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))


def _spacing(name, folder=SAMPLES):
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(folder / name))
    r.ReadImageInformation()
    return tuple(float(v) for v in r.GetSpacing()[::-1])


def _largest(mask, near=None):
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())[1:].astype(float)
    if near is not None:  # favour components near a point (distance in voxels)
        com = ndi.center_of_mass(mask, lab, np.arange(1, n + 1))
        d = np.array([np.linalg.norm(np.subtract(c, near)) for c in com])
        sizes = sizes / (1.0 + (d / 20.0) ** 2)
    return lab == int(np.argmax(sizes)) + 1


def _fill2d(mask):
    return np.stack([ndi.binary_fill_holes(m) for m in mask])


# -- real objects ---------------------------------------------------------
def real_cases() -> list:
    t1 = _read("mri_brain_colin27_t1.nii.gz")
    brain = _read("mri_brain_colin27_brain_mask.nii.gz") > 0
    ct = _read("ct_chest_lung2.nrrd")
    tumour = _read("ct_chest_lung2_tumour.nrrd") == 1
    sp_mr, sp_ct = _spacing("mri_brain_colin27_t1.nii.gz"), _spacing("ct_chest_lung2.nrrd")
    cases = [Case("brain", "real", t1, brain, "MR", sp_mr), Case("lung tumour", "real", ct, tumour, "CT", sp_ct)]
    # whole head: everything brighter than the air, holes filled per slice
    head = _fill2d(_largest(ndi.binary_opening(t1 > 20, iterations=2)))
    cases.append(Case("head", "real", t1, head, "MR", sp_mr))
    # lateral ventricles: dark CSF well inside the brain, largest dark
    # component near the brain's centre (they are one connected system)
    inner = ndi.binary_erosion(brain, iterations=8)
    vals = t1[brain]
    csf = (t1 < np.percentile(vals, 8)) & inner
    csf = ndi.binary_opening(csf, iterations=1)
    centre = ndi.center_of_mass(brain)
    vent = ndi.binary_closing(_largest(csf, near=centre), iterations=1) & inner
    # one lateral ventricle (one box names one object): the half beyond the midline
    vent[:, :, int(round(centre[2])):] = False
    vent = _largest(vent)
    cases.append(Case("lateral ventricle", "real", t1, vent, "MR", sp_mr))
    # right lung: air (< -400 HU) inside the body, the image's left half
    body = _fill2d(_largest(ct > -400))
    air = (ct < -400) & body
    air[:, :, ct.shape[2] // 2:] = False
    lung = _largest(ndi.binary_opening(air, iterations=2))
    cases.append(Case("right lung", "real", ct, _fill2d(lung) & air | lung, "CT", sp_ct))
    return cases


# -- perturbations (the same objects, harder) -----------------------------
def _tio_apply(volume, transform, label=None):
    import torch
    import torchio as tio

    subj = dict(img=tio.ScalarImage(tensor=torch.from_numpy(volume.astype(np.float32)[None])))
    if label is not None:
        subj["lab"] = tio.LabelMap(tensor=torch.from_numpy(label.astype(np.uint8)[None]))
    out = transform(tio.Subject(**subj))
    img = out["img"].data[0].numpy()
    lab = out["lab"].data[0].numpy() > 0 if label is not None else None
    return img, lab


def perturbed(case: Case, which: str, seed: int = 0) -> Case:
    """``case`` made harder: ``z2``/``z3`` (every 2nd / 3rd slice), ``noise``,
    ``bias``, ``invert`` (MRI), ``zscore`` (MRI intensities normalised to
    zero mean and unit variance, TorchIO's ``ZNormalization``), ``nan`` (MRI
    with NaN where there is no data), ``offset``
    (CT stored unsigned as HU + 1024) or ``lowres`` (half the in-plane
    resolution)."""
    import torch
    import torchio as tio

    torch.manual_seed(seed)
    v, t = case.volume, case.truth
    name = f"{case.name} [{which}]"
    if which in ("z2", "z3"):
        k = int(which[1])
        zs = np.flatnonzero(t.any((1, 2)))
        mid = (zs[0] + zs[-1]) // 2  # keep the prompted slice
        sel = np.arange(mid % k, v.shape[0], k)
        sp = None if case.spacing is None else (case.spacing[0] * k,) + tuple(case.spacing[1:])
        return Case(name, "perturbed", v[sel], t[sel], case.modality, sp)
    if which == "noise":
        lo, hi = np.percentile(v[t], [5, 95]) if t.any() else (0, 1)
        spread = float(np.percentile(v, 99) - np.percentile(v, 1))
        std = 0.06 * spread
        img, _ = _tio_apply(v, tio.RandomNoise(mean=0.0, std=(std, std)))
        return Case(name, "perturbed", img, t, case.modality, case.spacing)
    if which == "bias":
        if case.modality == "CT":  # CT has no bias field: a beam-hardening-like ramp instead
            zz, yy, xx = np.indices(v.shape, dtype=np.float32)
            ramp = 60.0 * (xx / v.shape[2] - 0.5)
            return Case(name, "perturbed", v + ramp.astype(v.dtype if v.dtype.kind == "f" else np.float32), t, case.modality,
                        case.spacing)
        img, _ = _tio_apply(v, tio.RandomBiasField(coefficients=0.5, order=3))  # TorchIO's default range
        return Case(name, "perturbed", img, t, case.modality, case.spacing)
    if which == "invert":
        vf = v.astype(np.float32)
        fg = vf > 0
        inv = np.where(fg, vf.max() - vf + 1, 0)  # background stays 0 (as in MRI)
        return Case(name, "perturbed", inv, t, case.modality, case.spacing)
    if which == "zscore":
        # intensity normalisation as many MRI pipelines store it (nnU-Net,
        # BraTS): zero mean, unit variance over the head, so half the tissue
        # is negative and the background a negative constant
        img, _ = _tio_apply(v, tio.ZNormalization(masking_method=lambda x: x > 0))
        return Case(name, "perturbed", img, t, case.modality, case.spacing)
    if which == "nan":
        # float volumes as SPM / FSL write them: NaN where there is no data (outside the head)
        img = np.where(v > 0, v.astype(np.float32), np.float32(np.nan))
        return Case(name, "perturbed", img, t, case.modality, case.spacing)
    if which == "offset":
        # CT as many scanners store it: unsigned, HU + 1024 (air at 0 rather than -1000)
        img = np.clip(v.astype(np.int32) + 1024, 0, 65535).astype(np.uint16)
        return Case(name, "perturbed", img, t, case.modality, case.spacing)
    if which == "lowres":
        img, lab = _tio_apply(v, tio.Resample((1.0, 2.0, 2.0), image_interpolation="linear"), t)
        sp = None if case.spacing is None else (case.spacing[0], 2 * case.spacing[1], 2 * case.spacing[2])
        return Case(name, "perturbed", img, lab, case.modality, sp)
    raise ValueError(which)


# -- synthetic volumes with known truth -------------------------------------
def _ellipsoid(shape, centre, axes):
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    return sum(((g - c) / a) ** 2 for g, c, a in zip((zz, yy, xx), centre, axes))


def _lobulated(shape, centre, axes, rng, amount=0.25):
    """An ellipsoid with a bumpy surface (tumour-like)."""
    r = _ellipsoid(shape, centre, axes)
    bumps = ndi.gaussian_filter(rng.standard_normal(shape), (1, 4, 4))
    bumps /= bumps.std() + 1e-9
    return (r * np.clip(1 + amount * bumps, 0.6, 1.6) <= 1) & (r <= 1.7)


def _texture(shape, rng, scale=3.0):
    n = ndi.gaussian_filter(rng.standard_normal(shape), (0.5, scale, scale))
    return n / (n.std() + 1e-9)


def _to_mr(img):
    return np.clip(img * 1000, 0, 4000).astype(np.uint16)


def synthetic_cases() -> list:
    rng = np.random.default_rng(11)
    cases = []
    S = (48, 128, 128)

    def noisy(img, sd=0.03):
        return img + sd * rng.standard_normal(img.shape)

    # bright / dark ellipsoid on a textured background
    t = _ellipsoid(S, (24, 64, 60), (14, 30, 38)) <= 1
    bg = 0.35 + 0.03 * _texture(S, rng)
    cases.append(Case("syn bright ellipsoid", "synthetic", _to_mr(noisy(np.where(t, 0.75, bg))), t, "MR"))
    cases.append(Case("syn dark ellipsoid", "synthetic", _to_mr(noisy(np.where(t, 0.15, 0.6 + 0.03 * _texture(S, rng)))), t, "MR"))
    # brain-like background for the rest: an ellipse of "brain" in air
    Sb = (40, 160, 160)
    brain = _ellipsoid(Sb, (20, 80, 80), (40, 70, 60)) <= 1
    tissue = np.where(brain, 0.55 + 0.04 * _texture(Sb, rng), 0.02)
    # small object on thick slices: 5 slices
    t = _ellipsoid(Sb, (20, 70, 90), (2.6, 9, 8)) <= 1
    cases.append(Case("syn small bright, thick", "synthetic", _to_mr(noisy(np.where(t, 0.85, tissue))), t, "MR"))
    # lobulated tumour on 7 thick slices (6.5 mm MRI): large area changes
    t = _lobulated(Sb, (20, 80, 70), (3.6, 26, 22), rng)
    cases.append(Case("syn tumour, 7 thick slices", "synthetic", _to_mr(noisy(np.where(t, 0.9, tissue))), t, "MR"))
    t = _lobulated(Sb, (20, 90, 75), (2.2, 15, 13), rng)
    cases.append(Case("syn tumour, 3 thick slices", "synthetic", _to_mr(noisy(np.where(t, 0.85, tissue))), t, "MR"))
    # dark lesion (e.g. T1 hypointense) on thick slices
    t = _lobulated(Sb, (20, 75, 85), (3.2, 20, 18), rng)
    cases.append(Case("syn dark lesion, thick", "synthetic", _to_mr(noisy(np.where(t, 0.25, tissue))), t, "MR"))
    # soft border
    t = _ellipsoid(Sb, (20, 80, 80), (12, 25, 20)) <= 1
    soft = ndi.gaussian_filter(np.where(t, 0.85, 0.55), (1, 3, 3))
    cases.append(Case("syn soft border", "synthetic", _to_mr(noisy(np.where(brain, soft, 0.02))), t, "MR"))
    # touching a neighbour of the same intensity
    t = _ellipsoid(Sb, (20, 80, 64), (10, 18, 16)) <= 1
    nb = (_ellipsoid(Sb, (17, 80, 97), (12, 16, 17)) <= 1) & ~t
    cases.append(Case("syn touching neighbour", "synthetic", _to_mr(noisy(np.where(t | nb, 0.85, tissue))), t, "MR"))
    # deep grey structures embedded in white matter: low contrast, thin slices
    Sd = (72, 150, 150)
    brain = _ellipsoid(Sd, (36, 75, 75), (60, 68, 58)) <= 1
    wm = np.where(brain, 0.62 + 0.025 * _texture(Sd, rng), 0.02)
    # thalamus-like: contrast 0.08, a similar grey neighbour a few px away
    t = _ellipsoid(Sd, (36, 78, 60), (12, 14, 9)) <= 1
    nb = _ellipsoid(Sd, (30, 78, 86), (20, 14, 6)) <= 1
    img = np.where(t | nb, 0.54 + 0.025 * _texture(Sd, rng), wm)
    cases.append(Case("syn thalamus-like (low contrast)", "synthetic", _to_mr(noisy(ndi.gaussian_filter(img, 0.8), 0.02)), t, "MR"))
    # putamen-like: lens-shaped, contrast 0.06
    t = _ellipsoid(Sd, (36, 70, 95), (10, 16, 6)) <= 1
    img = np.where(t, 0.56 + 0.02 * _texture(Sd, rng), wm)
    cases.append(Case("syn putamen-like (low contrast)", "synthetic", _to_mr(noisy(ndi.gaussian_filter(img, 0.8), 0.02)), t, "MR"))
    # hippocampus-like: small, elongated, darker than WM, next to dark CSF
    t = _ellipsoid(Sd, (36, 95, 52), (7, 16, 5)) <= 1
    csf = (_ellipsoid(Sd, (36, 95, 44), (9, 18, 2.5)) <= 1) & ~t
    img = np.where(t, 0.5, np.where(csf, 0.2, wm))
    cases.append(Case("syn hippocampus-like (small)", "synthetic", _to_mr(noisy(ndi.gaussian_filter(img, 0.8), 0.02)), t, "MR"))
    # the thalamus-like object on 3 mm slices (every 3rd slice)
    c = cases[-3]
    cases.append(Case("syn thalamus-like, thick", "synthetic", c.volume[::3], c.truth[::3], "MR", (3.0, 1.0, 1.0)))
    return cases


def perturbed_cases(real: list) -> list:
    """The perturbations that apply to each real (or public) case."""
    out = []
    plans = {
        "brain": ("z2", "z3", "noise", "bias", "invert", "zscore", "nan", "lowres"),
        "lung tumour": ("z2", "noise", "bias", "offset", "lowres"),
        # the public lesions on thick slices, as harder scans of them would be
        "brain tumour 1 (6.5 mm MRI)": ("z2", "noise", "bias", "lowres"),
        "brain tumour 2 (6.5 mm MRI)": ("noise", "bias", "lowres"),
        "lung tumour 1 (5 mm CT)": ("noise", "bias", "lowres"),
        "breast lesion (MRI)": ("noise", "bias", "lowres"),
    }
    for c in real:
        for which in plans.get(c.name, ()):
            out.append(perturbed(c, which))
    return out


# -- public volumes that are not in sample_data -----------------------------
#: AAL labels (Tzourio-Mazoyer et al. 2002, drawn on this Colin27 brain) of
#: deep grey structures whose borders are soft on T1
AAL_DEEP = {37: "hippocampus L", 38: "hippocampus R", 41: "amygdala L", 42: "amygdala R",
            71: "caudate L", 72: "caudate R", 73: "putamen L", 74: "putamen R",
            75: "pallidum L", 76: "pallidum R", 77: "thalamus L", 78: "thalamus R"}


def public_cases() -> list:
    """Objects from public volumes of kinds sample_data/ lacks (``benchmarks/data/``).

    Brain tumours on 6.5 mm MRI (two), a lung tumour on 5 mm CT and a
    breast MRI lesion, each on 3-7 slices (pyradiomics' test data); a
    skull-stripped macaque brain from another scanner (INIA19); twelve deep
    grey structures of the AAL atlas on the Colin27 T1.  See
    ``benchmarks/data/README.md`` for sources and licences.
    """
    cases = []
    for name, stem, mod, group in (("brain tumour 1 (6.5 mm MRI)", "brain1", "MR", "MRI brain tumour"),
                                   ("brain tumour 2 (6.5 mm MRI)", "brain2", "MR", "MRI brain tumour"),
                                   ("lung tumour 1 (5 mm CT)", "lung1", "CT", "CT lung tumour"),
                                   ("breast lesion (MRI)", "breast1", "MR", "breast MRI lesion")):
        img = _read(f"{stem}_image.nrrd", DATA)
        cases.append(Case(name, "public", img, _read(f"{stem}_label.nrrd", DATA) == 1, mod,
                          _spacing(f"{stem}_image.nrrd", DATA), group))
    inia = _read("inia19_t1_brain.nii.gz", DATA)
    cases.append(Case("macaque brain, skull-stripped (INIA19)", "public", inia, inia > 0, "MR",
                      _spacing("inia19_t1_brain.nii.gz", DATA), "skull-stripped brain"))
    t1 = _read("mri_brain_colin27_t1.nii.gz")
    aal = _read("colin27_aal.nii.gz", DATA)
    sp = _spacing("mri_brain_colin27_t1.nii.gz")
    for value, name in AAL_DEEP.items():
        cases.append(Case(f"{name} (AAL on Colin27)", "public", t1, aal == value, "MR", sp,
                          "deep grey structure (T1)"))
    return cases


def all_cases(kinds=("real", "perturbed", "synthetic", "public")) -> list:
    real = real_cases() if {"real", "perturbed"} & set(kinds) else []
    public = public_cases() if {"public", "perturbed"} & set(kinds) else []
    cases = [c for c in real if "real" in kinds]
    if "perturbed" in kinds:
        cases += perturbed_cases(real + public)
    if "synthetic" in kinds:
        cases += synthetic_cases()
    if "public" in kinds:
        cases += public
    return cases
