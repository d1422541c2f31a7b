"""The SDK's version: the distribution's (pyproject.toml reads it from here) and the one sent in
every event's ``context.library``."""

__version__ = "0.1.0"
LIBRARY_NAME = "cartlytics-python"
