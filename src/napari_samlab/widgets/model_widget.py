"""The model panel: choose an engine and a checkpoint, load it off the Qt thread."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
    QPushButton, QVBoxLayout, QWidget,
)

from ..errors import SamlabError
from ._common import Notifier, wait_until
from ._compat import avoid_triton_llvm_clash
from ._session import ModelSession, session_for

FAMILIES = ("classic", "sam", "medsam", "litemedsam", "samed", "msa")
AUTO = "auto (from checkpoint)"
CKPT_FILTER = "Checkpoints (*.pth *.pt *.ckpt *.bin *.safetensors *.pth.tar);;All files (*)"


def _describe(path: str) -> dict:
    avoid_triton_llvm_clash()
    try:
        from ..models.registry import describe_checkpoint
    except ImportError:
        raise SamlabError("this installation has no checkpoint registry (napari_samlab.models.registry): update napari-samlab") from None
    return describe_checkpoint(path)


def _load(family: Optional[str], checkpoint: Optional[str], base_checkpoint: Optional[str], device: str):
    if family == "classic" and not checkpoint:
        from ._session import _classic

        return _classic()
    avoid_triton_llvm_clash()
    try:
        from ..models.registry import load_model
    except ImportError:
        raise SamlabError("this installation has no model registry (napari_samlab.models.registry): only the classic engine is available") from None
    return load_model(checkpoint=checkpoint, family=family, base_checkpoint=base_checkpoint, device=device)


def summarize(info: dict) -> str:
    """One line from :func:`describe_checkpoint`'s answer, family and classes first."""
    if not info:
        return ""
    parts = []
    fam = info.get("family")
    parts.append(f"family: {fam if fam else 'not detected (choose it above)'}")
    for key, label in (("num_classes", "classes"), ("classes", "classes"), ("image_size", "input"),
                       ("lora_rank", "LoRA rank"), ("backbone", "backbone"), ("variant", "variant")):
        if key in info and info[key] not in (None, "") and label not in " ".join(parts):
            val = info[key]
            if key == "image_size":
                val = f"{val} px"
            parts.append(f"{label}: {val}")
    if info.get("needs_base_checkpoint") or info.get("needs_base"):
        parts.append("needs a base checkpoint")
    note = info.get("note") or info.get("message")
    if note:
        parts.append(str(note))
    return " · ".join(parts)


class ModelWidget(QWidget):
    """Model panel: family, checkpoint, base checkpoint, device, Load.

    The loaded model lives in the viewer's shared session, so the
    segmentation panel uses it at once.  The classic engine (no weights) is
    there from the start.

    Parameters
    ----------
    napari_viewer : napari.Viewer

    Examples
    --------
    From napari's console::

        mw = ModelWidget(viewer)
        mw.load(family="medsam", checkpoint="medsam_vit_b.pth", wait=True)
        mw.model.family
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: ModelSession = session_for(napari_viewer)
        self.notes = Notifier()
        self.info: dict = {}
        self._worker = None
        self._describe_worker = None

        self.family = QComboBox()
        self.family.addItems([AUTO, *FAMILIES])
        self.family.setCurrentText("classic")
        self.family.setToolTip("classic needs no weights; the others need a checkpoint file. "
                               "'auto' reads the family from the checkpoint.")
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("checkpoint file (.pth)")
        self.checkpoint.editingFinished.connect(lambda: self._on_checkpoint_changed(self.checkpoint.text()))
        browse = QPushButton("…")
        browse.setToolTip("choose a checkpoint file")
        browse.clicked.connect(lambda: self._browse(self.checkpoint, self.set_checkpoint))
        self.base_checkpoint = QLineEdit()
        self.base_checkpoint.setPlaceholderText("base SAM checkpoint (SAMed, MSA)")
        browse_base = QPushButton("…")
        browse_base.setToolTip("choose the base SAM checkpoint that LoRA/adapter weights apply to")
        browse_base.clicked.connect(lambda: self._browse(self.base_checkpoint, self.set_base_checkpoint))
        self.detected = QLabel("")
        self.detected.setWordWrap(True)
        self.detected.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.device = QComboBox()
        self.device.addItems(self.available_devices())
        self.device.setToolTip("cuda is listed when PyTorch sees a GPU")
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(lambda: self.load())
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Family", self.family)
        row = QHBoxLayout()
        row.addWidget(self.checkpoint)
        row.addWidget(browse)
        form.addRow("Checkpoint", row)
        row = QHBoxLayout()
        row.addWidget(self.base_checkpoint)
        row.addWidget(browse_base)
        form.addRow("Base", row)
        form.addRow("Detected", self.detected)
        form.addRow("Device", self.device)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.load_button)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.session.changed.connect(self._on_session_changed)
        self.session.ensure_model()
        self._on_session_changed(self.session)

    # -- public, scriptable ----------------------------------------------
    @property
    def model(self):
        """The loaded engine (shared with the segmentation panel)."""
        return self.session.model

    @property
    def predictor(self):
        """The :class:`SlicePredictor` of the loaded engine."""
        return self.session.predictor

    @property
    def busy(self) -> bool:
        return self._worker is not None or self._describe_worker is not None

    @staticmethod
    def available_devices() -> list:
        """``["cpu"]`` plus ``"cuda"`` when PyTorch sees a GPU."""
        devices = ["cpu"]
        # importing torch takes seconds: only ask it when an NVIDIA driver is present
        if not (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")
                or "torch" in sys.modules):
            return devices
        try:
            avoid_triton_llvm_clash()
            import torch

            if torch.cuda.is_available():
                devices.append("cuda")
        except Exception:  # noqa: BLE001 - no torch: cpu only
            pass
        return devices

    def set_family(self, family: Optional[str]) -> None:
        """``"classic"``, ``"sam"``, ..., or None/"auto" to detect it from the checkpoint."""
        name = AUTO if family in (None, "", "auto") else str(family).lower()
        if self.family.findText(name) < 0:
            raise SamlabError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
        self.family.setCurrentText(name)

    def set_device(self, device: str) -> None:
        if self.device.findText(device) < 0:
            raise SamlabError(f"device {device!r} is not available here: use {' or '.join(self.available_devices())}")
        self.device.setCurrentText(device)

    def set_checkpoint(self, path: Optional[str], wait: bool = False) -> None:
        """Choose the checkpoint file and show what it contains."""
        self.checkpoint.setText(str(path) if path else "")
        self._on_checkpoint_changed(self.checkpoint.text(), wait=wait)

    def set_base_checkpoint(self, path: Optional[str]) -> None:
        self.base_checkpoint.setText(str(path) if path else "")

    def load(self, family: Optional[str] = "keep", checkpoint: Optional[str] = "keep",
             base_checkpoint: Optional[str] = "keep", device: Optional[str] = None,
             wait: bool = False, timeout: float = 600) -> bool:
        """Load the chosen engine in a background thread.

        Parameters default to what the panel shows.  With ``wait=True`` the
        call returns once the model is in use (scripts); returns whether a
        model was installed.
        """
        if family != "keep":
            self.set_family(family)
        if checkpoint != "keep":
            self.checkpoint.setText(str(checkpoint) if checkpoint else "")
        if base_checkpoint != "keep":
            self.set_base_checkpoint(base_checkpoint)
        if device:
            self.set_device(device)
        fam = self.family.currentText()
        fam = None if fam == AUTO else fam
        ckpt = self.checkpoint.text().strip() or None
        base = self.base_checkpoint.text().strip() or None
        dev = self.device.currentText()
        if fam != "classic" and not ckpt:
            self.notes.error(f"{fam or 'this family'} needs a checkpoint: choose the .pth file (or pick 'classic', which needs none)")
            return False
        if self._worker is not None:
            self.notes.warning("a model is already loading: wait for it to finish")
            return False
        from napari.qt.threading import create_worker

        generation = self.session.generation
        self._worker = create_worker(_load, fam, ckpt, base, dev, _start_thread=False, _ignore_errors=True)
        label = f"{fam or 'auto'}" + (f" from {Path(ckpt).name}" if ckpt else "") + f" on {dev}"
        self._worker.returned.connect(lambda m: self._on_loaded(m, label, generation))
        self._worker.errored.connect(lambda e: self.notes.exception(e, f"loading {label}"))
        self._worker.finished.connect(self._on_load_finished)
        self.progress.setRange(0, 0)  # busy indicator
        self.load_button.setEnabled(False)
        self.status.setText(f"loading {label}…")
        self._worker.start()
        if wait:
            wait_until(lambda: self._worker is None, timeout)
            return self.session.generation != generation
        return True

    # -- internals ---------------------------------------------------------
    def _browse(self, edit: QLineEdit, setter) -> None:
        start = str(Path(edit.text()).parent) if edit.text() else ""
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", start, CKPT_FILTER)
        if path:
            setter(path)

    def _on_checkpoint_changed(self, path: str, wait: bool = False) -> None:
        path = path.strip()
        self.info = {}
        if not path:
            self.detected.setText("")
            return
        if not Path(path).exists():
            self.detected.setText("file not found")
            return
        from napari.qt.threading import create_worker

        self.detected.setText("reading…")
        worker = create_worker(_describe, path, _start_thread=False, _ignore_errors=True)
        self._describe_worker = worker
        worker.returned.connect(lambda info: self._on_described(path, info))
        worker.errored.connect(lambda e: self._on_describe_error(path, e))
        worker.finished.connect(lambda: self._describe_done(worker))
        worker.start()
        if wait:
            wait_until(lambda: self._describe_worker is not worker, 120)

    def _describe_done(self, worker) -> None:
        if self._describe_worker is worker:
            self._describe_worker = None

    def _on_described(self, path: str, info: dict) -> None:
        if path != self.checkpoint.text().strip():
            return  # the user picked another file meanwhile
        self.info = dict(info or {})
        self.detected.setText(summarize(self.info))
        self.detected.setToolTip("\n".join(f"{k}: {v}" for k, v in self.info.items()))
        fam = self.info.get("family")
        if self.family.currentText() in (AUTO, "classic"):
            # a detected family is used; an ambiguous one (SAM or MedSAM) waits for the user
            self.family.setCurrentText(fam if fam in FAMILIES else AUTO)
            if fam not in FAMILIES:
                self.notes.warning(f"{Path(path).name}: {self.info.get('note') or 'choose the model family'}")

    def _on_describe_error(self, path: str, exc: BaseException) -> None:
        if path != self.checkpoint.text().strip():
            return
        text = self.notes.exception(exc, f"reading {Path(path).name}")
        self.detected.setText(text)

    def _on_loaded(self, model, label: str, generation: int) -> None:
        if model is None:
            return
        self.session.set_model(model, label)
        self.notes.info(f"model loaded: {label}")

    def _on_load_finished(self) -> None:
        self._worker = None
        self.progress.setRange(0, 1)
        self.load_button.setEnabled(True)
        self._on_session_changed(self.session)

    def _on_session_changed(self, session) -> None:
        m = session.model
        if m is None:
            self.status.setText("no model loaded")
            return
        self.status.setText(f"in use: {session.description} "
                            f"({getattr(m, 'family', '?')}, {getattr(m, 'device', 'cpu')})")
