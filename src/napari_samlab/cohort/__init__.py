"""Cohorts: prompts files, batch runs on dask.distributed, provenance, replay, comparison.

napari-free.  One module per concern:

* :mod:`.prompts`: read, check and write prompts files (``PromptEntry``,
  ``load_prompts``, ``save_prompts``);
* :mod:`.apply`: apply prompt entries to an image (the one path shared by
  ``segment --prompts``, ``batch`` and ``replay``);
* :mod:`.provenance`: the ``CASE.json`` record, file hashes;
* :mod:`.cases`: CASES.csv;
* :mod:`.worker` / :mod:`.batch`: one case per Dask task / the client side;
* :mod:`.replay`, :mod:`.compare`: rerun a record, compare two label images;
* :mod:`.cli`: the ``samlab`` subcommands.

Examples
--------
>>> from napari_samlab.cohort import PromptEntry, save_prompts, load_prompts   # doctest: +SKIP
>>> save_prompts("ct.prompts.json", [PromptEntry(slice=20, box=(319, 337, 383, 393), propagate=True)])  # doctest: +SKIP
>>> from napari_samlab.cohort import compare_files                              # doctest: +SKIP
>>> compare_files("truth.nrrd", "out/case01.nii.gz")[0]["dice"]                 # doctest: +SKIP
"""
from .compare import compare_files, compare_labels
from .prompts import PromptEntry, load_prompts, parse_prompts, prompts_document, save_prompts

__all__ = ["PromptEntry", "compare_files", "compare_labels", "load_prompts", "parse_prompts",
           "prompts_document", "save_prompts"]
