"""Training: data sets (``shapes``: synthetic moving-shape clips) and, later, the fine-tuning loop."""
