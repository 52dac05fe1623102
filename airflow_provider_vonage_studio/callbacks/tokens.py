"""Former home of token signing; kept importable for one release (until 0.3.0).

Signing moved to :mod:`airflow_provider_vonage_studio.signing` and :func:`make_call_ref` to
:mod:`airflow_provider_vonage_studio.calls`. Import from there.
"""

from __future__ import annotations

from airflow_provider_vonage_studio.calls import CALL_REF_PREFIX, make_call_ref
from airflow_provider_vonage_studio.signing import (
    LEGACY_TOKENS_UNTIL,
    InvalidToken,
    VerifiedToken,
    build_status_url,
    elide_token,
    sign_token,
    verify_token,
    verify_token_details,
)

__all__ = [
    "CALL_REF_PREFIX",
    "LEGACY_TOKENS_UNTIL",
    "InvalidToken",
    "VerifiedToken",
    "build_status_url",
    "elide_token",
    "make_call_ref",
    "sign_token",
    "verify_token",
    "verify_token_details",
]
