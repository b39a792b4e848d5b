"""The top of the Segment panel: which image, which channels, the model window, the view.

:class:`SourcePanel` shows the bound image (always the one prompts go to),
the channel source (one layer or a composite of the visible channel
layers), the window presets, the window in use next to the model (and
why: what the image was taken as), and the axial/coronal/sagittal buttons
(shown for volumes only).  The window is what the model sees *and* the
layer's contrast limits: moving the contrast slider is a manual window.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QWidget

from ..errors import SamlabError
from ..base.windowing import PRESET_NAMES, describe_window, detect_modality, resolve_window
from ._plane import layer_array, spatial_shape

WINDOW_CHOICES = (*PRESET_NAMES, "manual")
VIEWS = ("axial", "coronal", "sagittal")


class SourcePanel(QWidget):
    """Image, channels, window and view controls.

    Parameters
    ----------
    models : ModelSession
        The model decides what "auto" means.
    notes : Notifier
        Where errors go.

    Signals
    -------
    image_chosen(str)
        The user picked another image in the box.
    inputs_changed()
        What the model sees changed (window or channels): recompute.
    view_requested(str)
        A view button was pressed.
    """

    image_chosen = Signal(str)
    inputs_changed = Signal()
    view_requested = Signal(str)

    def __init__(self, models, notes, parent=None):
        super().__init__(parent)
        self.models = models
        self.notes = notes
        self.image = None  # the bound napari Image layer
        self._window_cache: Dict[tuple, object] = {}
        self._guesses: Dict[int, object] = {}  # id(layer) -> ModalityGuess (metadata first, then intensities)
        self._setting_contrast = False

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("image layer to segment (follows the selected image layer)")
        self.image_combo.currentTextChanged.connect(self._on_image_combo)
        form.addRow("Image", self.image_combo)
        self.source_combo = QComboBox()
        self.source_combo.addItems(["this layer", "composite (visible layers)"])
        self.source_combo.setToolTip("microscopy with one layer per channel: segment the selected channel, "
                                     "or a colour composite of the visible channel layers as displayed")
        self.source_combo.currentTextChanged.connect(lambda _: self.window_inputs_changed())
        form.addRow("Channels", self.source_combo)
        wrow = QHBoxLayout()
        self.window_combo = QComboBox()
        self.window_combo.addItems(WINDOW_CHOICES)
        self.window_combo.setToolTip("what the model sees; the layer's contrast limits are set to the same range "
                                     "(auto = the model family's own preprocessing)")
        self.level_spin = QDoubleSpinBox()
        self.width_spin = QDoubleSpinBox()
        for s, v in ((self.level_spin, 40.0), (self.width_spin, 400.0)):
            s.setRange(-1e6, 1e6)
            s.setDecimals(1)
            s.setValue(v)
            s.setEnabled(False)
        self.level_spin.setToolTip("window level (manual)")
        self.width_spin.setToolTip("window width (manual)")
        self.window_combo.currentTextChanged.connect(self._on_window_combo)
        self.level_spin.editingFinished.connect(self.window_inputs_changed)
        self.width_spin.editingFinished.connect(self.window_inputs_changed)
        for w in (self.window_combo, QLabel("L"), self.level_spin, QLabel("W"), self.width_spin):
            wrow.addWidget(w)
        form.addRow("Window", wrow)
        self.window_line = QLabel("")
        self.window_line.setWordWrap(True)
        self.window_line.setToolTip("the window the model sees for this image and model; change it with the "
                                    "Window list, the level/width fields or the contrast slider")
        form.addRow("In use", self.window_line)
        self.view_row = QWidget()
        vrow = QHBoxLayout(self.view_row)
        vrow.setContentsMargins(0, 0, 0, 0)
        self.view_buttons = {}
        for view in VIEWS:
            b = QPushButton(view)
            b.setToolTip(f"prompt on the {view} plane of a volume")
            b.clicked.connect(lambda _=False, v=view: self.view_requested.emit(v))
            vrow.addWidget(b)
            self.view_buttons[view] = b
        self.view_label = QLabel("View")
        form.addRow(self.view_label, self.view_row)

    # -- image choices -------------------------------------------------------
    def show_choices(self, names, bound: Optional[str]) -> None:
        """List ``names``; the box shows ``bound`` (what prompts go to), or nothing."""
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(list(names))
        self.image_combo.setCurrentIndex(list(names).index(bound) if bound in names else -1)
        self.image_combo.blockSignals(False)

    def _on_image_combo(self, name: str) -> None:
        if name and (self.image is None or self.image.name != name):
            self.image_chosen.emit(name)

    def bind(self, layer) -> None:
        """Show controls for ``layer``: channels for non-RGB images, views for volumes."""
        self.image = layer
        self._guesses.clear()  # a layer's data may have been replaced meanwhile
        if layer is None:
            self.window_line.setText("")
        is3d = layer is not None and len(spatial_shape(layer)) == 3
        self.source_combo.setEnabled(layer is not None and not layer.rgb)
        self.view_row.setVisible(is3d)
        self.view_label.setVisible(is3d)

    # -- window ----------------------------------------------------------------
    @property
    def composite(self) -> bool:
        return self.source_combo.currentIndex() == 1 and self.image is not None and not self.image.rgb

    def set_window(self, preset: str = "auto", level: Optional[float] = None, width: Optional[float] = None) -> None:
        if level is not None and width is not None:
            preset = "manual"
        preset = str(preset).lower()
        if preset not in WINDOW_CHOICES:
            raise SamlabError(f"unknown window {preset!r}: use one of {', '.join(WINDOW_CHOICES)}")
        if preset == "manual":
            if level is None or width is None:
                level, width = self.level_spin.value(), self.width_spin.value()
            if not float(width) > 0:
                raise SamlabError(f"window width {width} is not positive: give a width > 0")
            self.level_spin.setValue(float(level))
            self.width_spin.setValue(float(width))
        self._show_preset(preset)
        self.window_inputs_changed()

    def _show_preset(self, preset: str) -> None:
        self.window_combo.blockSignals(True)
        self.window_combo.setCurrentText(preset)
        self.window_combo.blockSignals(False)
        self.level_spin.setEnabled(preset == "manual")
        self.width_spin.setEnabled(preset == "manual")

    def _on_window_combo(self, text: str) -> None:
        try:
            self.set_window(text)
        except SamlabError as exc:
            self.notes.error(str(exc))

    def window_spec(self):
        text = self.window_combo.currentText()
        if text == "manual":
            return (self.level_spin.value(), self.width_spin.value())
        return text

    def resolved_window(self):
        """The :class:`Window` the model sees for the bound image (None: values as they are)."""
        im = self.image
        if im is None or self.composite:
            return None  # composite: channels are already scaled by their own contrast limits
        spec = self.window_spec()
        model = self.models.ensure_model()
        key = (id(im), str(spec), model.fingerprint() if hasattr(model, "fingerprint") else id(model))
        if key not in self._window_cache:
            guess = self.modality_guess()
            geo = im.metadata.get("samlab") if isinstance(im.metadata.get("samlab"), dict) else {}
            modality = guess.kind if guess.kind in ("CT", "MR") else geo.get("modality")  # as the CLI decides
            # the whole volume, as the CLI does: every slice gets the same mapping
            self._window_cache[key] = resolve_window(spec, np.asarray(layer_array(im)), model, modality)
        return self._window_cache[key]

    def modality_guess(self):
        """What the bound image is taken as (:func:`detect_modality`: the file's metadata first, then intensities)."""
        im = self.image
        if im is None:
            return None
        if id(im) not in self._guesses:
            geo = im.metadata.get("samlab") if isinstance(im.metadata.get("samlab"), dict) else {}
            self._guesses[id(im)] = detect_modality(np.asarray(layer_array(im)), metadata=geo)
        return self._guesses[id(im)]

    def show_window_in_use(self, win=None, error: str = "") -> str:
        """Put the model and the window it sees (and why) on the "In use" line; returns the text."""
        im = self.image
        if im is None:
            text = ""
        elif error:
            text = f"window not applied: {error}"
        elif self.composite:
            text = "window: channels as displayed (composite of their contrast limits)"
        else:
            how = "auto" if self.window_combo.currentText() == "auto" else "chosen"
            text = f"{describe_window(win, self.modality_guess())} [{how}]"
        if im is not None:
            text = f"model {self.models.description or '?'} · {text}"
        self.window_line.setText(text)
        return text

    def forget_windows(self) -> None:
        """Drop resolved windows (a new model may define "auto" differently)."""
        self._window_cache.clear()

    def apply_window(self) -> None:
        """Set the layer's contrast limits to the window the model sees."""
        im = self.image
        if im is None:
            return
        try:
            win = self.resolved_window()
        except SamlabError as exc:
            self.notes.error(str(exc))
            self.show_window_in_use(error=str(exc))
            return
        self.show_window_in_use(win)
        if self.composite:
            return
        lo, hi = im.contrast_limits_range if win is None else (win.lo, win.hi)
        if hi <= lo:
            hi = lo + 1
        self._setting_contrast = True
        try:
            rlo, rhi = im.contrast_limits_range
            if lo < rlo or hi > rhi:  # let the slider reach the window
                im.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
            im.contrast_limits = (float(lo), float(hi))
        finally:
            self._setting_contrast = False
        if win is not None and self.window_combo.currentText() != "manual":
            level, width = win.level_width
            self.level_spin.setValue(level)
            self.width_spin.setValue(width)

    def window_inputs_changed(self) -> None:
        self.apply_window()
        self.inputs_changed.emit()

    def on_user_contrast(self, event=None) -> bool:
        """The contrast slider moved: a manual window for the model too. Returns whether anything changed."""
        im = self.image
        if self._setting_contrast or im is None or im.rgb:
            return False
        if self.composite:
            return True
        lo, hi = im.contrast_limits
        win = self.resolved_window()
        if win is not None and np.isclose(win.lo, lo) and np.isclose(win.hi, hi):
            return False
        self.level_spin.setValue((lo + hi) / 2.0)
        self.width_spin.setValue(max(hi - lo, 1e-6))
        self._show_preset("manual")
        try:
            self.show_window_in_use(self.resolved_window())
        except SamlabError as exc:
            self.show_window_in_use(error=str(exc))
        return True


def composite_layers(viewer, image) -> list:
    """Up to three channel layers for a composite: ``image`` first, then visible non-RGB images of its shape."""
    from .image_binding import is_image

    shape = spatial_shape(image)
    chans = [la for la in viewer.layers if is_image(la) and not la.rgb and la.visible and spatial_shape(la) == shape]
    return (([image] if image not in chans else []) + chans)[:3]


def composite_extractor(layers, plane) -> Callable[[], np.ndarray]:
    """A function giving ``plane`` of up to three channel layers as one RGB image, each scaled by its contrast."""
    limits = [tuple(layer.contrast_limits) for layer in layers]
    datas = [layer_array(layer) for layer in layers]

    def composite():
        chans = []
        for d, (lo, hi) in zip(datas, limits):
            c = plane.extract(d).astype(np.float32)
            chans.append(np.clip((c - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(c))
        if len(chans) == 1:
            return chans[0]
        while len(chans) < 3:
            chans.append(np.zeros_like(chans[0]))
        return np.stack(chans[:3], -1)

    return composite
