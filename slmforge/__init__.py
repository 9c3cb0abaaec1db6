"""slmforge: domain data in, a right-sized small language model out."""

__version__ = "0.1.0"
