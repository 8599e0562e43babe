"""Training encoders: ``config`` (what a run is asked to do), ``train`` (from a folder to an ``Encoder``, decoder
included), ``loop`` (the generic loop), ``objectives`` (what each family optimises, one module per kind; the
family registry in ``simsearch.models.registry`` names each family's objective), ``losses``, ``sampling`` (labels,
splits, batches, pairs), ``augment``, ``ema``, ``calibrate`` (the verification threshold) and ``checkpoint``
(interrupted training resumes)."""

from simsearch.training.calibrate import calibrate_threshold
from simsearch.training.checkpoint import TrainingCheckpoint
from simsearch.training.config import NEURAL, TRAINABLE, TrainConfig, choose_size, parse_size
from simsearch.training.ema import WeightAverage
from simsearch.training.loop import fit
from simsearch.training.train import (
    fit_pca,
    load_training_images,
    pixels_encoder,
    provenance,
    sample_entries,
    train_encoder,
    train_neural,
    train_on_folder,
)

__all__ = [
    "NEURAL",
    "TRAINABLE",
    "TrainConfig",
    "TrainingCheckpoint",
    "WeightAverage",
    "calibrate_threshold",
    "choose_size",
    "fit",
    "fit_pca",
    "load_training_images",
    "parse_size",
    "pixels_encoder",
    "provenance",
    "sample_entries",
    "train_encoder",
    "train_neural",
    "train_on_folder",
]
