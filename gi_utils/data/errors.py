"""Errors of the data layer; each message names the offending file, id, row or column."""

from __future__ import annotations

__all__ = ["DataError", "ImageReadError"]


class DataError(ValueError):
    """The data on disk or in train.csv do not follow the competition layout."""


class ImageReadError(DataError):
    """An image file is missing, does not decode, or is not what its name says."""
