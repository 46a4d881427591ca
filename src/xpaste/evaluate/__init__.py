"""Evaluation: COCO / LVIS mask and box AP of a predictions file, through the official libraries."""
