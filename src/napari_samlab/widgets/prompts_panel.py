"""The "Prompts" group of the Segment panel: point/box tools, live preview switch, progress."""
from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ._common import progress_and_cancel


def status_line(plane_name: str, model, score) -> str:
    """``"axial slice 20 · classic · last score 0.93"``."""
    return f"{plane_name} · {getattr(model, 'family', '?')}" + (f" · last score {score:.2f}" if score is not None else "")


class PromptsPanel(QGroupBox):
    """Buttons wired to the segmentation panel's public methods, the encode progress and a status line.

    Parameters
    ----------
    seg : SegmentationWidget
    shortcuts : dict
        Action -> key, shown in tooltips.
    """

    def __init__(self, seg, shortcuts: dict, parent=None):
        super().__init__("Prompts", parent)
        self.seg = seg
        sc = shortcuts
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.points_button = self._button("Points", "click on the image to add points (green = object, red = "
                                          "background)", seg.start_points, "adding points")
        self.polarity_button = self._button(
            "+ object", f"polarity of the next point; toggles selected points in select mode [{sc['toggle polarity']}]",
            seg.toggle_polarity, "toggling polarity")
        self.polarity_button.setCheckable(True)
        self.box_button = self._button("Box", "drag a rectangle around the object (one box per slice)",
                                       seg.start_box, "drawing a box")
        self.clear_button = self._button("Clear", "remove all prompts and the preview", seg.clear_prompts,
                                         "clearing prompts")
        for b in (self.points_button, self.polarity_button, self.box_button, self.clear_button):
            row.addWidget(b)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.live_check = QCheckBox("live")
        self.live_check.setChecked(True)
        self.live_check.setToolTip("update the preview as prompts are added, moved or deleted")
        self.segment_button = self._button("Segment", f"segment the prompted slices now [{sc['segment']}]",
                                           seg.segment, "segmenting")
        self.encode_button = self._button("Encode slices", "embed every slice along the current axis in the "
                                          "background, so prompting on any of them answers at once",
                                          seg.encode_slices, "encoding slices")
        for w in (self.live_check, self.segment_button, self.encode_button):
            row.addWidget(w)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.progress, self.cancel_button = progress_and_cancel(
            "stop encoding after the current slice", lambda: seg.guard(seg.cancel, "cancelling"))
        row.addWidget(self.progress)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)

    def _button(self, text: str, tip: str, action, doing: str) -> QPushButton:
        b = QPushButton(text)
        b.setToolTip(tip)
        b.clicked.connect(lambda: self.seg.guard(action, doing))
        return b

    def show_polarity(self, positive: bool) -> None:
        self.polarity_button.blockSignals(True)
        self.polarity_button.setChecked(not positive)
        self.polarity_button.setText("+ object" if positive else "− background")
        self.polarity_button.blockSignals(False)

    def show_progress(self, done: int, total: int) -> None:
        """``total`` > 0: determinate; 0: busy indicator; < 0: finished (a busy bar shows "done")."""
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        elif total == 0:
            self.progress.setRange(0, 0)
        elif self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(1)
        self.cancel_button.setEnabled(self.seg.live.busy)
