"""The guard: health checks of the hosting, hysteresis, and the pauses and alerts they cause."""
