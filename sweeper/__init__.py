"""sweeper: hyperparameter sweeps for LoRA fine-tuning.

Only `sweeper.controller` imports Ray; every other module (and `trainers/`) runs without it.
"""

__version__ = "0.1.0"
