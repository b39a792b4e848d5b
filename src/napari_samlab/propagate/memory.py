"""3D segmentation with SAM 2's memory: MedSAM2's pipeline on a volume in memory.

``medsam2_infer_3D_CT.py`` (bowang-lab/MedSAM2), step by step:

1. clip the volume to the window, min-max the clipped volume to 0-255,
   ``np.uint8`` (truncation);
2. per slice: PIL ``fromarray(uint8).convert("RGB").resize((512, 512))``
   (PIL's default bicubic filter; non-square slices are squashed), /255,
   ImageNet mean/std (float64 arithmetic, float32 when the frame is used);
3. ``init_state``; box ``[x0, y0, x1, y1]`` on the key slice (scaled by
   512/W, 512/H inside ``add_new_points_or_box``); propagate forward to the
   last slice; ``reset_state``; the same box again; propagate in reverse to
   slice 0;
4. every yielded frame: ``logits > 0`` after the predictor's bilinear
   resize to (H, W), OR-ed into one volume;
5. the largest 26-connected component of that volume (``getLargestCC``:
   ``skimage.measure.label`` + ``bincount``).

:class:`MemorySession` does exactly that (``largest_component`` defaults to
upstream's True) and keeps both directions' predictor states, so a
correction on a slice re-propagates from there with the memory it has,
instead of from scratch.  Frames are preprocessed when the predictor asks
for them (:class:`FrameSource`), so memory stays flat with depth.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..errors import Cancelled, SamlabError

from ..models.sam2_inputs import IMAGENET_MEAN, IMAGENET_STD, frame_tensor, prompt_tensors  # noqa: F401


# ----------------------------------------------------------------------
# preprocessing
def volume_to_uint8(volume: np.ndarray, window) -> np.ndarray:
    """MedSAM2's intensity step: clip to ``window``, min-max the clipped volume to 0-255, truncate to uint8.

    Parameters
    ----------
    volume : ndarray
        ``(z, y, x)`` (or one ``(y, x)`` / ``(y, x, 3)`` image).
    window : Window or None
        None (``--window none``): the values are used as they are; they must
        lie in 0..255 (upstream asserts this) and are truncated to uint8.

    Returns
    -------
    ndarray of uint8, same shape.

    Raises
    ------
    SamlabError
        ``window`` is None and the values leave 0..255.

    Examples
    --------
    >>> from napari_samlab.base.windowing import Window
    >>> volume_to_uint8(np.array([[-1000.0, 0.0, 40.0]]), Window(-160, 240))
    array([[  0, 204, 255]], dtype=uint8)
    """
    from ..base.windowing import Window, apply_window

    vol = np.asarray(volume)
    if vol.size == 0:
        raise SamlabError("the image is empty: nothing to segment")
    vmin, vmax = float(np.min(vol)), float(np.max(vol))
    if window is None:
        if vmin < 0 or vmax >= 256:
            raise SamlabError(f"--window none uses the values as they are, but they span {vmin:g}..{vmax:g}, "
                              "outside 0..255: use --window auto, a preset, or --window-level L W")
        return vol.astype(np.uint8)
    # upstream min-maxes the *clipped* volume: the window shrinks to the data it holds
    lo, hi = max(float(window.lo), vmin), min(float(window.hi), vmax)
    win = Window(lo, hi, "uint8", window.keep_zero, window.name)
    out = np.empty(vol.shape, np.uint8)
    if vol.ndim == 3:
        for z in range(vol.shape[0]):  # slice by slice: no float64 copy of the whole volume
            out[z] = apply_window(vol[z], win)
    else:
        out[...] = apply_window(vol, win)
    return out


class FrameSource:
    """The frames of a uint8 volume, preprocessed when asked for (``frames[z]``).

    Parameters
    ----------
    volume_u8 : ndarray of uint8
        ``(z, y, x)`` or ``(z, y, x, 3)``.
    size : int
        Model input side.

    Examples
    --------
    >>> frames = FrameSource(np.zeros((4, 16, 16), np.uint8), 32)
    >>> len(frames), tuple(frames[2].shape)
    (4, (3, 32, 32))
    """

    def __init__(self, volume_u8: np.ndarray, size: int):
        self.volume = volume_u8
        self.size = int(size)
        self.reads = 0  # frames handed to the encoder (the predictor reads a frame only to encode it)

    def __len__(self) -> int:
        return int(self.volume.shape[0])

    def __getitem__(self, z: int):
        self.reads += 1
        return frame_tensor(self.volume[int(z)], self.size)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest fully connected component (26-connected in 3D, 8 in 2D), as upstream's ``getLargestCC``.

    Ties go to the component met first in raster order.  An empty mask is
    returned unchanged.

    Examples
    --------
    >>> m = np.zeros((1, 5, 5), bool); m[0, 0, 0] = True; m[0, 2:5, 2:5] = True
    >>> int(keep_largest_component(m).sum())
    9
    """
    from skimage import measure

    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    lab = measure.label(mask, connectivity=mask.ndim)
    return lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1


# ----------------------------------------------------------------------
class MemorySession:
    """Prompt slices of a volume and propagate with SAM 2's memory (MedSAM2's recipe).

    Parameters
    ----------
    model : napari_samlab.models.medsam2.Sam2Model
        A ``medsam2`` or ``sam2`` engine (``load_model(..., family="medsam2")``).
    volume : ndarray
        ``(z, y, x)`` as read (HU, MR values...), or a 2D image.
    window : str, tuple, Window or None
        ``"auto"`` (MedSAM2's CT/MR recipe), ``"none"`` (values used as they
        are; must be 0..255), a preset name or ``(level, width)``.
    modality : str, optional
        ``"CT"``/``"MR"`` when known (DICOM).
    largest_component : bool, optional
        Keep only the largest 26-connected component of the result
        (upstream's post-processing; default: the model's option, True).

    Examples
    --------
    >>> model = load_model("MedSAM2_latest.pt", family="medsam2")      # doctest: +SKIP
    >>> s = MemorySession(model, ct.array, window="auto")              # doctest: +SKIP
    >>> s.add_box(40, (120, 88, 190, 160))                             # doctest: +SKIP
    >>> mask = s.propagate()              # bool (z, y, x)             # doctest: +SKIP
    >>> s.add_points(52, [(150, 120)], [0])  # correction, re-propagates from 52 # doctest: +SKIP
    >>> mask = s.result()                                              # doctest: +SKIP
    """

    def __init__(self, model, volume: np.ndarray, window: Union[str, tuple, object, None] = "auto",
                 modality: Optional[str] = None, largest_component: Optional[bool] = None):
        from collections import OrderedDict

        from ..base.windowing import resolve_window

        if not getattr(model, "memory_propagation", False):
            raise SamlabError(f"the {getattr(model, 'family', '?')} model has no video memory: "
                              "use a MedSAM2 or SAM 2 checkpoint (--model medsam2 / sam2)")
        vol = np.asarray(volume)
        if vol.ndim == 2:
            vol = vol[None]  # a 2D image is a one-slice volume; RGB images come as (1, y, x, 3)
        self.model = model
        self.net = model.net
        model.prepare_encoder()
        self.window = resolve_window(window, vol, model, modality)
        self.frames_u8 = volume_to_uint8(vol, self.window)
        self.depth = int(vol.shape[0])
        self.height, self.width = int(vol.shape[1]), int(vol.shape[2])
        self.frames = FrameSource(self.frames_u8, model.image_size)
        self.largest_component = model.options.largest_component if largest_component is None else bool(largest_component)
        self._features = OrderedDict()
        self._prompts: list = []  # (z, Prompt) before the first propagation
        self._states: dict = {}  # "forward"/"reverse" -> predictor state after propagating
        self._masks = {d: np.zeros((self.depth, self.height, self.width), bool) for d in ("forward", "reverse")}
        self._visited = {d: np.zeros(self.depth, bool) for d in ("forward", "reverse")}
        #: per direction, slice -> the model's object score (sigmoid of SAM 2's object-score logit)
        self.scores: dict = {"forward": {}, "reverse": {}}
        #: (lo, hi): the slices tracking may visit (z-limits / stop slices); the whole volume by default
        self.limits = (0, self.depth - 1)
        #: after a cancelled :meth:`propagate`: (masks, visited, scores) per direction of what was done
        self.partial = None
        #: slices given a prompt or mask (before propagation or as corrections)
        self.anchor_slices: set = set()

    # -- prompts ---------------------------------------------------------
    def add_box(self, z: int, box: Sequence[float], points=None, point_labels=None, progress=None,
                cancel: Optional[threading.Event] = None) -> np.ndarray:
        """Prompt slice ``z`` with a box (and optional points); returns that slice's mask.

        Before :meth:`propagate`: the prompt is one of the conditioning
        frames both directions start from.  After: a correction; the
        direction(s) that tracked ``z`` re-propagate from ``z`` onwards with
        their memory and :meth:`result` changes accordingly.
        """
        from ..models.base import Prompt

        pts = None if points is None else [tuple(p) for p in points]
        return self.add_prompt(z, Prompt(box=tuple(box), points=pts, point_labels=point_labels), progress, cancel)

    def add_points(self, z: int, points: Sequence, point_labels: Optional[Sequence[int]] = None, progress=None,
                   cancel: Optional[threading.Event] = None) -> np.ndarray:
        """Prompt slice ``z`` with clicks (1 object, 0 background); see :meth:`add_box`."""
        from ..models.base import Prompt

        pts = [tuple(p) for p in points]
        labels = list(point_labels) if point_labels is not None else [1] * len(pts)
        return self.add_prompt(z, Prompt(points=pts, point_labels=labels), progress, cancel)

    def add_mask(self, z: int, mask: np.ndarray, progress=None, cancel: Optional[threading.Event] = None) -> np.ndarray:
        """Give slice ``z`` a painted / corrected mask (SAM 2's ``add_new_mask``); see :meth:`add_box`."""
        z = self._check_slice(z)
        m = np.asarray(mask, bool)
        if m.shape != (self.height, self.width):
            raise SamlabError(f"the mask for slice {z} has shape {m.shape} but slices are {(self.height, self.width)}")
        return self._add(z, m, progress, cancel)

    def add_prompt(self, z: int, prompt, progress=None, cancel: Optional[threading.Event] = None) -> np.ndarray:
        """Prompt slice ``z`` with a :class:`~napari_samlab.models.base.Prompt`; see :meth:`add_box`."""
        from ..base.prompts import validate_prompt

        z = self._check_slice(z)
        prompt = validate_prompt(prompt, (self.height, self.width), correction=bool(self._states))
        self._check_contrast(z, prompt)
        return self._add(z, prompt, progress, cancel)

    def _add(self, z: int, prompt, progress, cancel) -> np.ndarray:
        """A prompt (or mask) before propagation, or a correction that re-tracks from ``z`` after it."""
        self.anchor_slices.add(z)
        if not self._states:
            self._prompts = [(pz, p) for pz, p in self._prompts if pz != z] + [(z, prompt)]
            return self.segment_slice(z, prompt)
        mask = None
        for direction, state in self._states.items():
            if not self._visited[direction][z]:
                continue
            self._apply(state, z, prompt)
            mask = self._run(direction, state, z, progress, cancel)
        if mask is None:  # a slice neither direction reached (cannot happen after a full propagation)
            self._prompts.append((z, prompt))
            return self.segment_slice(z, prompt)
        return self._masks["forward"][z] | self._masks["reverse"][z]

    def segment_slice(self, z: int, prompt) -> np.ndarray:
        """The mask the video predictor gives on an un-tracked slice ``z`` for ``prompt`` (no memory)."""
        import torch

        state = self._new_state()
        with torch.inference_mode():
            _, _, logits = self._apply(state, self._check_slice(z), prompt)
        return (logits[0, 0] > 0).cpu().numpy()

    # -- propagation -----------------------------------------------------
    def propagate(self, progress: Optional[Callable[[int, int, int], None]] = None,
                  cancel: Optional[threading.Event] = None, lo: Optional[int] = None,
                  hi: Optional[int] = None) -> np.ndarray:
        """Run MedSAM2's two passes from the prompted slice(s); returns :meth:`result`.

        Parameters
        ----------
        progress : callable, optional
            ``progress(z, done, total)`` after each slice.
        cancel : threading.Event, optional
            Set it to stop (raises :class:`~napari_samlab.errors.Cancelled`;
            the session is then as before the call, and :attr:`partial`
            holds what was tracked).
        lo, hi : int, optional
            Track no slice outside ``[lo, hi]`` (z-limits); corrections keep
            to them too.  Default: the whole volume (upstream).

        Returns
        -------
        ndarray of bool, ``(z, y, x)``.
        """
        if not self._prompts:
            raise SamlabError("no prompt yet: add a box or points on a slice first")
        zs = [z for z, _ in self._prompts]
        lo = 0 if lo is None else max(0, int(lo))
        hi = self.depth - 1 if hi is None else min(self.depth - 1, int(hi))
        starts = {"forward": min(zs), "reverse": max(zs)}
        total = max(0, hi - starts["forward"]) + 1 + max(0, starts["reverse"] - lo) + 1
        counter = [0]

        def tick(z):
            counter[0] += 1
            if progress is not None:
                progress(z, counter[0], total)

        states, masks, visited = {}, {}, {}
        saved = (self._masks, self._visited, self.scores, self.limits)
        self._masks = {d: np.zeros_like(m) for d, m in saved[0].items()}
        self._visited = {d: np.zeros_like(v) for d, v in saved[1].items()}
        self.scores = {d: {} for d in saved[2]}
        self.limits, self.partial = (lo, hi), None
        try:
            for direction in ("forward", "reverse"):
                state = self._new_state()
                for z, prompt in self._prompts:
                    self._apply(state, z, prompt)
                self._run(direction, state, starts[direction], tick, cancel)
                states[direction] = state
        except BaseException:
            self.partial = (self._masks, self._visited, self.scores)
            self._masks, self._visited, self.scores, self.limits = saved
            raise
        self._states = states
        return self.result()

    def result(self) -> np.ndarray:
        """Union of both directions' masks, then (by default) the largest 26-connected component."""
        merged = self._masks["forward"] | self._masks["reverse"]
        return keep_largest_component(merged) if self.largest_component else merged

    @property
    def propagated(self) -> bool:
        return bool(self._states)

    def tracked(self) -> np.ndarray:
        """Bool per slice: tracked by either direction (the rest keeps what it had)."""
        return self._visited["forward"] | self._visited["reverse"]

    def best_scores(self) -> dict:
        """Slice -> SAM 2's object-present probability (the higher of the two directions)."""
        out: dict = {}
        for scores in self.scores.values():
            for z, v in scores.items():
                out[z] = max(v, out.get(z, 0.0))
        return out

    # -- internals -------------------------------------------------------
    def _new_state(self) -> dict:
        return self.net.init_state_from_frames(self.frames, self.height, self.width, self._features)

    def _apply(self, state: dict, z: int, prompt):
        import torch

        self.net.pin_features(state, z)  # the prompted slice is used by both directions: encode it once
        if isinstance(prompt, np.ndarray):  # a painted / corrected mask
            with torch.inference_mode():
                return self.net.add_new_mask(state, frame_idx=z, obj_id=1, mask=torch.from_numpy(prompt))
        points, labels, box = prompt_tensors(prompt)
        with torch.inference_mode():
            return self.net.add_new_points_or_box(state, frame_idx=z, obj_id=1, points=points, labels=labels, box=box)

    def _run(self, direction: str, state: dict, start: int, tick, cancel) -> np.ndarray:
        import torch

        reverse = direction == "reverse"
        out = self._masks[direction]
        lo, hi = self.limits
        span = max(0, start - lo if reverse else hi - start)
        outputs = state["output_dict_per_obj"]
        with torch.inference_mode():
            for z, _, logits in self.net.propagate_in_video(state, start_frame_idx=start, reverse=reverse,
                                                            max_frame_num_to_track=span):
                out[z] = (logits[0, 0] > 0).cpu().numpy()
                self._visited[direction][z] = True
                self.scores[direction][z] = _object_score(outputs, z)
                if tick is not None:
                    tick(z)
                if cancel is not None and cancel.is_set():
                    raise Cancelled("propagation stopped on request")
        return out[start]

    def _check_slice(self, z) -> int:
        z = int(z)
        if not 0 <= z < self.depth:
            raise SamlabError(f"slice {z} is outside the volume (0..{self.depth - 1})")
        return z

    def _check_contrast(self, z: int, prompt) -> None:
        """Refuse a prompt on a slice (or box) with nothing in it: the model would answer noise."""
        sl = self.frames_u8[z]
        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            region = sl[max(0, min(y0, y1)):max(y0, y1) + 1, max(0, min(x0, x1)):max(x0, x1) + 1]
        else:
            region = sl
        if region.size == 0 or int(region.max()) == int(region.min()):
            where = "the box on slice" if prompt.box is not None else "slice"
            raise SamlabError(f"{where} {z} holds one uniform value after windowing (an empty slice or a window that "
                              "hides it): prompt a slice that shows the object, or change --window")


def _object_score(outputs: dict, z: int) -> float:
    """SAM 2's own "object present" probability on slice ``z`` (sigmoid of its object-score logit)."""
    for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
        out = outputs.get(0, {}).get(kind, {}).get(z)
        if out is not None and out.get("object_score_logits") is not None:
            return float(out["object_score_logits"].float().sigmoid().max())
    return 1.0


def segment_with_memory(model, volume: np.ndarray, z: int, prompt, window="auto", propagate: bool = True,
                        modality: Optional[str] = None, largest_component: Optional[bool] = None,
                        progress=None, cancel=None) -> np.ndarray:
    """MedSAM2's 3D inference from one prompt: the mask volume (bool ``(z, y, x)``).

    Without ``propagate`` only slice ``z`` is segmented (the rest is False),
    as the video predictor answers the prompt on that slice, then the same
    largest-component step.

    Examples
    --------
    >>> from napari_samlab.models.base import Prompt
    >>> mask = segment_with_memory(model, ct, 40, Prompt(box=(120, 88, 190, 160)))   # doctest: +SKIP
    """
    session = MemorySession(model, volume, window, modality, largest_component)
    if propagate:
        session.add_prompt(z, prompt)
        return session.propagate(progress, cancel)
    out = np.zeros((session.depth, session.height, session.width), bool)
    z = session._check_slice(z)
    session._check_contrast(z, prompt)
    from ..base.prompts import validate_prompt

    sl = session.segment_slice(z, validate_prompt(prompt, (session.height, session.width)))
    out[z] = keep_largest_component(sl) if session.largest_component else sl
    return out
