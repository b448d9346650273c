"""rmopt's benchmarks against its peers (TRL, plain transformers, straightforward formulations): see bench/run.py."""
