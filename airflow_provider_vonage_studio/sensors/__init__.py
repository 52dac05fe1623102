"""sensors for the Vonage AI Studio provider."""
