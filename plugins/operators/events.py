"""What the Asset events that scheduled a run carry: one reader for the DAG factory and the operators."""

from __future__ import annotations


def event_extras(context, key: str) -> list:
    """The `key` of every triggering Asset event's extra that has one, in the order Airflow gives the events
    (none for a manual run)."""
    values = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            value = (getattr(event, "extra", None) or {}).get(key)
            if value:
                values.append(value)
    return values
