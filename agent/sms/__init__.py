"""The SMS side: the HTTP client and its authentication, the outbox, delivery and an emulator."""
