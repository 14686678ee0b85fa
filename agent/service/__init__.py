"""The long-running service: the daemon, its scheduler, the watcher, sd_notify and logging."""
