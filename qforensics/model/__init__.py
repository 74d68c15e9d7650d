"""The read-only image model: header, extensions, tables and small structures."""

from .image import Image, Unreadable

__all__ = ["Image", "Unreadable"]
