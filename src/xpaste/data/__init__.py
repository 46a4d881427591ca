"""Reading and writing COCO / LVIS datasets, and dataset statistics."""
