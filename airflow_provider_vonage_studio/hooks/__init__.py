"""hooks for the Vonage AI Studio provider."""
