"""cityseg: the image-segmentation block between image processing and the decision system."""
__version__ = "0.1.0"
