"""Training cells: the job spec, the plain training loop, and (in `engine.py` only) DeepSpeed."""
