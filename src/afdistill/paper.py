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
    # Which test accuracy the paper's numbers are: "best" (the best epoch's) or "last" (the final epoch's);
    # None where neither the paper nor its code says (the report then compares the last epoch's).
    epoch: str | None = None
    note: str = ""  # where the numbers come from and how the epoch was decided, printed under the table


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
        epoch="last",
        note="Ji, Heo & Park, AAAI 2021, Table 1, mean of 5 runs. The paper does not say which epoch; its code "
             "(clovaai/attention-feature-distillation, main.py) prints each epoch's test accuracy and keeps no "
             "best, so the last epoch is compared.",
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
        note="Zagoruyko & Komodakis, ICLR 2017 (the slides in shared/papers), CIFAR-10 error; which epoch is "
             "not stated.",
    ),
    # Lee & Song, BMVC 2019 poster, CIFAR-100 top-1 (%), WRResNet row (WRN-22-4 -> WRN-10-4).
    "mhgd_cifar100": PaperTable(
        title="MHGD poster, CIFAR-100",
        dataset="cifar100",
        metric="accuracy",
        cells={("wrn_22_4", "wrn_10_4"): {"teacher": 0.7722, "vanilla": 0.7162, "kd": 0.7188, "mhgd": 0.7279}},
        note="Lee & Song, BMVC 2019 poster, CIFAR-100; which epoch is not stated.",
    ),
    # Issue 16's methods on CIFAR-100 (top-1, fraction), from the tables of sunshangquan/logit-standardization-KD's
    # README (Sun et al., CVPR 2024, Tables 1-2), which gathers KD, CTKD, DKD and MLKD with and without logit
    # standardisation ("+LS", the paper's "+Ours") on the mdistiller recipe; its KD and DKD cells equal
    # mdistiller's README (DKD paper, Tables 1-2) up to 0.01. Which epoch they report (best or last) is not
    # stated there; mdistiller's logs and tools report the best test accuracy. ReviewKD and DIST cells are not
    # filled in: we could not check them against a source here.
    "modern_cifar100": PaperTable(
        title="Logit-standardisation paper, Tables 1-2 (CIFAR-100)",
        dataset="cifar100",
        metric="accuracy",
        cells=_columns(
            [("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("wrn_40_2", "wrn_40_1"), ("wrn_40_2", "wrn_16_2"),
             ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet110", "resnet20"),
             ("resnet32x4", "wrn_16_2"), ("resnet32x4", "wrn_40_2"), ("wrn_40_2", "resnet8x4"),
             ("wrn_40_2", "mobilenetv2"), ("vgg13", "mobilenetv2"),
             ("resnet32x4", "shufflev2"), ("resnet50", "mobilenetv2")],
            {
                "kd": [0.7333, 0.7298, 0.7354, 0.7492, 0.7066, 0.7308, 0.7067, 0.7490, 0.7770, 0.7397, 0.6836, 0.6737, 0.7445, 0.6735],
                "kd_ls": [0.7662, 0.7436, 0.7437, 0.7611, 0.7143, 0.7417, 0.7148, 0.7526, 0.7792, 0.7711, 0.6923,
                          0.6861, 0.7556, 0.6902],
                "kd_ctkd": [0.7339, 0.7352, 0.7393, 0.7545, 0.7119, 0.7352, 0.7099, 0.7457, 0.7766, 0.7461, 0.6834,
                         0.6850, 0.7537, 0.6867],
                "kd_ctkd_ls": [0.7667, 0.7447, 0.7458, 0.7608, 0.7134, 0.7401, 0.7139, 0.7516, 0.7799, 0.7703, 0.6953,
                            0.6898, 0.7618, 0.6936],
                "dkd": [0.7632, 0.7468, 0.7481, 0.7624, 0.7197, 0.7411, 0.7106, 0.7570, 0.7846, 0.7556, 0.6928,
                        0.6971, 0.7707, 0.7035],
                "dkd_ls": [0.7701, 0.7481, 0.7489, 0.7639, 0.7232, 0.7429, 0.7185, 0.7619, 0.7895, 0.7675, 0.7001,
                           0.6998, 0.7737, 0.7045],
                "mlkd": [0.7708, 0.7518, 0.7535, 0.7663, 0.7219, 0.7411, 0.7189, 0.7652, 0.7926, 0.7733, 0.7078,
                         0.7057, 0.7844, 0.7104],
                "mlkd_ls": [0.7828, 0.7522, 0.7556, 0.7695, 0.7233, 0.7432, 0.7227, 0.7753, 0.7966, 0.7768, 0.7161,
                            0.7094, 0.7876, 0.7119],
            },
        ),
        epoch="best",
        note="sunshangquan/logit-standardization-KD README (Sun et al., CVPR 2024, Tables 1-2), which gathers "
             "KD, CTKD, DKD and MLKD with and without standardisation; they train with mdistiller, whose trainer "
             "logs and reports the best test accuracy over the epochs, so the best epoch is compared.",
    ),
    # Ji, Heo & Park, AAAI 2021, Table 2 (top-1, fraction): Tiny ImageNet columns (ResNet34 teacher; ResNet18
    # and ResNet34 students with a 3x3 first convolution), params/tinyimagenet.yaml. The paper prints no
    # number of runs for this table.
    "afd_table2_tinyimagenet": PaperTable(
        title="AFD paper, Table 2 (Tiny ImageNet)",
        dataset="tinyimagenet",
        metric="accuracy",
        cells=_columns(
            [("resnet34_tiny", "resnet18_tiny"), ("resnet34_tiny", "resnet34_tiny")],
            {
                "teacher": [0.6750, 0.6750],
                "vanilla": [0.6530, 0.6750],
                "kd": [0.6818, 0.6971],
                "fitnet": [0.6779, 0.6892],
                "at": [0.6782, 0.6961],
                "rkd": [0.6772, 0.6846],
                "crd": [0.6819, 0.6968],
                "afd": [0.6880, 0.6981],
            },
        ),
        note="Ji, Heo & Park, AAAI 2021, Table 2 (Tiny ImageNet); which epoch and how many runs are not stated.",
    ),
    # The same table's ImageNet column (ResNet34 -> ResNet18), params/imagenet.yaml.
    "afd_table2_imagenet": PaperTable(
        title="AFD paper, Table 2 (ImageNet)",
        dataset="imagenet",
        metric="accuracy",
        cells={("resnet34_imagenet", "resnet18_imagenet"): {
            "teacher": 0.7355, "vanilla": 0.7028, "kd": 0.7066, "fitnet": 0.7085, "at": 0.7093, "rkd": 0.7137,
            "crd": 0.7135, "afd": 0.7138}},
        note="Ji, Heo & Park, AAAI 2021, Table 2 (ImageNet); which epoch is not stated.",
    ),
}
