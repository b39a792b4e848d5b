"""CASES.csv: the list of cases a batch runs (SPEC.md).

A header, then one row per case with the columns ``case,image,prompts``.
``case`` names the outputs (``OUTDIR/CASE.nii.gz``, ``OUTDIR/CASE.json``),
so it must be unique and made of ``[A-Za-z0-9_.-]`` only; relative paths are
relative to the CSV's folder; ``prompts`` may be empty only for families
that need none (SAMed).  A file with a missing or unknown column, an unsafe
or repeated name, or a malformed row is refused as a whole before anything
runs.  Whether each image and prompts file can be read is a question for the
case itself (a missing image fails that case only).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import SamlabError

COLUMNS = ("case", "image", "prompts")
CASE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Case:
    """One row of CASES.csv with its paths made absolute.

    Examples
    --------
    >>> Case("c1", Path("/data/c1.nrrd"), None).output_names()
    ('c1.nii.gz', 'c1.json')
    """

    name: str
    image: Path
    prompts: Optional[Path]
    line: int = 0

    def output_names(self) -> tuple:
        return (f"{self.name}.nii.gz", f"{self.name}.json")

    def to_dict(self) -> dict:
        """Plain data for shipping to a worker."""
        return {"name": self.name, "image": str(self.image),
                "prompts": None if self.prompts is None else str(self.prompts), "line": self.line}


def check_case_name(name: str, where: str) -> None:
    """Raise unless ``name`` is a safe, non-empty output name."""
    if not name:
        raise SamlabError(f"{where}: the case name is empty: give every row a name")
    if not CASE_NAME.fullmatch(name) or name in (".", "..") or name.startswith("."):
        raise SamlabError(f"{where}: case name {name!r} is not allowed: use letters, digits, '_', '-' and '.' "
                          "(not starting with '.'), since it names the output files")


def read_cases(csv_path) -> List[Case]:
    """Read and check CASES.csv.

    Parameters
    ----------
    csv_path : str or Path

    Returns
    -------
    list of Case
        In file order.

    Raises
    ------
    SamlabError
        The file is missing or empty, a column is missing or unknown, a row
        has the wrong number of fields, a case name is empty, unsafe or
        repeated (names that differ only in case are repeats too: they would
        overwrite each other on macOS and Windows), or an image is not given.

    Examples
    --------
    >>> cases = read_cases("cohort/CASES.csv")   # doctest: +SKIP
    >>> cases[0].name, cases[0].image.is_absolute()   # doctest: +SKIP
    ('case01', True)
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SamlabError(f"{csv_path} does not exist: give the CSV listing the cases (columns case,image,prompts)")
    base = csv_path.resolve().parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise SamlabError(f"{csv_path.name} is not a UTF-8 text CSV: save it as CSV (UTF-8)") from None
    except csv.Error as err:
        raise SamlabError(f"{csv_path.name} is not a valid CSV ({err}): check its quoting") from None
    except OSError as err:
        raise SamlabError(f"cannot read {csv_path}: {err.strerror}") from None
    rows = [(i + 1, r) for i, r in enumerate(rows) if any(cell.strip() for cell in r)]
    if not rows:
        raise SamlabError(f"{csv_path.name} is empty: it needs a header line case,image,prompts and one row per case")
    header = [c.strip().lower() for c in rows[0][1]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise SamlabError(f"{csv_path.name} has no column {', '.join(missing)}: the header must be case,image,prompts "
                          f"(found {','.join(header)})")
    unknown = [c for c in header if c not in COLUMNS]
    if unknown or len(set(header)) != len(header):
        what = f"unknown column(s) {', '.join(unknown)}" if unknown else "a repeated column"
        raise SamlabError(f"{csv_path.name} has {what}: the header must be exactly case,image,prompts")
    col = {name: header.index(name) for name in COLUMNS}
    cases: List[Case] = []
    seen = {}
    for line, row in rows[1:]:
        where = f"{csv_path.name} line {line}"
        if len(row) != len(header):
            raise SamlabError(f"{where} has {len(row)} fields, the header {len(header)}: "
                              "write case,image,prompts (leave prompts empty but keep its comma)")
        name = row[col["case"]].strip()
        check_case_name(name, where)
        key = name.lower()
        if key in seen:
            raise SamlabError(f"{where}: case {name!r} repeats line {seen[key]}: every case needs its own name")
        seen[key] = line
        image = row[col["image"]].strip()
        if not image:
            raise SamlabError(f"{where}: case {name!r} has no image: give its path")
        prompts = row[col["prompts"]].strip()
        cases.append(Case(name, _absolute(image, base), _absolute(prompts, base) if prompts else None, line))
    if not cases:
        raise SamlabError(f"{csv_path.name} lists no cases: add one row per case under the header")
    return cases


def _absolute(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p
