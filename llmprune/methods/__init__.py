"""Pruning methods: magnitude (data-free), Wanda and SparseGPT (calibrated). Masks live in masks.py."""
