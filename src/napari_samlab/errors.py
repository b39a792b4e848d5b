"""The one exception type users see.

Every failure caused by the user's input (a file, a checkpoint, a prompt)
is raised as :class:`SamlabError` with a message that says what is wrong and
what to do.  The CLI prints ``str(err)`` as a single line on stderr, the
widgets show it as a napari notification; neither shows a traceback.
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
