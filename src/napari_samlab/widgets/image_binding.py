"""Which image the Segment panel works on, kept in step with napari's layer list.

The Image box must show what prompts go to, from the first moment: as soon
as the viewer holds an image, one is bound (the selected image layer, else
the newest); selecting another image layer binds it; removing the bound one
binds another; renaming relists.  The panel is told through two callbacks.
"""
from __future__ import annotations

import contextlib
from typing import Callable


def is_image(layer) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


class ImageBinding:
    """Follows ``viewer.layers`` for a panel.

    Parameters
    ----------
    viewer : napari.Viewer
    bound : callable () -> layer or None
        The image the panel works on now.
    bind : callable (layer or None)
        Bind this image (None: the bound one is gone).
    show_choices : callable (names, bound name or None)
        Refresh the Image box.
    alive : callable () -> bool
        False once the panel is closed (events are ignored then).
    """

    def __init__(self, viewer, bound: Callable, bind: Callable, show_choices: Callable, alive: Callable):
        self.viewer = viewer
        self.bound = bound
        self.bind = bind
        self.show_choices = show_choices
        self.alive = alive
        layers = viewer.layers
        layers.events.inserted.connect(self.on_layers_changed)
        layers.events.removed.connect(self.on_layers_changed)
        layers.selection.events.active.connect(self.on_active_layer)

    def images(self) -> list:
        return [la for la in self.viewer.layers if is_image(la)]

    def refresh(self) -> None:
        bound = self.bound()
        self.show_choices([la.name for la in self.images()], bound.name if bound is not None else None)

    def on_layers_changed(self, event=None) -> None:
        """Layers added or removed: (re)bind when needed, relist, and watch every image's name."""
        if not self.alive():
            return
        images = self.images()
        for layer in images:
            with contextlib.suppress(TypeError, ValueError):
                layer.events.name.disconnect(self.on_renamed)
            layer.events.name.connect(self.on_renamed)
        bound = self.bound()
        if bound is not None and bound not in self.viewer.layers:
            self.bind(None)
            bound = None
        if bound is None and images:  # the first Box click must work without touching the layer list
            active = self.viewer.layers.selection.active
            self.bind(active if active in images else images[-1])
        self.refresh()

    def on_renamed(self, event=None) -> None:
        if self.alive():
            self.refresh()

    def on_active_layer(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        if self.alive() and is_image(layer) and layer is not self.bound():
            self.bind(layer)
