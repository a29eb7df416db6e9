"""Studies: a grid of runs from one YAML file, run idempotently, pruned, measured and reported.

The last stage of the pipeline: it may import every other stage, and only the CLI imports it.
``sparsemtl study STUDY.yaml`` expands the grid (:mod:`.spec`), runs the cells (:mod:`.runner`,
:mod:`.launchers`, :mod:`.cell`) and writes the report.
"""

from .cell import run_cell
from .runner import StudyResult, run_study
from .spec import Cell, StudySpec, expand, load_study, study_from_dict

__all__ = ["Cell", "StudyResult", "StudySpec", "expand", "load_study", "run_cell", "run_study", "study_from_dict"]
