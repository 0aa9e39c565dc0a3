"""icuwatch: streaming ICU monitoring. The package root only: each top-level folder of the repository
is a subpackage (``pyproject.toml``, ``package-dir``); README "Where things are" maps them."""

__version__ = "0.1.0"
