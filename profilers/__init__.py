"""GPU, host and NUMA telemetry; imports nothing from Textual or torch."""
