"""Native kernels behind the pure functions, built on first use and used only where they were measured faster."""
