"""icuwatch package."""
