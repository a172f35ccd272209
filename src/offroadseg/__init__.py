"""offroadseg: semantic segmentation of off-road scenes on frozen DINOv2 backbones."""

__version__ = "0.1.0"
