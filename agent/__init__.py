"""Porthole agent: dials out to the server and serves shells, ports, files and commands."""

__version__ = "0.1.0"
