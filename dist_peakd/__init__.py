"""dist-peakd: distributed Pea-KD."""
__version__ = "0.1.0"
