"""The one exception type users see.

Every failure caused by the user's input (a file, a checkpoint, a prompt)
is raised as :class:`SamlabError` with a message that says what is wrong and
what to do.  The CLI prints ``str(err)`` as a single line on stderr, the
widgets show it as a napari notification; neither shows a traceback.
:class:`Cancelled` is the one other exception of the package: the user
stopped the work, nothing went wrong.
"""


class SamlabError(Exception):
    """A problem with the user's input, explained in one line.

    Parameters
    ----------
    message : str
        What is wrong and what to do about it, e.g.
        ``"lung.nii.gz is truncated (expected 16 MB, found 3 MB): re-export it"``.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Cancelled(Exception):
    """Work stopped because the user asked; not an error.

    Raised by encodes running inside
    :func:`napari_samlab.models.base.cancellable` once its event is set (the
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
