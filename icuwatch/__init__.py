"""icuwatch: streaming ICU monitoring (command line and settings live here)."""

__version__ = "0.1.0"
