"""Earshot: batch audio understanding on Audio Flamingo 3."""

__version__ = "0.1.0"
