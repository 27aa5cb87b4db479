"""The agent on Windows: service, ConPTY terminals, PowerShell and cmd scripts, run-as with
passwords from the local store.

``common`` is plain Python and imports anywhere (its logic is tested on Linux); every other
module here needs pywin32 (and ``terminal`` pywinpty) and is imported only on Windows.
"""
