"""Porthole server: agent gateway, operator API, policy engine and storage."""

__version__ = "0.1.0"
