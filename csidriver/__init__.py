"""Device-LocalPV: node-local persistent volumes carved as GPT partitions from raw disks."""

__version__ = "0.1.0"
