"""LightningModules of the training stages; thin wrappers over models and the math."""
