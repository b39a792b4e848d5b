"""Parts of the Model panel: MSA build options, error phrasing, and what the loaded engine really runs.

Kept apart from ``model_widget.py`` so that the panel stays short; the
logic itself is the core's (``models.base.encoder_report``,
``errors.SamlabError.for_gui``).
"""
from __future__ import annotations

from typing import Optional

from qtpy.QtWidgets import QFormLayout, QSpinBox, QWidget

from ..errors import SamlabError
from ._common import explain

#: how the Model panel names its controls in error messages (errors.InputError
#: placeholders); fields not listed keep errors.GUI_NAMES
MODEL_PANEL_NAMES = {
    "model": ("'{}' in the Family list", "a family in the Family list"),
    "checkpoint": ("checkpoint {}", "a file in the Checkpoint field"),
    "base_checkpoint": ("base checkpoint {}", "a file in the Base field"),
    "encoder": ("'{}' in the Encoder list", "another entry of the Encoder list"),
    "image_size": ("Image size {}", "the Image size field (MSA)"),
    "num_outputs": ("Outputs {}", "the Outputs field (MSA)"),
    "cache_dir": ("cache folder {}", "the 'keep embeddings on disk' folder"),
}

#: disk-cache storage choices: (label, SlicePredictor disk_dtype)
DISK_STORAGE = (("float32 (exact)", "float32"), ("float16 (half the disk, rounded)", "float16"))


def gui_message(exc: BaseException, doing: str) -> str:
    """One line for the Model panel: a :class:`SamlabError` in the panel's own control names, else :func:`explain`.

    Parameters
    ----------
    exc : BaseException
    doing : str
        What was being done, e.g. ``"loading msa from a.pth"``.

    Examples
    --------
    >>> from napari_samlab.errors import InputError
    >>> gui_message(InputError("give {image_size}", field="image_size"), "loading")
    'give the Image size field (MSA)'
    """
    if isinstance(exc, SamlabError):
        return exc.for_gui(MODEL_PANEL_NAMES)
    return explain(exc, doing)


class MsaFields(QWidget):
    """"Image size" and "Outputs" of an MSA checkpoint (0: what the file says / the default).

    MSA files written for a while do not record the image size they were
    trained at; loading one without it gives an error naming the Image
    size field.  Outputs is the number of output masks (classes) kept.

    Examples
    --------
    >>> f = MsaFields(); f.set(image_size=256); f.options()          # doctest: +SKIP
    {'image_size': 256}
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.image_size = QSpinBox()
        self.image_size.setRange(0, 4096)
        self.image_size.setSingleStep(16)
        self.image_size.setSpecialValueText("from the file")
        self.image_size.setSuffix(" px")
        self.image_size.setToolTip("MSA: the -image_size the model was trained at (a multiple of 16, e.g. 1024 or "
                                   "256); needed for files that do not record it")
        self.outputs = QSpinBox()
        self.outputs.setRange(0, 16)
        self.outputs.setSpecialValueText("default")
        self.outputs.setToolTip("MSA: output masks (classes) to keep; label value = class number")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Image size", self.image_size)
        form.addRow("Outputs", self.outputs)

    def set(self, image_size: Optional[int] = None, num_outputs: Optional[int] = None) -> None:
        """Set the fields; None or 0 means "from the file" / "default"."""
        self.image_size.setValue(int(image_size or 0))
        self.outputs.setValue(int(num_outputs or 0))

    def options(self) -> dict:
        """``load_model`` keyword arguments for the fields that are set."""
        opts = {}
        if self.image_size.value():
            opts["image_size"] = int(self.image_size.value())
        if self.outputs.value():
            opts["num_outputs"] = int(self.outputs.value())
        return opts


def engine_report(model) -> dict:
    """:func:`napari_samlab.models.base.encoder_report` for ``model`` (None when the core has none).

    May resolve ``"auto"`` (load or export the encoder): run it off the Qt
    thread, as the load worker does.
    """
    try:
        from ..models.base import encoder_report
    except ImportError:
        return {}
    return encoder_report(model)


def status_lines(description: str, model, report: Optional[dict], disk_dtype: str, disk_on: bool) -> str:
    """The Model panel's "in use" text: model, encoder backend and precision, disk-cache storage.

    Examples
    --------
    >>> status_lines("sam from a.pth", None, {"summary": "encoder: torch fp32 on cpu (upstream PyTorch)"},
    ...              "float32", False)
    'in use: sam from a.pth\\nencoder: torch fp32 on cpu (upstream PyTorch)\\ndisk cache: off'
    """
    head = f"in use: {description}"
    if model is not None:
        head += f" ({getattr(model, 'family', '?')}, {getattr(model, 'device', 'cpu')})"
    lines = [head]
    if report and report.get("summary"):
        lines.append(report["summary"])
    lines.append(f"disk cache: {disk_dtype} storage" if disk_on else "disk cache: off")
    return "\n".join(lines)
