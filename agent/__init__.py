"""smsagent: verify a migrated server against its source and report the counts to SMS."""

__version__ = "0.1.0"
