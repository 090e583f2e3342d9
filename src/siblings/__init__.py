"""digital-siblings: make and measure anatomic variants of cardiac digital twins."""

__version__ = "0.1.0"
