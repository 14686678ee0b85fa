"""The verifier: helpers list and hash each side, the engine schedules them, compare counts."""
