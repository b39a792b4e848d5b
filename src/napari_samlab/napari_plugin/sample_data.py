"""npe2 sample data: real CT, MRI, microscopy and histology with their labels."""
from __future__ import annotations

from pathlib import Path
from typing import List

from ..io.readers import read_image
from .layers import image_layer_data


def sample_dir() -> Path:
    """The bundled samples: ``napari_samlab/sample_data`` (a link to the
    repository's ``sample_data/`` in a checkout, real files in a wheel)."""
    folder = Path(__file__).resolve().parents[1] / "sample_data"
    if not (folder / "ct_chest_lung2.nrrd").exists():
        raise FileNotFoundError(f"napari-samlab's sample data is missing from {folder}: reinstall the package")
    return folder


def _pair(image_file: str, label_file: str | None, image_name: str, label_name: str) -> List[tuple]:
    folder = sample_dir()
    layers = [image_layer_data(read_image(folder / image_file), name=image_name, as_labels=False)]
    if label_file:
        layers.append(image_layer_data(read_image(folder / label_file), name=label_name, as_labels=True))
    return layers


def ct_chest() -> List[tuple]:
    """Chest CT (lung2) with its lung tumour label."""
    return _pair("ct_chest_lung2.nrrd", "ct_chest_lung2_tumour.nrrd", "CT chest", "lung tumour (truth)")


def mri_brain() -> List[tuple]:
    """T1 MRI (Colin27) with its brain mask."""
    return _pair("mri_brain_colin27_t1.nii.gz", "mri_brain_colin27_brain_mask.nii.gz", "MRI brain T1", "brain mask (truth)")


def nuclei() -> List[tuple]:
    """Fluorescence nuclei with instance labels."""
    return _pair("nuclei.tif", "nuclei_labels.tif", "nuclei", "nuclei (truth)")


def histology() -> List[tuple]:
    """H&E histology (RGB)."""
    return _pair("he_histology.jpg", None, "H&E histology", "")
