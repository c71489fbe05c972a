"""Data files shipped with mechbench (built-in texts, toy-model weights)."""
