"""The exceptions users see, and how each front end phrases them.

Every failure caused by the user's input (a file, a checkpoint, a prompt)
is raised as :class:`SamlabError` with a message that says what is wrong and
what to do.  The CLI prints it as a single line on stderr, the widgets show
it as a napari notification; neither shows a traceback.

Errors about something the user set through a control (a prompt, the model
choice, a checkpoint field) are :class:`InputError` (prompts:
:class:`PromptError`).  Their text names those inputs with placeholders
such as ``{box}`` or ``{model:medsam}``, and each front end phrases them for
its user: :meth:`SamlabError.for_cli` says ``--box X0 Y0 X1 Y1`` and
``--model medsam``, :meth:`SamlabError.for_gui` names the widget's controls,
``str(err)`` (scripts, logs) uses plain words.  So a GUI user is never told
to pass a command-line flag.

:class:`Cancelled` is the one other exception of the package: the user
stopped the work, nothing went wrong.  This module imports nothing of the
package: every floor may use it.
"""
from __future__ import annotations

import string
from typing import Mapping, Optional

#: how each front end names the inputs a message may refer to; a value with
#: ``{}`` takes the placeholder's argument (``{model:sam}``), the second
#: form is used without one
NEUTRAL_NAMES = {
    "model": ("model '{}'", "a model family"),
    "checkpoint": ("checkpoint {}", "the checkpoint file"),
    "base_checkpoint": ("base checkpoint {}", "the base_checkpoint argument"),
    "box": ("a box", "a box"),
    "point": ("a point", "a point inside the object"),
    "negative": ("a background point", "a background point"),
    "slice": ("slice {}", "the prompted slice"),
    "window": ("window {}", "another window"),
    "encoder": ("encoder backend '{}'", "another encoder backend"),
    "image_size": ("image size {}", "the image size"),
    "label": ("label {}", "the label value"),
    "cache_dir": ("cache folder {}", "the cache folder (cache_dir)"),
}
CLI_NAMES = {
    "model": ("--model {}", "--model NAME"),
    "checkpoint": ("--checkpoint {}", "--checkpoint PATH"),
    "base_checkpoint": ("--base-checkpoint {}", "--base-checkpoint PATH"),
    "box": ("--box {}", "--box X0 Y0 X1 Y1"),
    "point": ("--point {}", "--point X Y"),
    "negative": ("--negative {}", "--negative X Y"),
    "slice": ("--slice {}", "--slice Z"),
    "window": ("--window {}", "--window PRESET or --window-level L W"),
    "encoder": ("--encoder {}", "--encoder torch|onnx|openvino"),
    "image_size": ("--image-size {}", "--image-size S"),
    "label": ("--label {}", "--label N"),
    "cache_dir": ("--cache-dir {}", "--cache-dir"),
}
GUI_NAMES = {
    "model": ("'{}' in the Model list", "a model in the Model list"),
    "checkpoint": ("checkpoint {}", "a file in the Checkpoint field"),
    "base_checkpoint": ("base checkpoint {}", "the Base checkpoint field"),
    "box": ("a box (box tool)", "a box (box tool)"),
    "point": ("a click (point tool)", "a click inside the object (point tool)"),
    "negative": ("a background click (point tool)", "a background click (point tool)"),
    "slice": ("slice {}", "the prompted slice"),
    "window": ("window '{}'", "another window in the Window list"),
    "encoder": ("'{}' in the Encoder list", "another entry of the Encoder list"),
    "image_size": ("image size {}", "the Image size field"),
    "label": ("label {}", "the label value"),
    "cache_dir": ("cache folder {}", "the disk cache folder setting"),
}


class _Ref:
    """One placeholder: formats as the front end's name of an input."""

    def __init__(self, key: str, names: Mapping[str, tuple]):
        self.key, self.names = key, names

    def __format__(self, arg: str) -> str:
        forms = self.names.get(self.key)
        if forms is None:
            return "{" + self.key + (":" + arg if arg else "") + "}"
        with_arg, without = forms
        return with_arg.format(arg) if arg else without


class _Names(dict):
    def __init__(self, names):
        super().__init__()
        self.names = names

    def __missing__(self, key):
        return _Ref(key, self.names)


def phrase(template: str, names: Mapping[str, tuple]) -> str:
    """Fill a message's ``{input}`` / ``{input:value}`` placeholders with a front end's names.

    Parameters
    ----------
    template : str
    names : mapping of str to (str, str)
        e.g. :data:`CLI_NAMES`.

    Returns
    -------
    str

    Examples
    --------
    >>> phrase("draw {box} instead", CLI_NAMES)
    'draw --box X0 Y0 X1 Y1 instead'
    >>> phrase("choose {model:sam}", GUI_NAMES)
    "choose 'sam' in the Model list"
    """
    return " ".join(string.Formatter().vformat(template, (), _Names(names)).split())


class SamlabError(Exception):
    """A problem with the user's input, explained in one line.

    Parameters
    ----------
    message : str
        What is wrong and what to do about it, e.g.
        ``"lung.nii.gz is truncated (expected 16 MB, found 3 MB): re-export it"``.

    Examples
    --------
    >>> SamlabError("bad   file").for_cli()
    'bad file'
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    def for_cli(self) -> str:
        """The message as the command line shows it."""
        return str(self)

    def for_gui(self, names: Optional[Mapping[str, tuple]] = None) -> str:
        """The message as a widget shows it (``names``: the widget's own names of its controls)."""
        return str(self)


class InputError(SamlabError):
    """A :class:`SamlabError` about an input the user set, phrased per front end.

    Parameters
    ----------
    message : str
        With placeholders for the inputs it names: ``{box}``, ``{point}``,
        ``{negative}``, ``{slice}``, ``{model}`` / ``{model:NAME}``,
        ``{checkpoint}``, ``{base_checkpoint}``, ``{window}``, ``{encoder}``,
        ``{image_size}``, ``{label}``, ``{cache_dir}`` (literal braces are
        written ``{{`` and ``}}``).
    field : str, optional
        The input at fault (one of those names), so that a widget can point
        at its control.

    Examples
    --------
    >>> err = InputError("{checkpoint} is missing: pass {checkpoint}", field="checkpoint")
    >>> str(err)
    'the checkpoint file is missing: pass the checkpoint file'
    >>> err.for_cli()
    '--checkpoint PATH is missing: pass --checkpoint PATH'
    """

    def __init__(self, message: str, field: Optional[str] = None):
        self.template = " ".join(str(message).split())
        self.field = field
        super().__init__(phrase(self.template, NEUTRAL_NAMES))

    def for_cli(self) -> str:
        return phrase(self.template, CLI_NAMES)

    def for_gui(self, names: Optional[Mapping[str, tuple]] = None) -> str:
        return phrase(self.template, {**GUI_NAMES, **(names or {})})


class PromptError(InputError):
    """A prompt the model cannot use: what is wrong, which input, what to do.

    Raised by :func:`napari_samlab.base.prompts.validate_prompt`, the one
    prompt check every entry point (CLI, ``SlicePredictor``, propagation,
    the widgets through them) goes through.

    Parameters
    ----------
    what : str
        What is wrong (may use placeholders, see :class:`InputError`).
    field : str, optional
        ``"box"``, ``"point"``, ``"negative"``, ``"slice"`` or None (the
        prompt as a whole).
    hint : str
        What to do.

    Examples
    --------
    >>> err = PromptError("medsam takes boxes only", "point", "draw {box} around the object instead")
    >>> err.for_cli()
    'medsam takes boxes only: draw --box X0 Y0 X1 Y1 around the object instead'
    >>> err.for_gui()
    'medsam takes boxes only: draw a box (box tool) around the object instead'
    """

    def __init__(self, what: str, field: Optional[str] = None, hint: str = ""):
        self.what = what
        self.hint = hint
        super().__init__(f"{what}: {hint}" if hint else what, field)


class Cancelled(Exception):
    """Work stopped because the user asked; not an error.

    Raised by encodes running inside
    :func:`napari_samlab.base.cancel.cancellable` once its event is set (the
    widgets' background prefetch, propagation's Cancel).  Deliberately not a
    :class:`SamlabError`: callers catch it to stop quietly, and nothing is
    shown to the user.

    Examples
    --------
    >>> try:
    ...     raise Cancelled("encoding stopped")
    ... except SamlabError:
    ...     print("error")
    ... except Cancelled:
    ...     print("stopped")
    stopped
    """
