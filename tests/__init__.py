"""Tests of airflow-provider-vonage-studio (a package so shared fixture modules import as ``tests.*``)."""
