"""The version of torchtally (read by the build backend; ``torchtally.__version__``)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
