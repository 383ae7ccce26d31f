"""The OpenAI-compatible HTTP server: an app that routes, a service that answers, one worker thread that generates."""
