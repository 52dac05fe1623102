"""callbacks for the Vonage AI Studio provider."""
