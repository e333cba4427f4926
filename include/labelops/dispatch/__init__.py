"""The dispatch stage: pre-annotation, active-learning selection, routing, and idempotent task creation."""
