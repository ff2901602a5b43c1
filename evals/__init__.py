"""Evaluations beyond the validation loss: HellaSwag (evals/hellaswag.py) and bits per byte (evals/bpb.py)."""
