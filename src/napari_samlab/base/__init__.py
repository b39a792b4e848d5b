"""The floor every other sub-package stands on; it imports nothing of napari_samlab but ``errors``.

``windowing``  intensity windows (what the model sees)
``paths``      where the disk caches live and how their entries are named
``cancel``     stopping long work from another thread (``cancellable``)
``prompts``    the one prompt validator (what a prompt may be, for every entry point)
"""
