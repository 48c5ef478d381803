"""Measuring on the device: devices and telemetry, the profiler, the gradient noise scale, the
learning-rate stability check, the training loop, and the collectives a data-parallel rank needs.
Everything here runs inside a job process; nothing here opens the database."""
