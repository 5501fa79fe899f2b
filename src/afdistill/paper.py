"""Published numbers the report prints beside ours, cell by cell.

Each table maps (teacher, student) columns to {row label: value}; row labels
are the labels our runs carry (``Run.label``), with the teacher as
``Teacher``. Values are copied from the papers in ``shared/papers``.
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
                "Teacher": [0.7254, 0.7409, 0.7409, 0.7620, 0.7620, 0.7620, 0.7860],
                "Student": [0.6940, 0.6940, 0.7254, 0.7289, 0.7620, 0.7254, 0.7532],
                "KD": [0.7098, 0.7081, 0.7483, 0.7499, 0.7763, 0.7497, 0.7648],
                "FitNet": [0.7005, 0.7002, 0.7411, 0.7522, 0.7766, 0.7506, 0.7644],
                "ATT": [0.7054, 0.7081, 0.7488, 0.7520, 0.7778, 0.7516, 0.7720],
                "RKD": [0.7043, 0.7076, 0.7477, 0.7459, 0.7762, 0.7439, 0.7632],
                "CRD": [0.7095, 0.7091, 0.7512, 0.7515, 0.7780, 0.7525, 0.7697],
                "L2T": [0.7037, 0.7001, 0.7457, 0.7486, 0.7678, 0.7463, 0.7640],
                "AFD": [0.7153, 0.7138, 0.7539, 0.7547, 0.7813, 0.7540, 0.7747],
            },
        ),
    ),
}
