"""The model panel: choose an engine and a checkpoint, load it off the Qt thread; memory and cache settings."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
    QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from ..errors import SamlabError
from ..models.backends import EXACT_BACKENDS, ENCODER_BACKENDS
from ..models.families import family_names
from ..predict.cache import cache_usage, clear_cache_folder, default_cache_dirs, default_embedding_cache_dir, format_bytes
from ._common import Notifier, alive, wait_until
from ._compat import avoid_triton_llvm_clash
from ._session import ModelSession, session_for
from .model_options import DISK_STORAGE, MsaFields, engine_report, gui_message, status_lines

FAMILIES = family_names()
AUTO = "auto (from checkpoint)"
CKPT_FILTER = "Checkpoints (*.pth *.pt *.ckpt *.bin *.safetensors *.pth.tar);;All files (*)"
HALF_PRECISION = "half-precision embeddings (saves memory, masks may differ at edges)"


def encoder_choices() -> list:
    """``(label, backend)`` pairs for the encoder box, from ``models/backends.py``'s lists.

    ``auto`` comes first and maps to None: :func:`load_model`'s own default
    (the fastest exact backend for SAM, MedSAM and LiteMedSAM on CPU, PyTorch
    for the others, or ``$SAMLAB_ENCODER_BACKEND``).  Backends that trade
    accuracy for speed (int8, autocast) come last, labelled "approximate".

    Examples
    --------
    >>> encoder_choices()[:2]
    [('auto (default)', None), ('torch', 'torch')]
    """
    names = [b for b in ENCODER_BACKENDS if b != "auto"]
    names.sort(key=lambda b: b not in EXACT_BACKENDS)  # exact ones first, order otherwise kept
    return [("auto (default)", None)] + [(b if b in EXACT_BACKENDS else f"{b} (approximate)", b) for b in names]


def _describe(path: str) -> dict:
    avoid_triton_llvm_clash()
    try:
        from ..models.registry import describe_checkpoint
    except ImportError:
        raise SamlabError("this installation has no checkpoint registry (napari_samlab.models.registry): update napari-samlab") from None
    return describe_checkpoint(path)


def _load(family: Optional[str], checkpoint: Optional[str], base_checkpoint: Optional[str], device: str,
          encoder_backend: Optional[str] = None, options: Optional[dict] = None):
    """The engine and its :func:`engine_report` (worker thread: resolving "auto" may export the encoder)."""
    if family == "classic" and not checkpoint:
        from ..session.model import classic_model

        model = classic_model()
        return model, engine_report(model)
    avoid_triton_llvm_clash()
    try:
        from ..models.registry import load_model
    except ImportError:
        raise SamlabError("this installation has no model registry (napari_samlab.models.registry): only the classic engine is available") from None
    model = load_model(checkpoint=checkpoint, family=family, base_checkpoint=base_checkpoint, device=device,
                       encoder_backend=encoder_backend, **(options or {}))
    return model, engine_report(model)


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
    """Model panel: family, checkpoint, base checkpoint, device, encoder, Load; memory settings.

    The loaded model lives in the viewer's shared session, so the
    segmentation panel uses it at once.  The classic engine (no weights) is
    there from the start.  The "Memory" group sets the session's embedding
    caches (bound in MB, float16 in memory, a disk cache) for the model in
    use and the ones loaded later, shows what the disk caches take and
    empties them.

    Parameters
    ----------
    napari_viewer : napari.Viewer

    Examples
    --------
    From napari's console::

        mw = ModelWidget(viewer)
        mw.load(family="medsam", checkpoint="medsam_vit_b.pth", wait=True)
        mw.model.family
        mw.set_memory(memory_mb=512, half_precision=True)
        mw.clear_disk_caches()
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: ModelSession = session_for(napari_viewer)
        self.notes = Notifier()
        self.info: dict = {}
        self.failed: Optional[str] = None  # the last load that failed, as the status line says it
        self._in_use_form = ("classic", "", "")  # family, checkpoint, base of the model in use
        self._worker = None
        self._describe_worker = None
        self._report = (None, {})  # (model, engine_report) computed by the load worker

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
        self.encoder = QComboBox()
        for label, backend in encoder_choices():
            self.encoder.addItem(label, backend)
        self.encoder.setToolTip("how the image encoder runs on the CPU. auto: the fastest backend whose output matches "
                                "PyTorch (SAM, MedSAM, LiteMedSAM), else PyTorch. '(approximate)' ones are faster "
                                "but their masks can differ from the model's own")
        self.msa = MsaFields()  # shown for MSA only
        self.family.currentTextChanged.connect(lambda text: self.msa.setVisible(text == "msa"))
        self.msa.setVisible(False)
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
        form.addRow("Encoder", self.encoder)
        form.addRow(self.msa)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.load_button)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self._memory_group())
        lay.addStretch(1)

        self.session.changed.connect(self._on_session_changed)
        self.session.ensure_model()
        self._on_session_changed(self.session)
        self.refresh_disk_usage()

    def _memory_group(self) -> QGroupBox:
        settings = self.session.predictor_settings
        self.memory_mb = QSpinBox()
        self.memory_mb.setRange(0, 1 << 20)
        self.memory_mb.setSingleStep(256)
        self.memory_mb.setSuffix(" MB")
        self.memory_mb.setKeyboardTracking(False)  # apply when typing is done, not per digit
        self.memory_mb.setValue(int(round(settings["memory_mb"])))
        self.memory_mb.setToolTip("embeddings of recently seen slices kept in memory (least recently used dropped "
                                  "beyond this); a ViT-B slice takes 4 MB, or 2 MB in half precision")
        self.half_precision = QCheckBox(HALF_PRECISION)
        self.half_precision.setChecked(settings["memory_dtype"] == "float16")
        self.keep_on_disk = QCheckBox("keep embeddings on disk")
        self.keep_on_disk.setChecked(settings["cache_dir"] is not None)
        self.keep_on_disk.setToolTip("store each slice's embedding in the folder (checksummed) so that "
                                     "revisits and later sessions need no encoding")
        self.disk_storage = QComboBox()
        for label, dtype in DISK_STORAGE:
            self.disk_storage.addItem(label, dtype)
        self.disk_storage.setToolTip("how the disk cache stores embeddings: float32 keeps exactly what the encoder "
                                     "computed; float16 halves the disk use and rounds them (masks can move at edges)")
        self.disk_folder = QLineEdit(str(settings["cache_dir"] or default_embedding_cache_dir()))
        self.disk_folder.setToolTip("embedding cache folder")
        self.disk_usage = QLabel("")
        self.disk_usage.setWordWrap(True)
        self.clear_disk_button = QPushButton("Clear disk caches")
        self.clear_disk_button.setToolTip("delete the cached embeddings and exported encoders (remade when needed)")

        self.memory_mb.valueChanged.connect(lambda _: self._apply_memory_settings())
        self.half_precision.toggled.connect(lambda _: self._apply_memory_settings())
        self.keep_on_disk.toggled.connect(lambda _: self._apply_memory_settings())
        self.disk_storage.currentIndexChanged.connect(lambda _: self._apply_memory_settings())
        self.disk_folder.editingFinished.connect(self._apply_memory_settings)
        self.clear_disk_button.clicked.connect(lambda: self.clear_disk_caches())

        box = QGroupBox("Memory")
        form = QFormLayout(box)
        form.addRow("In memory", self.memory_mb)
        form.addRow(self.half_precision)
        row = QHBoxLayout()
        row.addWidget(self.keep_on_disk)
        row.addWidget(self.disk_folder, 1)
        form.addRow(row)
        form.addRow("Disk storage", self.disk_storage)
        form.addRow("On disk", self.disk_usage)
        form.addRow(self.clear_disk_button)
        return box

    # -- public, scriptable ----------------------------------------------
    @property
    def model(self):
        """The loaded engine (shared with the segmentation panel)."""
        return self.session.model

    @property
    def predictor(self):
        """The :class:`SlicePredictor` of the loaded engine."""
        return self.session.predictor

    def encoder_report(self) -> dict:
        """What computes the model's embeddings (:func:`~napari_samlab.models.base.encoder_report`).

        Made by the load worker; for a model installed otherwise it is asked
        only when that cannot export anything (classic, or after an encode).
        """
        m = self.session.model
        if m is None:
            return {}
        if self._report[0] is m:
            return self._report[1]
        encoder = m.image_encoder_module() if hasattr(m, "image_encoder_module") else None
        if getattr(m, "last_encoder_backend", None) is not None or encoder is None:
            return engine_report(m)
        requested = getattr(m, "encoder_backend", None) or "auto"
        return {"backend": None, "requested": requested,
                "summary": f"encoder: {requested} requested (resolved at the first encode)"}

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
        except Exception:  # noqa: BLE001 - widget boundary: no usable torch means cpu only
            import logging

            logging.getLogger(__name__).debug("CUDA check failed", exc_info=True)
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

    def set_encoder(self, backend: Optional[str]) -> None:
        """Encoder backend for the next load: None/"auto" or one of :func:`encoder_choices`."""
        i = self.encoder.findData(None if backend in (None, "", "auto") else backend)
        if i < 0:
            names = ", ".join(b or "auto" for _, b in encoder_choices())
            raise SamlabError(f"unknown encoder backend {backend!r}: use one of {names}")
        self.encoder.setCurrentIndex(i)

    def set_memory(self, memory_mb: Optional[float] = None, half_precision: Optional[bool] = None,
                   keep_on_disk: Optional[bool] = None, folder=None, disk_dtype: Optional[str] = None) -> None:
        """Set the "Memory" group's controls (and so the session's predictor); None keeps a value.

        ``disk_dtype``: ``"float32"`` (exact, the default) or ``"float16"``.
        """
        with _signals_blocked(self.memory_mb, self.half_precision, self.keep_on_disk, self.disk_storage):
            if disk_dtype is not None:
                i = self.disk_storage.findData(str(disk_dtype))
                if i < 0:
                    raise SamlabError(f"disk storage {disk_dtype!r} is not offered: use float32 or float16")
                self.disk_storage.setCurrentIndex(i)
            if memory_mb is not None:
                self.memory_mb.setValue(int(round(float(memory_mb))))
            if half_precision is not None:
                self.half_precision.setChecked(bool(half_precision))
            if keep_on_disk is not None:
                self.keep_on_disk.setChecked(bool(keep_on_disk))
            if folder is not None:
                self.disk_folder.setText(str(folder))
        self._apply_memory_settings()

    def refresh_disk_usage(self) -> dict:
        """Update the disk-usage line; returns ``{kind: CacheUsage}`` (an unreadable folder is left out)."""
        found, parts = {}, []
        for kind, folder in default_cache_dirs(self._embedding_folder()).items():
            try:
                u = found[kind] = cache_usage(folder, kind)
                parts.append(f"{kind} {format_bytes(u.nbytes)} ({u.entries})")
            except SamlabError as err:
                parts.append(f"{kind}: {gui_message(err, 'reading the disk cache')}")
        self.disk_usage.setText(" · ".join(parts))
        self.disk_usage.setToolTip("size (entries) of the disk caches:\n" + "\n".join(str(u.folder) for u in found.values()))
        return found

    def clear_disk_caches(self) -> dict:
        """Empty the embedding and exported-encoder caches; reports what was freed.

        Returns
        -------
        dict of str to CacheUsage
            What each cache freed (a folder that is not a samlab cache is
            refused with an error notification and left out).
        """
        freed, problems = {}, []
        for kind, folder in default_cache_dirs(self._embedding_folder()).items():
            try:
                freed[kind] = clear_cache_folder(folder, kind)
            except SamlabError as err:
                problems.append(gui_message(err, "clearing the disk caches"))
        for text in problems:
            self.notes.error(text)
        if freed:
            total = sum(u.nbytes for u in freed.values())
            what = ", ".join(f"{u.entries} {'exported encoders' if k == 'encoders' else 'embeddings'}"
                             for k, u in freed.items())
            self.notes.info(f"disk caches cleared: {format_bytes(total)} freed ({what})")
        self.refresh_disk_usage()
        return freed

    def load(self, family: Optional[str] = "keep", checkpoint: Optional[str] = "keep",
             base_checkpoint: Optional[str] = "keep", device: Optional[str] = None,
             wait: bool = False, timeout: float = 600, encoder: Optional[str] = "keep",
             image_size: Optional[int] = "keep", num_outputs: Optional[int] = "keep") -> bool:
        """Load the chosen engine in a background thread.

        Parameters default to what the panel shows (``image_size`` and
        ``num_outputs``: the MSA fields, used for MSA only).  With
        ``wait=True`` the call returns once the model is in use (scripts);
        returns whether a model was installed.
        """
        if encoder != "keep":
            self.set_encoder(encoder)
        if image_size != "keep":
            self.msa.image_size.setValue(int(image_size or 0))
        if num_outputs != "keep":
            self.msa.outputs.setValue(int(num_outputs or 0))
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
        backend = self.encoder.currentData()
        # the MSA fields apply to MSA files only (other families refuse the options)
        options = self.msa.options() if (fam or self.info.get("family")) == "msa" else {}
        self._worker = create_worker(_load, fam, ckpt, base, dev, backend, options,
                                     _start_thread=False, _ignore_errors=True)
        label = (f"{fam or 'auto'}" + (f" from {Path(ckpt).name}" if ckpt else "") + f" on {dev}"
                 + (f", {backend} encoder" if backend and fam != "classic" else ""))
        self._worker.returned.connect(lambda res: self._on_loaded(res, label, generation))
        self._worker.errored.connect(lambda e: self._on_load_failed(e, label))
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
    def _embedding_folder(self) -> Path:
        text = self.disk_folder.text().strip()
        return Path(text).expanduser() if text else default_embedding_cache_dir()

    def _apply_memory_settings(self) -> None:
        settings = dict(memory_mb=float(self.memory_mb.value()),
                        memory_dtype="float16" if self.half_precision.isChecked() else "float32",
                        cache_dir=self._embedding_folder() if self.keep_on_disk.isChecked() else None,
                        disk_dtype=self.disk_storage.currentData())
        try:
            self.session.configure(**settings)
        except SamlabError as err:
            self.notes.error(gui_message(err, "changing the memory settings"))
            self._show_memory_settings()  # back to what is in effect
        self.refresh_disk_usage()
        self._on_session_changed(self.session)  # the status names the disk storage

    def _show_memory_settings(self) -> None:
        s = self.session.predictor_settings
        with _signals_blocked(self.memory_mb, self.half_precision, self.keep_on_disk, self.disk_storage):
            self.disk_storage.setCurrentIndex(max(0, self.disk_storage.findData(s.get("disk_dtype", "float32"))))
            self.memory_mb.setValue(int(round(s["memory_mb"])))
            self.half_precision.setChecked(s["memory_dtype"] == "float16")
            self.keep_on_disk.setChecked(s["cache_dir"] is not None)
            if s["cache_dir"] is not None:
                self.disk_folder.setText(str(s["cache_dir"]))

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
        text = gui_message(exc, f"reading {Path(path).name}")
        self.notes.error(text)
        self.detected.setText(text)

    def _on_loaded(self, result, label: str, generation: int) -> None:
        if result is None:
            return
        model, report = result
        self._report = (model, report)
        self.session.set_model(model, label)
        self.failed = None
        self._in_use_form = (self.family.currentText(), self.checkpoint.text(), self.base_checkpoint.text())
        self.notes.info(f"model loaded: {label}")

    def _on_load_failed(self, exc: BaseException, label: str) -> None:
        """The form goes back to the model in use; the status line names the failed attempt."""
        import logging

        if not isinstance(exc, SamlabError):
            logging.getLogger(__name__).error("loading %s failed", label, exc_info=(type(exc), exc, exc.__traceback__))
        text = gui_message(exc, f"loading {label}")
        self.notes.error(text)
        self.failed = f"✗ loading {label} failed: {text}"
        family, ckpt, base = self._in_use_form
        self.family.setCurrentText(family)
        self.checkpoint.setText(ckpt)
        self.base_checkpoint.setText(base)

    def _on_load_finished(self) -> None:
        self._worker = None
        self.progress.setRange(0, 1)
        self.load_button.setEnabled(True)
        self._on_session_changed(self.session)

    def _on_session_changed(self, session) -> None:
        if not alive(self):
            return
        self._show_memory_settings()  # another panel of this viewer may have changed them
        m = session.model
        if m is None:
            self.status.setText("no model loaded")
            return
        s = session.predictor_settings
        in_use = status_lines(session.description, m, self.encoder_report(), s.get("disk_dtype", "float32"),
                              s["cache_dir"] is not None)
        self.status.setText(f"{self.failed}\n{in_use}" if self.failed else in_use)
        self.status.setStyleSheet("color: #d9534f" if self.failed else "")


class _signals_blocked:
    """Change controls without their signals firing (one apply afterwards)."""

    def __init__(self, *widgets):
        self.widgets = widgets

    def __enter__(self):
        self.old = [w.blockSignals(True) for w in self.widgets]

    def __exit__(self, *exc):
        for w, old in zip(self.widgets, self.old):
            w.blockSignals(old)
