"""The GraphSAM study: a resumable grid of (dataset x protocol x seed x optimizer) training cells,
one result file per cell, and the report that aggregates whatever cells exist (``graphsam study``)."""
from graphsam_ext.study.grid import (BASELINE, DATASETS, PROTOCOLS, STUDY_OPTIMIZERS, StopStudy, StudyPlan,
                                     available_optimizers, cell_path, run_study)
from graphsam_ext.study.report import aggregate, build_report, load_cells, paired_difference
from graphsam_ext.study.stats import SIGN_FLIP, T_TEST, paired_test, sign_flip_p, t_statistic

__all__ = [
    "BASELINE", "DATASETS", "PROTOCOLS", "STUDY_OPTIMIZERS", "StopStudy", "StudyPlan", "available_optimizers",
    "cell_path", "run_study", "aggregate", "build_report", "load_cells", "paired_difference", "SIGN_FLIP", "T_TEST",
    "paired_test", "sign_flip_p", "t_statistic",
]
