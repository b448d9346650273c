"""Data: sources (toy world, hub and local files), tokenization, and the stages' data modules."""
