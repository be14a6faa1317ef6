"""The station server: configuration, auth, policies, jobs and audit (FastAPI)."""

from importlib import metadata

try:
    __version__ = metadata.version("better-genomics")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
