"""The UCI classification sets of R's mlbench package (``polyak data fetch mlbench``).

:func:`load_mlbench` reads one of :data:`MLBENCH_SETS` as ``(X, y, classes)``:
X float32 [n, d], y int64 codes into ``classes`` (the R factor's levels, in R's
order). Feature columns are encoded as R stores them: numeric columns as they
are; factor columns whose levels are numbers (DNA's 0/1 indicators, Ionosphere's
V1, BreastCancer's 1..10 grades, Vowel's V1) as those numbers; other factors
one-hot (none of the sets below has one). Identifier columns are dropped.

Left out of MLBENCH_SETS, and why: HouseVotes84, Soybean, Ozone and
PimaIndiansDiabetes2 are mostly missing values; BostonHousing(2) and Servo are
regression sets; Zoo has 101 rows. BreastCancer keeps the 683 of its 699 rows
without a missing value (the usual treatment).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .cache import DataFormatError, PathLike
from .fetching import require
from .rdata_loaders import read_rda

__all__ = ["MlbenchSet", "MLBENCH_SETS", "load_mlbench", "load_satellite", "load_letter"]


@dataclass(frozen=True)
class MlbenchSet:
    """file: the .rda in mlbench's data folder; obj: the data frame's name in it;
    target: the class column; drop: identifier columns; shape: (rows, features)
    of the full set after encoding (the features and the class count are checked
    on load); summary: one line for ``polyak data list``."""

    file: str
    obj: str
    target: str
    shape: Tuple[int, int]
    classes: int
    summary: str
    drop: Tuple[str, ...] = ()
    drop_missing: bool = False


MLBENCH_SETS: Dict[str, MlbenchSet] = {
    "satellite": MlbenchSet("Satellite.rda", "Satellite", "classes", (6435, 36), 6,
                            "Statlog Landsat satimage: 3x3 pixels x 4 bands, 6 soil/crop classes"),
    "letter": MlbenchSet("LetterRecognition.rda", "LetterRecognition", "lettr", (20000, 16), 26,
                         "letter recognition: 16 font features, 26 capital letters"),
    "shuttle": MlbenchSet("Shuttle.rda", "Shuttle", "Class", (58000, 9), 7,
                          "Statlog Shuttle: 9 sensor values, 7 classes (79% Rad.Flow)"),
    "dna": MlbenchSet("DNA.rda", "DNA", "Class", (3186, 180), 3,
                      "Statlog DNA splice junctions: 180 binary indicators, 3 classes (ei, ie, n)"),
    "vehicle": MlbenchSet("Vehicle.rda", "Vehicle", "Class", (846, 18), 4,
                          "Statlog vehicle silhouettes: 18 shape features, 4 vehicles"),
    "vowel": MlbenchSet("Vowel.rda", "Vowel", "Class", (990, 10), 11,
                        "Deterding vowel recognition: 10 features, 11 vowels"),
    "glass": MlbenchSet("Glass.rda", "Glass", "Type", (214, 9), 6,
                        "glass identification: 9 chemical features, 6 types"),
    "sonar": MlbenchSet("Sonar.rda", "Sonar", "Class", (208, 60), 2,
                        "sonar returns: 60 band energies, mine (M) vs rock (R)"),
    "ionosphere": MlbenchSet("Ionosphere.rda", "Ionosphere", "Class", (351, 34), 2,
                             "ionosphere radar returns: 34 features, bad vs good"),
    "pima": MlbenchSet("PimaIndiansDiabetes.rda", "PimaIndiansDiabetes", "diabetes", (768, 8), 2,
                       "Pima Indians diabetes: 8 clinical features, neg vs pos"),
    "breastcancer": MlbenchSet("BreastCancer.rda", "BreastCancer", "Class", (683, 9), 2,
                               "Wisconsin breast cancer: 9 graded features, benign vs malignant "
                               "(rows with a missing value dropped)", drop=("Id",), drop_missing=True),
}


def _encode(frame, path: Path, spec: MlbenchSet) -> np.ndarray:
    import pandas as pd

    columns = []
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            levels = list(column.cat.categories)
            try:
                values = np.array([float(level) for level in levels])
            except (TypeError, ValueError):
                values = None
            codes = np.asarray(column.cat.codes)
            if values is not None:
                columns.append(values[codes][:, None])
            else:
                columns.append(np.eye(len(levels))[codes])
        else:
            try:
                columns.append(column.to_numpy(dtype=np.float64)[:, None])
            except (TypeError, ValueError) as error:
                raise DataFormatError(f"{path}: column {name!r} is not numeric ({error})") from error
    X = np.concatenate(columns, axis=1).astype(np.float32)
    if not np.isfinite(X).all():
        raise DataFormatError(f"{path}: feature columns contain missing or infinite values")
    return X


def load_mlbench(name: str, root: Optional[PathLike] = None, *,
                 data_dir: Optional[PathLike] = None) -> Tuple[np.ndarray, np.ndarray, Tuple[str, ...]]:
    """One set of :data:`MLBENCH_SETS`: X float32 [n, d], y int64 in 0..classes-1, the class names.

    root: a folder with the .rda file; None: ``<data_dir or cache>/mlbench``
    (``polyak data fetch mlbench``).
    """
    import pandas as pd

    if name not in MLBENCH_SETS:
        raise KeyError(f"unknown mlbench set {name!r}; known: {', '.join(MLBENCH_SETS)}")
    spec = MLBENCH_SETS[name]
    folder = Path(root) if root is not None else require("mlbench", data_dir, files=(spec.file,))
    path = folder / spec.file
    objects = read_rda(path)
    if spec.obj not in objects or not isinstance(objects[spec.obj], pd.DataFrame):
        raise DataFormatError(f"{path}: no data frame named {spec.obj!r} (found {sorted(objects)})")
    frame = objects[spec.obj]
    if spec.target not in frame.columns:
        raise DataFormatError(f"{path}: {spec.obj!r} has no class column {spec.target!r}")
    frame = frame.drop(columns=[c for c in spec.drop if c in frame.columns])
    if spec.drop_missing:
        frame = frame.dropna()
    classes = pd.Categorical(frame[spec.target])
    if (np.asarray(classes.codes) < 0).any():
        raise DataFormatError(f"{path}: class column {spec.target!r} has missing values")
    X = _encode(frame.drop(columns=[spec.target]), path, spec)
    if X.shape[1] != spec.shape[1] or len(classes.categories) != spec.classes:
        raise DataFormatError(f"{path}: expected {spec.shape[1]} features and {spec.classes} classes, "
                              f"found {X.shape[1]} and {len(classes.categories)}")
    return X, np.asarray(classes.codes, dtype=np.int64), tuple(str(c) for c in classes.categories)


def load_satellite(root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None):
    """Statlog Landsat satimage (mlbench ``Satellite``): X [6435, 36], y in 0..5; see load_mlbench."""
    return load_mlbench("satellite", root, data_dir=data_dir)


def load_letter(root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None):
    """Letter recognition (mlbench ``LetterRecognition``): X [20000, 16], y in 0..25 (A..Z); see load_mlbench."""
    return load_mlbench("letter", root, data_dir=data_dir)
