"""testing for the Vonage AI Studio provider."""
