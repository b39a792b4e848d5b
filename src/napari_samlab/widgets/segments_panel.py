"""The Commit group and the segment list of the Segment panel.

:class:`SegmentsPanel` shows a :class:`~napari_samlab.session.SegmentStore`
(label, name, colour, voxels, mL or mm², state) and the controls of the
next commit.  It never writes labels itself: its buttons emit signals the
segmentation panel turns into store calls.
"""
from __future__ import annotations

from typing import Optional

from qtpy.QtCore import Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView, QCheckBox, QColorDialog, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView,
    QLineEdit, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..session.segments import STATES, default_color


def to_rgba(color) -> tuple:
    """Any colour napari understands (name, hex, RGB[A]) as a float RGBA tuple."""
    from napari.utils.colormaps.standardize_color import transform_color

    return tuple(float(c) for c in transform_color(color)[0])


class SegmentsPanel(QWidget):
    """Label / name / colour / overwrite, Commit / Undo / Redo, and the segment table.

    Signals
    -------
    commit_requested, undo_requested, redo_requested()
    state_requested(int, str)
        A state box in the table changed (label, new state).
    colors_changed()
        The colour of the current label changed (recolour the layers).
    """

    commit_requested = Signal()
    undo_requested = Signal()
    redo_requested = Signal()
    state_requested = Signal(int, str)
    colors_changed = Signal()
    save_prompts_requested = Signal(str)
    load_prompts_requested = Signal(str)
    save_labels_requested = Signal(str)

    def __init__(self, shortcuts: dict, parent=None):
        super().__init__(parent)
        self.store = None  # the SegmentStore shown (None: no segments layer yet)
        self.next_color: Optional[tuple] = None  # chosen for a label that has no segment yet
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        cbox = QGroupBox("Commit")
        cf = QFormLayout(cbox)
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.label_spin.setValue(1)
        self.label_spin.setToolTip("label value written into the segments layer")
        self.label_spin.valueChanged.connect(self._on_label_changed)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("segment 1")
        self.color_button = QPushButton("")
        self.color_button.setToolTip("segment colour")
        self.color_button.clicked.connect(self.pick_color)
        row = QHBoxLayout()
        row.addWidget(self.label_spin)
        row.addWidget(self.name_edit, 1)
        row.addWidget(self.color_button)
        cf.addRow("Label", row)
        self.overwrite_check = QCheckBox("overwrite completed/locked segments")
        self.overwrite_check.setToolTip("off: voxels of completed or locked segments are never overwritten")
        cf.addRow(self.overwrite_check)
        row = QHBoxLayout()
        self.commit_button = QPushButton("Commit")
        self.commit_button.setToolTip(f"write the preview into the segments layer [{shortcuts['commit']}]")
        self.commit_button.clicked.connect(self.commit_requested.emit)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip(f"undo the last prompt or commit [{shortcuts['undo']}]")
        self.undo_button.clicked.connect(self.undo_requested.emit)
        self.redo_button = QPushButton("Redo")
        self.redo_button.setToolTip(f"redo [{shortcuts['redo']}]")
        self.redo_button.clicked.connect(self.redo_requested.emit)
        for b in (self.commit_button, self.undo_button, self.redo_button):
            row.addWidget(b)
        cf.addRow(row)
        lay.addWidget(cbox)

        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["", "label", "name", "voxels", "volume (mL)", "state"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.table.horizontalHeader()
        for col in (0, 1, 3, 4, 5):
            header.setSectionResizeMode(col, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.Stretch)
        self.table.setMinimumHeight(120)
        self.table.setToolTip("click a row to add to that segment; set its state to completed or locked to protect it")
        self.table.cellClicked.connect(self._on_table_clicked)
        lay.addWidget(self.table, 1)
        lay.addWidget(self._files_box())
        self.update_color_button()

    def _files_box(self) -> QGroupBox:
        box = QGroupBox("Files")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        for text, tip, signal, save, filt in (
                ("Save prompts", "write every prompt of this image (slices, labels, propagate) to a JSON file",
                 self.save_prompts_requested, True, "Prompts (*.json)"),
                ("Load prompts", "place the prompts of a prompts file on their slices (one label at a time)",
                 self.load_prompts_requested, False, "Prompts (*.json)"),
                ("Save labels", "write the segments with their names and colours on the image's grid",
                 self.save_labels_requested, True, "Labels (*.nii.gz *.nii *.seg.nrrd *.nrrd *.mha *.tif *.png *.dcm)")):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda _=False, t=text, s=signal, sv=save, f=filt: self._ask_path(t, s, sv, f))
            row.addWidget(b)
            setattr(self, text.lower().replace(" ", "_") + "_button", b)
        lay.addLayout(row)
        self.sidecar_check = QCheckBox("write provenance (.json) next to saved labels")
        self.sidecar_check.setChecked(True)
        self.sidecar_check.setToolTip("how the labels were made (image and model hashes, prompts), so they can be replayed")
        lay.addWidget(self.sidecar_check)
        return box

    def _ask_path(self, title: str, signal, save: bool, filt: str) -> None:
        ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = ask(self, title, "", filt)
        if path:
            signal.emit(path)

    # -- what the next commit uses -------------------------------------------
    def current_color(self) -> tuple:
        lab = self.label_spin.value()
        if self.store is not None and lab in self.store.segments:
            return tuple(self.store.segments[lab].color)
        return self.next_color if self.next_color is not None else default_color(lab)

    def update_color_button(self) -> None:
        r, g, b, _ = (int(255 * c) for c in self.current_color())
        self.color_button.setStyleSheet(f"background-color: rgb({r},{g},{b}); min-width: 24px")

    def pick_color(self) -> None:
        r, g, b, _ = (int(255 * c) for c in self.current_color())
        col = QColorDialog.getColor(QColor(r, g, b), self, "Segment colour")
        if col.isValid():
            self.set_color((col.redF(), col.greenF(), col.blueF(), 1.0))

    def set_color(self, rgba) -> None:
        """Colour of the current label (its segment's, or the next commit's)."""
        lab = self.label_spin.value()
        if self.store is not None and lab in self.store.segments:
            self.store.set_color(lab, rgba)
        else:
            self.next_color = tuple(rgba)
        self.update_color_button()
        self.colors_changed.emit()

    def _on_label_changed(self, _=None) -> None:
        self.next_color = None
        self.sync_fields()

    def sync_fields(self) -> None:
        lab = self.label_spin.value()
        seg = self.store.segments.get(lab) if self.store is not None else None
        self.name_edit.setPlaceholderText(seg.name if seg else f"segment {lab}")
        if seg is None:
            self.name_edit.clear()
        self.update_color_button()
        self.colors_changed.emit()

    # -- the table --------------------------------------------------------------
    def show_store(self, store) -> None:
        self.store = store
        self.refresh()

    def refresh(self) -> None:
        rows = self.store.rows() if self.store is not None else []
        area = self.store is not None and self.store.table.is2d
        self.table.setHorizontalHeaderItem(4, QTableWidgetItem("area (mm²)" if area else "volume (mL)"))
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            sw = QTableWidgetItem("")
            sw.setBackground(QColor.fromRgbF(*row["color"][:3]))
            self.table.setItem(r, 0, sw)
            self.table.setItem(r, 1, QTableWidgetItem(str(row["label"])))
            self.table.setItem(r, 2, QTableWidgetItem(row["name"]))
            self.table.setItem(r, 3, QTableWidgetItem(str(row["voxels"])))
            value = f"{row['area_mm2']:.1f}" if area else f"{row['volume_ml']:.3f}"
            self.table.setItem(r, 4, QTableWidgetItem(value))
            combo = QComboBox()
            combo.addItems(STATES)
            combo.setCurrentText(row["state"])
            combo.currentTextChanged.connect(lambda s, lab=row["label"]: self.state_requested.emit(lab, s))
            self.table.setCellWidget(r, 5, combo)
        self.sync_fields()

    def _on_table_clicked(self, row: int, col: int) -> None:
        rows = self.store.rows() if self.store is not None else []
        if 0 <= row < len(rows):
            self.label_spin.setValue(rows[row]["label"])
            self.name_edit.setText(rows[row]["name"])
