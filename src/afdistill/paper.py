"""Published numbers the report prints beside ours, cell by cell.

Each table maps (teacher, student) columns to {run: value}; a run is the
name of the grid's ``methods`` entry that reproduces the paper's row (not its
display label, which a grid may reword), with the teacher as ``teacher``.
Values are copied from the papers in ``shared/papers``; the grid named in
each table's comment holds the runs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperTable:
    title: str
    dataset: str
    metric: str  # "accuracy" (fraction) or "error" (percent)
    cells: dict[tuple[str, str], dict[str, float]]


def _columns(columns: list[tuple[str, str]], rows: dict[str, list[float]]) -> dict[tuple[str, str], dict[str, float]]:
    return {column: {row: values[i] for row, values in rows.items()} for i, column in enumerate(columns)}


PAPER_TABLES: dict[str, PaperTable] = {
    # Ji, Heo & Park, AAAI 2021, Table 1 (CIFAR-100 top-1, mean of 5 runs). The paper's "Ours" row is AFD.
    "afd_table1": PaperTable(
        title="AFD paper, Table 1 (CIFAR-100)",
        dataset="cifar100",
        metric="accuracy",
        cells=_columns(
            [("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet56"),
             ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_2"), ("wrn_40_2", "resnet56"), ("resnet34", "wrn_28_2")],
            {
                "teacher": [0.7254, 0.7409, 0.7409, 0.7620, 0.7620, 0.7620, 0.7860],
                "vanilla": [0.6940, 0.6940, 0.7254, 0.7289, 0.7620, 0.7254, 0.7532],
                "kd": [0.7098, 0.7081, 0.7483, 0.7499, 0.7763, 0.7497, 0.7648],
                "fitnet": [0.7005, 0.7002, 0.7411, 0.7522, 0.7766, 0.7506, 0.7644],
                "at": [0.7054, 0.7081, 0.7488, 0.7520, 0.7778, 0.7516, 0.7720],
                "rkd": [0.7043, 0.7076, 0.7477, 0.7459, 0.7762, 0.7439, 0.7632],
                "crd": [0.7095, 0.7091, 0.7512, 0.7515, 0.7780, 0.7525, 0.7697],
                "l2t": [0.7037, 0.7001, 0.7457, 0.7486, 0.7678, 0.7463, 0.7640],
                "afd": [0.7153, 0.7138, 0.7539, 0.7547, 0.7813, 0.7540, 0.7747],
            },
        ),
    ),
    # Zagoruyko & Komodakis, ICLR 2017, CIFAR-10 top-1 error (%) of WRN students; the mapping
    # ablation (WRN-16-2 -> WRN-16-1) gives F_sum^2 = the AT row, F_sum, F_sum^4 and F_max^1.
    "at_cifar10": PaperTable(
        title="AT paper, CIFAR-10 (error %)",
        dataset="cifar10",
        metric="error",
        cells={
            ("wrn_16_2", "wrn_16_1"): {"vanilla": 8.77, "at": 7.93, "kd": 7.41, "at_kd": 7.51, "teacher": 6.31,
                                       "at_sum1": 7.99, "at_sum4": 8.09, "at_max1": 8.08},
            ("wrn_40_1", "wrn_16_1"): {"vanilla": 8.77, "at": 8.25, "kd": 8.39, "at_kd": 8.01, "teacher": 6.58},
            ("wrn_40_2", "wrn_16_2"): {"vanilla": 6.31, "at": 5.85, "kd": 6.08, "at_kd": 5.71, "teacher": 5.23},
        },
    ),
    # Lee & Song, BMVC 2019 poster, CIFAR-100 top-1 (%), WRResNet row (WRN-22-4 -> WRN-10-4).
    "mhgd_cifar100": PaperTable(
        title="MHGD poster, CIFAR-100",
        dataset="cifar100",
        metric="accuracy",
        cells={("wrn_22_4", "wrn_10_4"): {"teacher": 0.7722, "vanilla": 0.7162, "kd": 0.7188, "mhgd": 0.7279}},
    ),
}
