"""Distillation losses: the KD objective and a registry of student/teacher distances."""

from kdjax.losses.distances import DISTANCES, get_distance, masked_log_softmax, register
from kdjax.losses.kd import kd_loss, label_loss

__all__ = ["DISTANCES", "get_distance", "kd_loss", "label_loss", "masked_log_softmax", "register"]
