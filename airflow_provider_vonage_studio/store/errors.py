"""The store's own errors: a schema too new to use, a refused state change, a raced status batch."""

from __future__ import annotations

from airflow_provider_vonage_studio.exceptions import VonageStudioError


class StoreSchemaTooNew(VonageStudioError):
    """The store was written by a newer provider release than the one running here.

    Not retryable: upgrade the provider on this machine (or point ``[vonage_studio] store_url``
    at another database).
    """


class _StatusBatchRaced(VonageStudioError):
    """A batch of status callbacks met a writer that bypassed the call's row lock; rolled back."""


class CallStateConflict(VonageStudioError):
    """A state change was asked of a call in a state that does not allow it
    (for example restarting a call that was already placed)."""
