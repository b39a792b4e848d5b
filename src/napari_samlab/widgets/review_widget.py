"""The review dock: compare two Labels layers label by label.

A thin layer over :mod:`napari_samlab.cohort.compare`: pick a reference and
a test layer, *Compare* computes Dice, HD95 (mm, from the layers' scale) and
volumes off the Qt thread, the table lists one row per label, clicking a row
moves the viewer to the slice where that label disagrees most, and the
disagreement (1 = only in the reference, 2 = only in the test or a different
label) is shown as its own Labels layer.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView, QComboBox, QFormLayout, QHeaderView, QLabel, QPushButton, QTableWidget, QTableWidgetItem,
    QVBoxLayout, QWidget,
)

from ..cohort.compare import compare_labels, disagreement_map, largest_disagreement_slice
from ..errors import SamlabError
from ._common import Notifier

COLUMNS = ("label", "Dice", "HD95 (mm)", "ref (mL)", "test (mL)")
DISAGREEMENT = "disagreement"


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


class ReviewWidget(QWidget):
    """Dock widget comparing a reference and a test Labels layer.

    Parameters
    ----------
    viewer : napari.Viewer

    Attributes
    ----------
    rows : list of dict
        The last comparison (:func:`napari_samlab.cohort.compare.compare_labels`).
    disagreement_layer : napari.layers.Labels or None

    Examples
    --------
    >>> dock = ReviewWidget(viewer)                         # doctest: +SKIP
    >>> dock.set_layers("truth", "samlab"); dock.compare()  # doctest: +SKIP
    >>> dock.go_to_label(1)                                 # doctest: +SKIP
    """

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        self.notify = Notifier()
        self.rows: List[dict] = []
        self.disagreement_layer = None
        self.busy = False
        self._pair = None  # (reference, test) arrays of the last comparison
        self._worker = None

        self.reference_box = QComboBox()
        self.test_box = QComboBox()
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Dice, HD95 and volumes per label; the disagreement becomes its own layer")
        self.compare_button.clicked.connect(self.compare)
        self.status = QLabel("choose two label layers")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setToolTip("click a row to go to the slice where that label disagrees most")
        self.table.cellClicked.connect(lambda row, _col: self._row_clicked(row))

        form = QFormLayout()
        form.addRow("reference", self.reference_box)
        form.addRow("test", self.test_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.compare_button)
        layout.addWidget(self.table)
        layout.addWidget(self.status)

        self._refresh_choices()
        viewer.layers.events.inserted.connect(self._refresh_choices)
        viewer.layers.events.removed.connect(self._refresh_choices)

    # -- layer choice ------------------------------------------------------------
    def _label_layers(self) -> list:
        from napari.layers import Labels

        # the disagreement layers this dock made are results, not candidates
        return [ly for ly in self.viewer.layers if isinstance(ly, Labels) and "samlab_review" not in ly.metadata]

    def _refresh_choices(self, event=None) -> None:
        names = [ly.name for ly in self._label_layers()]
        for i, box in enumerate((self.reference_box, self.test_box)):
            current = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems(names)
            if current in names:
                box.setCurrentText(current)
            elif len(names) > i:
                box.setCurrentIndex(i)  # a fresh dock: the first two label layers
            box.blockSignals(False)

    def set_layers(self, reference: str, test: str) -> None:
        """Choose the layers by name (scripts and tests)."""
        for box, name in ((self.reference_box, reference), (self.test_box, test)):
            if box.findText(name) < 0:
                raise SamlabError(f"no Labels layer named {name!r}: choose one of {', '.join(ly.name for ly in self._label_layers())}")
            box.setCurrentText(name)

    def _layers(self):
        layers = {ly.name: ly for ly in self._label_layers()}
        ref, test = layers.get(self.reference_box.currentText()), layers.get(self.test_box.currentText())
        if ref is None or test is None:
            raise SamlabError("choose a reference and a test Labels layer first")
        if ref is test:
            raise SamlabError("reference and test are the same layer: choose two different label layers")
        a, b = np.asarray(ref.data), np.asarray(test.data)
        if a.shape != b.shape:
            raise SamlabError(f"{ref.name} has shape {a.shape} but {test.name} has {b.shape}: compare layers of the same image")
        if not (np.allclose(ref.scale, test.scale, rtol=1e-4) and np.allclose(ref.translate, test.translate, atol=1e-3)
                and np.allclose(ref.affine.affine_matrix, test.affine.affine_matrix, atol=1e-5)):
            raise SamlabError(f"{ref.name} and {test.name} lie on different grids (scale, position or orientation): "
                              "compare layers of the same image")
        return ref, test, a, b

    # -- comparing ---------------------------------------------------------------
    def compare(self) -> None:
        """Compare the chosen layers off the Qt thread; the table fills when done."""
        from napari.qt.threading import thread_worker

        try:
            ref, test, a, b = self._layers()
        except SamlabError as err:
            self.status.setText(str(err))
            self.notify.error(str(err))
            return
        spacing = tuple(float(s) for s in ref.scale[-a.ndim:])
        self.busy = True
        self.compare_button.setEnabled(False)
        self.status.setText(f"comparing {test.name} with {ref.name}…")

        @thread_worker
        def work():
            return compare_labels(a, b, spacing), disagreement_map(a, b)

        worker = work()
        worker.returned.connect(lambda res: self._show(ref, test, a, b, *res))
        worker.errored.connect(self._failed)
        worker.finished.connect(self._done)
        self._worker = worker
        worker.start()

    def _done(self) -> None:
        self.busy = False
        self.compare_button.setEnabled(True)

    def _failed(self, exc) -> None:
        self.status.setText(self.notify.exception(exc, "comparing the label layers"))

    def _show(self, ref, test, a, b, rows, disagreement) -> None:
        self.rows, self._pair = rows, (a, b)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = (str(r["label"]), _fmt(r["dice"], ".4f"), _fmt(r["hd95_mm"], ".2f"),
                     _fmt(r["volume_ref_ml"], ".3f"), _fmt(r["volume_test_ml"], ".3f"))
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self._show_disagreement(ref, test, disagreement)
        n = int(np.count_nonzero(disagreement))
        self.status.setText(f"{len(rows)} label(s); {n} voxels disagree (layer '{DISAGREEMENT}': "
                            "1 only in the reference, 2 only in the test or another label)")

    def _show_disagreement(self, ref, test, disagreement) -> None:
        layer = self.disagreement_layer
        pair = {"reference": ref.name, "test": test.name}
        if layer is not None and layer in self.viewer.layers and layer.data.shape == disagreement.shape:
            layer.data = disagreement
            layer.metadata["samlab_review"] = pair
        else:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_labels(disagreement, name=DISAGREEMENT, scale=ref.scale, translate=ref.translate,
                                           affine=ref.affine, opacity=0.8, metadata={"samlab_review": pair})
        self.disagreement_layer = layer

    # -- navigation ----------------------------------------------------------------
    def _row_clicked(self, row: int) -> None:
        if 0 <= row < len(self.rows):
            self.go_to_label(self.rows[row]["label"])

    def go_to_label(self, label: int) -> Optional[int]:
        """Show the slice where ``label`` disagrees most (and centre on it); returns its index.

        For a 2D image only the view is centred.  Returns None when the two
        layers agree everywhere on this label.
        """
        if self._pair is None:
            return None
        a, b = self._pair
        diff = (a == label) ^ (b == label)
        if not diff.any():
            self.status.setText(f"label {label}: reference and test agree everywhere")
            return None
        z = largest_disagreement_slice(a, b, label) if a.ndim == 3 else None
        plane = diff[z] if z is not None else diff
        cy, cx = (float(v) for v in np.argwhere(plane).mean(axis=0))
        data_point = (z, cy, cx) if z is not None else (cy, cx)
        layer = self.disagreement_layer
        world = np.asarray(layer.data_to_world(data_point) if layer is not None else data_point, float)
        if z is not None:
            self.viewer.dims.set_point(0, float(world[0]))
        self.viewer.camera.center = tuple(world[-2:])
        where = f"slice {z}" if z is not None else "the image"
        self.status.setText(f"label {label}: {int(plane.sum())} voxels disagree on {where}")
        return z
