//! The daemon: startup order, tasks, signals, systemd notification and shutdown.
