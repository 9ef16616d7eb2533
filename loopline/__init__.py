"""loopline: real-time analysis of dislocations and dislocation loops in in-situ TEM video."""

__version__ = "0.1.0"
