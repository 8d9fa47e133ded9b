"""Descriptive analyses of a checkpoint's weights (Jaiswal et al. 2023, Figs. 1, 7 and 8).

`stats` holds the pure statistics (histograms of |w| on log-spaced bins, near-zero counts, tallies rolled
up per layer and module type), `run` streams checkpoints through them one tensor at a time and writes
JSON/CSV, and `plots` draws the PNGs. Nothing here is imported by the pruning path.
"""
from .run import analyze_checkpoints, analyze_weights, find_checkpoints, write_checkpoint_outputs, write_weight_outputs
from .stats import Tally, log_edges, magnitude_histogram, roll_up, step_of, tally

__all__ = ["Tally", "analyze_checkpoints", "analyze_weights", "find_checkpoints", "log_edges", "magnitude_histogram",
           "roll_up", "step_of", "tally", "write_checkpoint_outputs", "write_weight_outputs"]
