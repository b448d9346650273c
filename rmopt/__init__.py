"""rmopt: reward-model overoptimization and ensembles, on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
