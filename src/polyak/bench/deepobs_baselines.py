"""DeepOBS's own baseline results, shipped as data so every report can draw them.

Source: the DeepOBS repository (github.com/fsschneider/DeepOBS, commit 873bbc2, folder
``baselines/``), the TensorFlow runs behind the DeepOBS paper (Schneider, Balles & Hennig,
ICLR 2019): 100 epochs, batch 128, the learning rate DeepOBS's tuning selected, seeds 42-51.
Each curve below is ONE seed's per-epoch test metric (epoch 0 = before training), copied
from the JSON file named in ``path`` (rounded to 5 decimals); the other seeds' files exist
there too but are not copied. ``PUBLISHED`` holds the final numbers over all ten seeds as
the DeepOBS paper reports them (mean and std), as quoted in this project's issue 9.

Momentum on fmnist_2c2d and the three MLP/logreg problems have no curve here (DeepOBS's
baseline folder covers its small and large benchmark sets; the 2c2d Momentum files were
not copied for time).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["Curve", "CURVES", "PUBLISHED", "SOURCE", "curves_for"]

SOURCE = "DeepOBS baselines (github.com/fsschneider/DeepOBS@873bbc2, baselines/; Schneider et al., ICLR 2019)"


@dataclass(frozen=True)
class Curve:
    """One DeepOBS baseline run: per-epoch test metric, epochs 0..100 (accuracy as a fraction)."""

    workload: str            # this project's name of the DeepOBS problem
    optimizer: str           # "sgd", "momentum" or "adam" (DeepOBS's names in deepobs_optimizer)
    deepobs_optimizer: str
    hyperparameters: str
    seed: int
    metric: str              # "test_loss" or "test_accuracy"
    path: str                # the file in DeepOBS's repository
    values: Tuple[float, ...]


CURVES: Tuple[Curve, ...] = (
    Curve(
        workload="quadratic-deep", optimizer="sgd", deepobs_optimizer="GradientDescentOptimizer", hyperparameters="lr 1.5848931925e-02", seed=46,
        metric="test_loss", path="baselines/quadratic_deep/GradientDescentOptimizer/num_epochs__100__batch_size__128__lr__1.5848931925e-02/random_seed__46__2019-02-15-16-57-33.json",
        values=(
            353.44676, 105.44536, 103.04179, 101.00827, 99.28316, 97.81567, 96.56379, 95.49267, 94.5734, 93.78199,
            93.09847, 92.50619, 91.99128, 91.54213, 91.14902, 90.80381, 90.49965, 90.23079, 89.99234, 89.7802,
            89.59089, 89.42142, 89.26928, 89.13232, 89.00868, 88.89677, 88.79525, 88.70291, 88.61874, 88.54186,
            88.47149, 88.40696, 88.34766, 88.2931, 88.2428, 88.19636, 88.15341, 88.11365, 88.07679, 88.04257,
            88.01076, 87.98117, 87.95361, 87.9279, 87.90391, 87.8815, 87.86053, 87.84091, 87.82253, 87.8053,
            87.78912, 87.77393, 87.75966, 87.74623, 87.73359, 87.72168, 87.71045, 87.69986, 87.68987, 87.68043,
            87.6715, 87.66305, 87.65506, 87.64748, 87.64031, 87.6335, 87.62703, 87.6209, 87.61507, 87.60952,
            87.60424, 87.59921, 87.59442, 87.58985, 87.5855, 87.58134, 87.57737, 87.57358, 87.56995, 87.56648,
            87.56315, 87.55997, 87.55691, 87.55398, 87.55118, 87.54848, 87.54589, 87.5434, 87.541, 87.53869,
            87.53647, 87.53434, 87.53228, 87.53029, 87.52837, 87.52652, 87.52474, 87.52301, 87.52134, 87.51973,
            87.51817,
        ),
    ),
    Curve(
        workload="quadratic-deep", optimizer="momentum", deepobs_optimizer="MomentumOptimizer", hyperparameters="lr 2.5118864315e-03, momentum 0.99", seed=44,
        metric="test_loss", path="baselines/quadratic_deep/MomentumOptimizer/num_epochs__100__batch_size__128__momentum__9.9e-01__use_nesterov__False__lr__2.5118864315e-03/random_seed__44__2019-02-15-16-57-33.json",
        values=(
            353.44676, 270.90601, 138.89265, 154.91703, 201.09957, 217.61776, 185.69697, 138.07312, 167.5457, 169.11139,
            134.14201, 157.65485, 170.77308, 147.20752, 120.23173, 112.5347, 137.58438, 155.55538, 132.64544, 102.13028,
            111.03344, 126.6215, 126.06321, 118.65791, 101.59342, 104.83194, 112.83088, 106.80701, 109.26484, 108.58581,
            102.63744, 98.40439, 98.3229, 104.23691, 105.56369, 98.34019, 90.41289, 96.25584, 101.42815, 96.87176,
            95.82339, 91.95672, 92.17165, 95.45336, 92.87832, 94.23999, 93.47475, 89.87986, 90.62439, 92.62403,
            92.76883, 90.76861, 89.62123, 89.00852, 90.45603, 91.07874, 89.42157, 89.78417, 88.6291, 88.62996,
            89.6197, 88.9751, 89.43657, 88.14331, 87.90034, 88.68636, 88.53869, 89.00886, 87.78405, 87.6497,
            88.02535, 87.98626, 88.5077, 87.43068, 87.62689, 87.83427, 87.39732, 87.96257, 87.48277, 87.59854,
            87.58048, 87.08508, 87.57192, 87.63657, 87.49281, 87.2033, 87.1665, 87.41646, 87.42139, 87.36238,
            87.09418, 87.23272, 87.26605, 87.21036, 87.2357, 87.12772, 87.28943, 87.02646, 87.13246, 87.26454,
            87.025,
        ),
    ),
    Curve(
        workload="quadratic-deep", optimizer="adam", deepobs_optimizer="AdamOptimizer", hyperparameters="lr 3.9810717055e-02", seed=44,
        metric="test_loss", path="baselines/quadratic_deep/AdamOptimizer/num_epochs__100__batch_size__128__beta1__9.e-01__beta2__9.99e-01__epsilon__1.e-08__lr__3.9810717055e-02/random_seed__44__2019-02-15-16-57-33.json",
        values=(
            353.44676, 141.74577, 110.61801, 119.61658, 107.48269, 101.33333, 101.27936, 98.33478, 96.81262, 95.8624,
            94.68596, 93.93817, 93.2076, 92.57944, 92.05085, 91.57246, 91.15584, 90.78374, 90.45, 90.15379,
            89.88751, 89.64674, 89.43071, 89.23495, 89.05772, 88.89709, 88.7509, 88.61795, 88.49679, 88.38616,
            88.2851, 88.19267, 88.10804, 88.03048, 87.95936, 87.89408, 87.83412, 87.77901, 87.72832, 87.68168,
            87.63871, 87.59912, 87.5626, 87.52891, 87.49778, 87.46902, 87.44241, 87.41779, 87.39497, 87.37382,
            87.35419, 87.33595, 87.319, 87.30323, 87.28854, 87.27484, 87.26207, 87.25014, 87.23898, 87.22854,
            87.21877, 87.2096, 87.201, 87.19293, 87.18534, 87.17819, 87.17147, 87.16513, 87.15915, 87.15351,
            87.14818, 87.14313, 87.13836, 87.13384, 87.12956, 87.1255, 87.12164, 87.11798, 87.1145, 87.11119,
            87.10803, 87.10503, 87.10218, 87.09945, 87.09684, 87.09436, 87.09199, 87.08972, 87.08755, 87.08547,
            87.08348, 87.08157, 87.07975, 87.078, 87.07632, 87.0747, 87.07316, 87.07167, 87.07023, 87.06886,
            87.06753,
        ),
    ),
    Curve(
        workload="fmnist-2c2d", optimizer="sgd", deepobs_optimizer="GradientDescentOptimizer", hyperparameters="lr 1.5848931925e-01", seed=43,
        metric="test_accuracy", path="baselines/fmnist_2c2d/GradientDescentOptimizer/num_epochs__100__batch_size__128__lr__1.5848931925e-01/random_seed__43__2019-02-15-16-58-23.json",
        values=(
            0.10697, 0.85827, 0.87099, 0.87821, 0.88582, 0.89153, 0.89563, 0.89744, 0.89994, 0.89794,
            0.90214, 0.89804, 0.89363, 0.89964, 0.90294, 0.90745, 0.91066, 0.90956, 0.91106, 0.90825,
            0.91166, 0.91526, 0.91166, 0.90635, 0.90925, 0.91476, 0.91567, 0.91707, 0.91516, 0.91847,
            0.92057, 0.91817, 0.91567, 0.91486, 0.91927, 0.92007, 0.92208, 0.91476, 0.91767, 0.92087,
            0.92137, 0.92328, 0.92308, 0.92328, 0.92328, 0.92318, 0.92348, 0.92338, 0.92318, 0.92358,
            0.92378, 0.92328, 0.92298, 0.92338, 0.92338, 0.92328, 0.92338, 0.92358, 0.92348, 0.92348,
            0.92348, 0.92358, 0.92368, 0.92358, 0.92358, 0.92348, 0.92378, 0.92378, 0.92368, 0.92348,
            0.92358, 0.92358, 0.92358, 0.92368, 0.92378, 0.92378, 0.92388, 0.92378, 0.92378, 0.92378,
            0.92378, 0.92388, 0.92418, 0.92408, 0.92418, 0.92408, 0.92408, 0.92408, 0.92398, 0.92388,
            0.92388, 0.92388, 0.92388, 0.92398, 0.92388, 0.92388, 0.92388, 0.92388, 0.92388, 0.92378,
            0.92378,
        ),
    ),
    Curve(
        workload="fmnist-2c2d", optimizer="adam", deepobs_optimizer="AdamOptimizer", hyperparameters="lr 2.5118864315e-04", seed=43,
        metric="test_accuracy", path="baselines/fmnist_2c2d/AdamOptimizer/num_epochs__100__batch_size__128__beta1__9.e-01__beta2__9.99e-01__epsilon__1.e-08__lr__2.5118864315e-04/random_seed__43__2019-02-15-16-58-28.json",
        values=(
            0.10697, 0.85046, 0.87099, 0.8763, 0.88231, 0.88862, 0.89383, 0.90024, 0.90174, 0.90505,
            0.90615, 0.90715, 0.90795, 0.90905, 0.91176, 0.91236, 0.91196, 0.91326, 0.90785, 0.90535,
            0.91036, 0.91246, 0.91326, 0.91486, 0.91817, 0.91717, 0.91677, 0.91406, 0.91456, 0.92037,
            0.91907, 0.92177, 0.92137, 0.92208, 0.92027, 0.92007, 0.91907, 0.91657, 0.91847, 0.91386,
            0.91657, 0.91416, 0.91466, 0.91236, 0.91927, 0.91176, 0.91567, 0.91697, 0.92258, 0.91967,
            0.92077, 0.92328, 0.92007, 0.91827, 0.91877, 0.91166, 0.91877, 0.91376, 0.91667, 0.92448,
            0.92127, 0.92208, 0.92047, 0.92137, 0.92047, 0.92177, 0.92278, 0.91777, 0.92418, 0.91727,
            0.92177, 0.92007, 0.92198, 0.92087, 0.92288, 0.92288, 0.91677, 0.92288, 0.91937, 0.92248,
            0.92448, 0.92157, 0.92308, 0.91877, 0.92378, 0.92478, 0.91927, 0.91727, 0.92578, 0.92308,
            0.92107, 0.92308, 0.92268, 0.92228, 0.92418, 0.92598, 0.92167, 0.92147, 0.92007, 0.92137,
            0.92288,
        ),
    ),
)

#: DeepOBS paper, final test metric after 100 epochs over 10 seeds: (mean, std or None).
#: fmnist_2c2d: test accuracy (fraction); quadratic_deep: test loss.
PUBLISHED: Dict[str, Dict[str, Tuple[float, Optional[float]]]] = {
    "fmnist-2c2d": {"sgd": (0.9228, 0.0019), "adam": (0.9228, 0.0022)},
    "quadratic-deep": {"momentum": (87.05, 0.03), "adam": (87.11, None), "sgd": (87.41, None)},
}


def curves_for(workload: str) -> Tuple[Curve, ...]:
    return tuple(c for c in CURVES if c.workload == workload)
