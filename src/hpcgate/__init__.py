"""hpcgate: a NEWT-style HPC web gateway that runs everything as the logged-in user."""

__version__ = "0.1.0"
